"""Full training state on disk: one directory per step, written atomically, no pickle.

`<out>/checkpoints/step-00000100/` holds
  model.safetensors      the trained modules (current weights)
  ema.safetensors        the float32 EMA shadow
  optimizer.safetensors  every optimizer state tensor, keyed `state.<param>.<name>`
  rng.safetensors        torch's global RNG and the training generators, as uint8 tensors
  state.json             step, epoch, data position, config, model config, optimizer structure,
                         scheduler state, Python / NumPy RNG states
The directory is filled under a hidden temp name, every file and the directory are fsynced, then it
is renamed into place and `latest` (one line: the directory name) is replaced atomically. A crash or
a full disk at any moment therefore leaves either the old or the new complete checkpoint, never a
half-written one that `--resume` could pick up.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import Tensor

from ..errors import PrismAudioError
from ..io.weights import read_safetensors

LATEST = "latest"
STATE_JSON = "state.json"
FORMAT = "prismaudio-train-state"
VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d{8})$")


@dataclass
class TrainingState:
    """Everything needed to continue a run exactly where it stopped."""

    step: int
    epoch: int
    position: int  # micro-batches of `epoch` already consumed
    model: dict[str, Tensor]
    ema: dict[str, Tensor]
    optimizer: dict[str, Any]  # torch optimizer state_dict
    scheduler: dict[str, Any]
    rng: dict[str, Tensor]  # "torch" + one entry per named training generator
    python_rng: Any
    numpy_rng: Any
    config: dict[str, Any]
    model_config: dict[str, Any]
    world_size: int = 1


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


# ------------------------------------------------------------------------------ RNG helpers
def capture_host_rng() -> tuple[Any, Any, Tensor]:
    """(python, numpy, torch) global RNG states in JSON-able / tensor form."""
    v, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [v, list(internal), gauss], [name, keys.tolist(), int(pos), int(has_gauss), float(cached)], torch.get_rng_state()


def restore_host_rng(python_rng: Any, numpy_rng: Any, torch_rng: Tensor) -> None:
    v, internal, gauss = python_rng
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = numpy_rng
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch_rng)


# ------------------------------------------------------------------------------ optimizer <-> flat
def flatten_optimizer(sd: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split a torch optimizer state_dict into tensors (for safetensors) and a JSON structure."""
    tensors: dict[str, Tensor] = {}
    state_json: dict[str, dict[str, Any]] = {}
    for pid, entry in sd["state"].items():
        slots: dict[str, Any] = {}
        for name, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"state.{pid}.{name}"] = value.detach().cpu().contiguous()
                slots[name] = {"tensor": f"state.{pid}.{name}"}
            else:
                slots[name] = {"value": value}
        state_json[str(pid)] = slots
    return tensors, {"state": state_json, "param_groups": sd["param_groups"]}


def unflatten_optimizer(tensors: dict[str, Tensor], structure: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for pid, slots in structure["state"].items():
        state[int(pid)] = {n: tensors[s["tensor"]] if "tensor" in s else s["value"] for n, s in slots.items()}
    groups = []
    for g in structure["param_groups"]:
        groups.append({k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()})
    return {"state": state, "param_groups": groups}


# ------------------------------------------------------------------------------ writing
def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        _fsync_file(path)
    except OSError:  # some file systems cannot fsync a directory; the rename is still atomic
        pass


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, allow_nan=True)
        f.write("\n")


