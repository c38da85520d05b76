"""Weights on disk and their identity: the one way to load, save and fingerprint a state dict.

Every model directory in the project (a pipeline, a judge, the visual classifier) is `config.json`
+ safetensors files; these helpers give all of them the same strict loading (a missing,
unexpected or mis-shaped tensor is one clear error naming the file, never a silent partial load),
the same atomic saving, and one fingerprint for "are these the same weights" (data caches, feature
files, rank-sync checks).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..errors import PrismAudioError
from .files import atomic_path

PathLike = str | os.PathLike


def fingerprint(*modules: nn.Module, extra: Any = None, length: int = 16) -> str:
    """Hex SHA-1 of the modules' state dicts (names and raw bytes, in state-dict order).

    `extra` (any JSON-able value) is hashed first, so one call can also cover the settings that
    shape an artefact, e.g. the encoder names of a feature file.
    """
    h = hashlib.sha1()
    if extra is not None:
        h.update(json.dumps(extra).encode())
    for m in modules:
        for k, v in m.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:length]


def read_safetensors(file: PathLike) -> dict[str, Tensor]:
    """All tensors of one file, or one `PrismAudioError` (missing, truncated, not safetensors)."""
    p = Path(file)
    try:
        return load_file(p)
    except FileNotFoundError:
        raise PrismAudioError(f"checkpoint file {p} is missing") from None
    except (SafetensorError, OSError) as e:
        raise PrismAudioError(f"cannot read checkpoint file {p}: {e}") from None


def load_error_reason(e: BaseException) -> str:
    """Why a weights file did not load, in one short line (torch's weights_only refusal is a
    paragraph of advice to unpickle untrusted files, which we never do)."""
    msg = " ".join(str(e).split())
    if "Weights only load failed" in msg:
        detail = msg.split("WeightsUnpickler error:", 1)[1].split(" Check the documentation")[0].strip() \
            if "WeightsUnpickler error:" in msg else ""
        return "not a pickle-free torch checkpoint (torch.load weights_only refused it" + \
            (f": {detail})" if detail else ")")
    return msg or type(e).__name__


def read_state_dict(file: PathLike, what: str = "weights") -> dict[str, Tensor]:
    """A flat state dict from a foreign checkpoint file: safetensors, or a torch file read with
    `torch.load(weights_only=True)` (never a full unpickle), unwrapped from a `{"state_dict": ...}` /
    `{"model": ...}` container. One `PrismAudioError` for an unreadable or non-state-dict file."""
    import pickle

    p = Path(file)
    try:
        sd: Any = load_file(p) if p.suffix == ".safetensors" else torch.load(str(p), map_location="cpu",
                                                                           weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, SafetensorError) as e:
        raise PrismAudioError(f"cannot read {what} {p}: {load_error_reason(e)}") from None
    for wrap in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(wrap), dict):
            sd = sd[wrap]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise PrismAudioError(f"{what} {p} is not a state dict of tensors")
    return sd


def state_mismatch(own: dict[str, Tensor], state: dict[str, Tensor]) -> str:
    """'' when `state` fits `own` exactly (same keys and shapes), else what differs, briefly."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = [k for k in own if k in state and state[k].shape != own[k].shape]
    what = []
    if missing:
        what.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        what.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if bad:
        k = bad[0]
        what.append(f"{len(bad)} with wrong shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
    return "; ".join(what)


def load_strict(module: nn.Module, file: PathLike, what: str = "") -> nn.Module:
    """Load `file` into `module`, refusing any key or shape mismatch (dtypes are cast)."""
    p = Path(file)
    state = read_safetensors(p)
    problem = state_mismatch(module.state_dict(), state)
    if problem:
        raise PrismAudioError(f"{p.name} does not match {what or 'the model'} in {p.parent}: {problem}")
    module.load_state_dict(state, strict=True)
    return module


def contiguous_state(sd: dict[str, Tensor], dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """CPU, contiguous copies for safetensors; floating tensors cast to `dtype` when given."""

    def cast(v: Tensor) -> Tensor:
        return v.to(dtype) if dtype is not None and v.is_floating_point() else v

    return {k: cast(v.detach()).contiguous().cpu() for k, v in sd.items()}


def save_model_dir(out_dir: PathLike, module: nn.Module, meta: dict[str, Any]) -> Path:
    """`out_dir/config.json` (`meta`) + `out_dir/model.safetensors`, each written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(contiguous_state(module.state_dict()), tmp)
    with atomic_path(out / "config.json") as tmp:
        Path(tmp).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def read_model_dir(path: PathLike, what: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(`config.json` as a dict, `model.safetensors` tensors) of a small model directory."""
    p = Path(path)
    try:
        meta = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PrismAudioError(f"cannot read {what} checkpoint {p}: {e}") from None
    if not isinstance(meta, dict):
        raise PrismAudioError(f"cannot read {what} checkpoint {p}: config.json is not an object")
    return meta, read_safetensors(p / "model.safetensors")


def load_state_into(module: nn.Module, state: dict[str, Tensor], where: PathLike, what: str) -> nn.Module:
    """Strictly load an already-read `state` (see `read_model_dir`) into `module`."""
    problem = state_mismatch(module.state_dict(), state)
    if problem:
        raise PrismAudioError(f"{what} checkpoint {where} does not match its config: {problem}")
    module.load_state_dict(state, strict=True)
    return module