def _contiguous(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


def save_state(root: str | os.PathLike, state: TrainingState, keep_last: int) -> Path:
    """Write `state` as `root/step-XXXXXXXX` atomically, point `latest` at it, prune old ones.

    Any `OSError` (e.g. ENOSPC) removes the partial temp directory and raises one
    `PrismAudioError` naming the last complete checkpoint, which stays loadable.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(state.step)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    try:
        save_file(_contiguous(state.model), tmp / "model.safetensors")
        save_file(_contiguous(state.ema), tmp / "ema.safetensors")
        opt_tensors, opt_structure = flatten_optimizer(state.optimizer)
        save_file(opt_tensors, tmp / "optimizer.safetensors")
        save_file(_contiguous(state.rng), tmp / "rng.safetensors")
        _write_json(tmp / STATE_JSON, {
            "format": FORMAT, "version": VERSION, "step": state.step, "epoch": state.epoch,
            "position": state.position, "world_size": state.world_size, "config": state.config,
            "model_config": state.model_config, "optimizer": opt_structure, "scheduler": state.scheduler,
            "python_rng": state.python_rng, "numpy_rng": state.numpy_rng,
        })
        for f in tmp.iterdir():
            _fsync_file(f)
        _fsync_dir(tmp)
        if final.exists():  # a step re-saved after a resume: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        _write_latest(root, final.name)
    except (OSError, SafetensorError) as e:  # safetensors reports write failures as SafetensorError
        shutil.rmtree(tmp, ignore_errors=True)
        last = find_latest(root)
        full = getattr(e, "errno", None) == errno.ENOSPC or "No space left" in str(e)
        why = "no space left on device" if full else (getattr(e, "strerror", None) or str(e))
        kept = f"the last complete checkpoint is {last}" if last else "no complete checkpoint exists yet"
        raise PrismAudioError(f"cannot write checkpoint step {state.step} to {root}: {why}; {kept}") from None
    prune(root, keep_last)
    return final


def _write_latest(root: Path, name: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".latest.", dir=root)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, root / LATEST)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(root)


def complete_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Step directories (renamed into place, so complete), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / STATE_JSON).is_file()]
    return sorted(found, key=lambda p: p.name)


def find_latest(root: str | os.PathLike) -> Path | None:
    """The checkpoint `latest` names, else the newest complete step directory, else None."""
    root = Path(root)
    pointer = root / LATEST
    if pointer.is_file():
        name = pointer.read_text(encoding="utf-8").strip()
        if _STEP_DIR.match(name) and (root / name / STATE_JSON).is_file():
            return root / name
    done = complete_checkpoints(root)
    return done[-1] if done else None


def prune(root: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` checkpoints; drop leftovers of interrupted writes."""
    for p in complete_checkpoints(root)[:-keep_last]:
        shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(".tmp-step-*"):
        shutil.rmtree(p, ignore_errors=True)


# ------------------------------------------------------------------------------ reading
def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON half of a checkpoint (cheap: lets a run refuse a foreign checkpoint before any work)."""
    d = Path(path)
    try:
        meta = json.loads((d / STATE_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PrismAudioError(f"cannot read {d / STATE_JSON}: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise PrismAudioError(f"{d} is not a PrismAudio training checkpoint (format version {VERSION})")
    return meta


def load_state(path: str | os.PathLike) -> TrainingState:
    """Read one checkpoint directory written by `save_state`."""
    d = Path(path)
    meta = read_meta(d)
    optimizer = unflatten_optimizer(read_safetensors(d / "optimizer.safetensors"), meta["optimizer"])
    return TrainingState(
        step=int(meta["step"]), epoch=int(meta["epoch"]), position=int(meta["position"]),
        model=read_safetensors(d / "model.safetensors"), ema=read_safetensors(d / "ema.safetensors"),
        optimizer=optimizer, scheduler=meta["scheduler"], rng=read_safetensors(d / "rng.safetensors"),
        python_rng=meta["python_rng"], numpy_rng=meta["numpy_rng"], config=meta["config"],
        model_config=meta["model_config"], world_size=int(meta.get("world_size", 1)),
    )


def check_compatible(meta: dict[str, Any], model_config: dict[str, Any], stage: str, where: Path) -> None:
    """Refuse a checkpoint (its `read_meta`) made for another stage or model architecture."""
    old_stage = meta["config"].get("stage")
    if old_stage != stage:
        raise PrismAudioError(f"checkpoint {where} is from stage {old_stage!r}, this run is stage {stage!r}")
    stored = _with_defaults(meta["model_config"])
    if stored != model_config:
        old, new = stored.get("preset"), model_config.get("preset")
        diff = _first_difference(stored, model_config)
        raise PrismAudioError(
            f"checkpoint {where} was written for model preset {old!r} but this run builds {new!r} "
            f"({diff}); use another --out or the matching model"
        )


def _with_defaults(model_config: dict[str, Any]) -> dict[str, Any]:
    """The stored model config with every field it predates at its default, so a checkpoint written
    before a config field existed still resumes (the field's default is what that run built)."""
    from ..config import model_config_from_dict

    try:
        return model_config_from_dict(model_config).to_dict()
    except PrismAudioError:
        return model_config  # a removed or invalid key: compared as stored (and reported)


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else k)
    return f"{path or 'config'}: {a!r} vs {b!r}"
