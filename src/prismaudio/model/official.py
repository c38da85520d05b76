"""Convert between the official PrismAudio checkpoint layout and ours (both directions).

The official `prismaudio.ckpt` is one flat state dict of the whole wrapper: `model.model.*` (the DiT),
`conditioner.conditioners.*` (condition MLPs) and `pretransform.model.*` (the Oobleck VAE); the
official `vae.ckpt` is a Lightning checkpoint whose VAE keys start with `autoencoder.`. Our layout
is `dit.*`, `conditioner.*` and `vae.*` (the VAE keeps the official names, prefix stripped).
`RENAMES` below is the complete table; values are copied unchanged (same shapes). Two kinds of
official entries carry no information and are dropped after a check: the all-zero LayerNorm `beta`
buffers and the RoPE `inv_freq` buffer (a function of the head size). A third kind is dropped because
the network never calls it: the stable-audio-tools base `Conditioner` creates
`proj_out = Linear(dim, output_dim)` whenever a condition's input width differs from its output width
(official_network.md §4), and neither `Cond_MLP` (video, text) nor `Sync_MLP` uses it. The sync one is
kept (`sync_proj_out`, parameter-count parity with the released model); the video / text ones, which
exist only in configs whose encoder width differs from the conditioner width, are shape-checked and
dropped (`UNUSED_PROJ_OUT`).

`convert_official_checkpoint` writes a complete model directory: the network, the VAE and (when
given) the three pretrained encoders, copied into `encoders/` (hard links on the same filesystem) and
referenced by relative paths from `config.json`, so the directory is self-contained and movable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import (
    ConditionerConfig,
    DiTConfig,
    EncoderSpec,
    ModelConfig,
    VAEConfig,
    preset,
)
from ..errors import PrismAudioError
from ..io.weights import load_error_reason
from .layers import rope_inv_freq

# (official key, our key). Slots: {i} block index, {w} weight|bias, {attn} self_attn|cross_attn,
# {qk} q|k, {c} video|text|sync, {fc} official Sequential index 0|2 <-> our fc1|fc2, {rest} anything.
RENAMES: list[tuple[str, str]] = [
    ("model.model.timestep_features.weight", "dit.time_embed.freqs"),
    ("model.model.to_timestep_embed.{fc}.{w}", "dit.time_embed.mlp.{fc}.{w}"),
    ("model.model.to_cond_embed.{fc}.weight", "dit.cross_mlp.{fc}.weight"),
    ("model.model.to_add_embed.{fc}.weight", "dit.add_mlp.{fc}.weight"),
    ("model.model.to_sync_embed.{fc}.weight", "dit.sync_mlp.{fc}.weight"),
    ("model.model.empty_clip_feat", "dit.empty_clip_feat"),
    ("model.model.empty_sync_feat", "dit.empty_sync_feat"),
    ("model.model.preprocess_conv.weight", "dit.pre_conv.weight"),
    ("model.model.postprocess_conv.weight", "dit.post_conv.weight"),
    ("model.model.transformer.project_in.weight", "dit.project_in.weight"),
    ("model.model.transformer.project_out.weight", "dit.project_out.weight"),
    ("model.model.transformer.gate", "dit.add_gate"),
    ("model.model.transformer.sync_gate", "dit.sync_gate"),
    ("model.model.transformer.layers.{i}.pre_norm.gamma", "dit.blocks.{i}.self_attn_norm.weight"),
    ("model.model.transformer.layers.{i}.cross_attend_norm.gamma", "dit.blocks.{i}.cross_attn_norm.weight"),
    ("model.model.transformer.layers.{i}.ff_norm.gamma", "dit.blocks.{i}.ff_norm.weight"),
    ("model.model.transformer.layers.{i}.self_attn.to_qkv.weight", "dit.blocks.{i}.self_attn.qkv.weight"),
    ("model.model.transformer.layers.{i}.cross_attn.to_q.weight", "dit.blocks.{i}.cross_attn.q.weight"),
    ("model.model.transformer.layers.{i}.cross_attn.to_kv.weight", "dit.blocks.{i}.cross_attn.kv.weight"),
    ("model.model.transformer.layers.{i}.{attn}.{qk}_norm.weight", "dit.blocks.{i}.{attn}.{qk}_norm.weight"),
    ("model.model.transformer.layers.{i}.{attn}.to_out.weight", "dit.blocks.{i}.{attn}.out.weight"),
    ("model.model.transformer.layers.{i}.ff.ff.0.proj.{w}", "dit.blocks.{i}.ff.fc1.{w}"),
    ("model.model.transformer.layers.{i}.ff.ff.2.{w}", "dit.blocks.{i}.ff.fc2.{w}"),
    ("conditioner.conditioners.{c}_features.embedder.{fc}.weight", "conditioner.{c}.{fc}.weight"),
    ("conditioner.conditioners.sync_features.sync_pos_emb", "conditioner.sync_pos_emb"),
    ("conditioner.conditioners.sync_features.proj_out.{w}", "conditioner.sync_proj_out.{w}"),  # never used
    ("pretransform.model.{rest}", "vae.{rest}"),
    ("autoencoder.{rest}", "vae.{rest}"),  # Lightning vae.ckpt (import only; export uses the line above)
]
NORM_BETA = "model.model.transformer.layers.{i}.{norm}.beta"  # all-zero buffers (bias-less LayerNorm)
# created by the official base Conditioner when dim != output_dim, never called by Cond_MLP (§4)
UNUSED_PROJ_OUT = "conditioner.conditioners.{vt}_features.proj_out.{w}"
ROPE_INV_FREQ = "model.model.transformer.rotary_pos_emb.inv_freq"

_SLOTS: dict[str, Any] = {
    "i": r"\d+", "w": "weight|bias", "attn": "self_attn|cross_attn", "qk": "q|k",
    "c": "video|text|sync", "rest": ".+", "norm": "pre_norm|cross_attend_norm|ff_norm",
    "fc": {"0": "fc1", "2": "fc2"},  # official value -> ours
    "vt": "video|text",
}
PARTS = ("dit", "conditioner", "vae")


def _compile(template: str, ours: bool) -> re.Pattern[str]:
    r"""A template like 'a.{i}.b' -> regex 'a\.(?P<i>\d+)\.b' (slot values of our side when `ours`)."""

    def slot(m: re.Match[str]) -> str:
        alt = _SLOTS[m.group(1)]
        if isinstance(alt, dict):
            alt = "|".join(alt.values() if ours else alt)
        return f"(?P<{m.group(1)}>{alt})"

    return re.compile(re.sub(r"\\\{(\w+)\\\}", slot, re.escape(template)))


def _rename(key: str, table: list[tuple[re.Pattern[str], str]], to_ours: bool) -> str | None:
    """Fill the first matching row's target template with the slot values of `key`."""
    for pattern, target in table:
        m = pattern.fullmatch(key)
        if m:
            values = m.groupdict()
            if "fc" in values:
                fc = _SLOTS["fc"] if to_ours else {v: k for k, v in _SLOTS["fc"].items()}
                values["fc"] = fc[values["fc"]]
            return target.format(**values)
    return None


_TO_OURS = [(_compile(o, ours=False), t) for o, t in RENAMES]
_TO_OFFICIAL = [(_compile(t, ours=True), o) for o, t in RENAMES if not o.startswith("autoencoder.")]
_BETA = _compile(NORM_BETA, ours=False)
_UNUSED_PROJ = _compile(UNUSED_PROJ_OUT, ours=False)


# ------------------------------------------------------------------------------ official -> ours
def split_official_state_dict(sd: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """Official flat state dict -> {'dit': ..., 'conditioner': ..., 'vae': ...} in our key names.

    Parts absent from the checkpoint come back empty. The never-called video / text `proj_out`
    weights are shape-checked and returned under 'unused' (official names) instead of a part.
    Unknown keys raise `PrismAudioError`.
    """
    out: dict[str, dict[str, Tensor]] = {p: {} for p in (*PARTS, "unused")}
    head_dims = {v.shape[0] for k, v in sd.items() if k.endswith("self_attn.q_norm.weight")}
    for key, value in sd.items():
        m = _UNUSED_PROJ.fullmatch(key)
        if m:
            _check_unused_proj(key, value, sd, m["vt"], m["w"])
            out["unused"][key] = value
            continue
        if _BETA.fullmatch(key):
            if not value.is_meta and torch.count_nonzero(value):
                raise PrismAudioError(f"official LayerNorm buffer {key} is not zero; our norms have no bias")
            continue
        if key == ROPE_INV_FREQ:
            _check_inv_freq(value, head_dims)
            continue
        ours = _rename(key, _TO_OURS, to_ours=True)
        if ours is None:
            raise PrismAudioError(f"unexpected key {key!r} in the official checkpoint (not PrismAudio?)")
        part, name = ours.split(".", 1)
        if name in out[part]:
            raise PrismAudioError(f"the checkpoint holds VAE weight {name!r} twice (two prefixes)")
        out[part][name] = value
    return out


def _check_unused_proj(key: str, value: Tensor, sd: dict[str, Tensor], which: str, kind: str) -> None:
    """proj_out must be the base class's Linear(dim -> output_dim): the embedder's first layer shape."""
    fc1 = sd.get(f"conditioner.conditioners.{which}_features.embedder.0.weight")
    if fc1 is None:
        return  # the missing embedder itself is reported by the shape check of the conditioner
    want = list(fc1.shape) if kind == "weight" else [fc1.shape[0]]
    if list(value.shape) != want:
        raise PrismAudioError(f"official conditioner weight {key!r} has shape {list(value.shape)}, expected {want} "
                              f"(the unused Linear({fc1.shape[1]} -> {fc1.shape[0]}) of the {which} condition)")


def _check_inv_freq(value: Tensor, head_dims: set[int]) -> None:
    dim = 2 * value.shape[0]
    if head_dims and {max(h // 2, 32) for h in head_dims} != {dim}:
        raise PrismAudioError(f"official RoPE covers {dim} channels, the heads need {max(head_dims) // 2}")
    if not value.is_meta and not torch.allclose(value.float(), rope_inv_freq(dim), rtol=1e-6, atol=0):
        raise PrismAudioError("official RoPE inv_freq differs from 10000^(-2j/dim): unsupported variant")


# ------------------------------------------------------------------------------ ours -> official
def to_official_state_dict(
    dit: dict[str, Tensor], conditioner: dict[str, Tensor], vae: dict[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Our state dicts -> the official flat layout (strict-loadable into the official wrapper).

    Adds the zero LayerNorm betas and the RoPE inv_freq; fills the never-used official parameters
    with zeros when our model was built without them (keep_unused_official_params=False, and the
    video / text `proj_out` of conditions whose input width differs from the output width).
    """
    ours = {f"dit.{k}": v for k, v in dit.items()}
    ours.update({f"conditioner.{k}": v for k, v in conditioner.items()})
    ours.update({f"vae.{k}": v for k, v in (vae or {}).items()})
    out: dict[str, Tensor] = {}
    for key, value in ours.items():
        official = _rename(key, _TO_OFFICIAL, to_ours=False)
        if official is None:
            raise PrismAudioError(f"our key {key!r} has no official counterpart")
        out[official] = value
    _fill_unused(out)
    prefix = "model.model.transformer.layers."
    for key in [k for k in out if k.startswith(prefix) and k.endswith("norm.gamma")]:
        out[key[: -len("gamma")] + "beta"] = torch.zeros_like(out[key])
    q_norm = next((v for k, v in out.items() if k.endswith("self_attn.q_norm.weight")), None)
    if q_norm is not None:
        out[ROPE_INV_FREQ] = rope_inv_freq(max(q_norm.shape[0] // 2, 32)).to(q_norm.device)
    return out


def _fill_unused(out: dict[str, Tensor]) -> None:
    def zeros(like: str, *shape: int) -> Tensor:
        return out[like].new_zeros(shape)

    cond_w, sync_w = "model.model.to_cond_embed.0.weight", "model.model.to_sync_embed.0.weight"
    if cond_w in out and "model.model.empty_clip_feat" not in out:
        out["model.model.empty_clip_feat"] = zeros(cond_w, 1, out[cond_w].shape[1])
        out["model.model.empty_sync_feat"] = zeros(sync_w, 1, out[sync_w].shape[1])
    for which in ("video", "text", "sync"):
        # the official base Conditioner has proj_out = Linear(dim, output_dim) exactly when they differ
        fc1 = f"conditioner.conditioners.{which}_features.embedder.0.weight"
        proj = f"conditioner.conditioners.{which}_features.proj_out."
        if fc1 in out and proj + "weight" not in out and out[fc1].shape[0] != out[fc1].shape[1]:
            out[proj + "weight"] = zeros(fc1, *out[fc1].shape)
            out[proj + "bias"] = zeros(fc1, out[fc1].shape[0])


# ------------------------------------------------------------------------------ files and configs
def load_official_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read an official .ckpt (pickle-free `weights_only` load) or .safetensors into a flat dict.

    A Lightning checkpoint is unwrapped from its 'state_dict'; when it holds `autoencoder.` keys
    (the official vae.ckpt) only those are kept (discriminator and loss weights are training-only).
    """
    path = Path(path)
    if path.is_dir():
        raise PrismAudioError(f"checkpoint {path} is a directory, not an official checkpoint file "
                              "(prismaudio.ckpt / vae.ckpt / .safetensors)")
    if not path.is_file():
        raise PrismAudioError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise PrismAudioError(f"checkpoint {path} is empty (0 bytes)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(path)
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read is a bad-input error
        raise PrismAudioError(f"cannot read checkpoint {path}: {load_error_reason(e)}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise PrismAudioError(f"checkpoint {path} is not a flat state dict of tensors")
    if any(k.startswith("autoencoder.") for k in obj):
        obj = {k: v for k, v in obj.items() if k.startswith("autoencoder.")}
    return obj


_ROUTING = {
    "cross_attention_cond_ids": ["video_features", "text_features"],
    "add_cond_ids": ["video_features"],
    "sync_cond_ids": ["sync_features"],
}


def _check_supported(diffusion: dict[str, Any]) -> None:
    """Refuse official configs whose network differs from the one we implement."""
    dc = diffusion["config"]
    for key, ids in _ROUTING.items():
        if diffusion.get(key) != ids:
            raise PrismAudioError(f"unsupported official config: {key} is {diffusion.get(key)}, not {ids}")
    wanted = {"type": "dit", "qk_norm": "rns", "use_gated": True, "use_sync_gated": True,
              "project_cond_tokens": False}
    found = {"type": diffusion.get("type"), "qk_norm": dc.get("attn_kwargs", {}).get("qk_norm"),
             "use_gated": dc.get("use_gated"), "use_sync_gated": dc.get("use_sync_gated"),
             "project_cond_tokens": dc.get("project_cond_tokens", True)}
    for key, value in wanted.items():
        if found[key] != value:
            raise PrismAudioError(f"unsupported official config: {key} = {found[key]!r}, expected {value!r}")


def config_from_official(official: dict[str, Any]) -> ModelConfig:
    """Our `ModelConfig` from an official model config JSON (e.g. prismaudio.json)."""
    try:
        model = official["model"]
        _check_supported(model["diffusion"])
        dc = model["diffusion"]["config"]
        conds = {c["id"]: c["config"] for c in model["conditioning"]["configs"]}
        default_out = model["conditioning"].get("cond_dim", 768)
        ids = ("video_features", "text_features", "sync_features")
        outs = {conds[i].get("output_dim", default_out) for i in ids}
        if len(outs) != 1:
            raise PrismAudioError(f"condition MLPs of different output widths {sorted(outs)} are unsupported")
        dims = ("io_channels", "embed_dim", "depth", "num_heads", "cond_token_dim", "add_token_dim",
                "sync_token_dim")
        dit = DiTConfig(**{k: int(dc[k]) for k in dims})
        output_dim = outs.pop()
        sync_dim = conds["sync_features"]["dim"]
        conditioner = ConditionerConfig(
            video_dim=conds["video_features"]["dim"],
            text_dim=conds["text_features"]["dim"],
            sync_dim=sync_dim,
            output_dim=output_dim,
            # the official sync proj_out exists only when the widths differ (base Conditioner)
            keep_unused_official_params=sync_dim != output_dim,
        )
        pre = model["pretransform"]
        enc, dec = pre["config"]["encoder"]["config"], pre["config"]["decoder"]["config"]
        vae = VAEConfig(
            audio_channels=enc.get("in_channels", 2),
            channels=enc["channels"],
            c_mults=list(enc["c_mults"]),
            strides=list(enc["strides"]),
            latent_dim=dec["latent_dim"],  # the encoder's latent_dim is 2x (mean and scale)
            use_snake=enc.get("use_snake", False),
            final_tanh=dec.get("final_tanh", True),  # the official Oobleck default is True
            latent_scale=float(pre.get("scale", 1.0)),
        )
        sample_rate = int(official["sample_rate"])
        duration = float(round(official.get("sample_size", 9 * sample_rate) / sample_rate))
    except (KeyError, TypeError, ValueError) as e:
        raise PrismAudioError(f"official model config is missing or has a malformed entry {e}") from None
    paper = preset("paper")
    name = "paper" if (dit, conditioner, vae) == (paper.dit, paper.conditioner, paper.vae) else "official"
    return ModelConfig(preset=name, sample_rate=sample_rate, duration=duration, dit=dit,
                       conditioner=conditioner, vae=vae)


# ------------------------------------------------------------------------------ loading
def check_state_dict(module: nn.Module, sd: dict[str, Tensor], what: str) -> None:
    """Raise one clear `PrismAudioError` unless `sd` fits `module` exactly (keys and shapes)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing:
        raise PrismAudioError(f"{what}: {len(missing)} weight(s) missing from the checkpoint, e.g. "
                              f"{missing[0]!r} (a checkpoint of another model?)")
    if unexpected:
        raise PrismAudioError(f"{what}: {len(unexpected)} unexpected weight(s) in the checkpoint, e.g. "
                              f"{unexpected[0]!r} (a checkpoint of another model?)")
    for k, v in own.items():
        if sd[k].shape != v.shape:
            raise PrismAudioError(f"{what}: weight {k!r} has shape {list(sd[k].shape)} in the checkpoint but "
                                  f"{list(v.shape)} in the model (a checkpoint of another preset or config?)")


def load_official(
    dit: nn.Module, conditioner: nn.Module, sd: dict[str, Tensor] | str | Path, vae: nn.Module | None = None
) -> None:
    """Load an official state dict (or checkpoint file) strictly into our modules."""
    parts = split_official_state_dict(sd if isinstance(sd, dict) else load_official_state_dict(sd))
    targets = {"dit": dit, "conditioner": conditioner, "vae": vae}
    for part, module in targets.items():
        if module is not None:
            check_state_dict(module, parts[part], f"official {part} weights")
    for part, module in targets.items():
        if module is not None:
            module.load_state_dict(parts[part])


# (config slot, registry name, CLI flag, what the flag names) of the three pretrained encoders
ENCODER_SOURCES: tuple[tuple[str, str, str, str], ...] = (
    ("video", "videoprism", "--videoprism", "DIR"),
    ("sync", "synchformer", "--synchformer", "FILE"),
    ("text", "t5gemma", "--t5gemma", "DIR"),
)
ENCODERS_DIR = "encoders"  # inside a converted model directory: encoders/<registry name>/...


def encoder_flag_hint(slot: str, name: str) -> str:
    """How a user provides a missing encoder of a model directory (one clause, for error lines)."""
    for s_slot, s_name, flag, what in ENCODER_SOURCES:
        if s_slot == slot and s_name == name:
            return (f"convert with `prismaudio convert-official ... {flag} {what}` to include it, or set "
                    f"encoders.{slot}.params.path in the model's config.json")
    return f"set encoders.{slot}.params.path in the model's config.json"


def convert_official_checkpoint(
    weights: str | Path,
    out: str | Path,
    config: str | Path | None = None,
    vae_weights: str | Path | None = None,
    encoders: dict[str, str | Path] | None = None,
    encoder_params: dict[str, dict[str, Any]] | None = None,
    notes: Callable[[str], None] | None = None,
) -> ModelConfig:
    """Write our model directory from official files, atomically (a temporary sibling directory,
    renamed into place only when everything is written: a failure leaves nothing behind).

    `weights` = prismaudio.ckpt, `config` = its JSON (default: the paper preset), `vae_weights` = an
    optional vae.ckpt overriding the VAE inside `weights`. `encoders` maps slots 'video' / 'sync' /
    'text' to the local VideoPrism directory, Synchformer state-dict file and T5-Gemma directory;
    each is validated (kind and width) by building its registered encoder, then copied into
    `out/encoders/<name>/` (hard-linked when on the same filesystem: no extra disk space) and
    referenced by a path relative to `out` in `config.json`. `encoder_params` adds constructor
    parameters per slot (a non-released architecture, e.g. another Synchformer head count).
    `notes` receives one line per fact the user should know (dropped unused weights, encoders the
    directory still lacks, how encoder files were placed). `out` must not exist or be empty.
    """
    from safetensors.torch import save_file

    from ..encoders.base import build_encoder
    from .conditioning import Conditioner
    from .dit import DiffusionTransformer
    from .vae import OobleckVAE

    note = notes or (lambda _line: None)
    root = Path(out)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise PrismAudioError(f"--out {root} exists and is not an empty directory; choose a new one")
    if config is None:
        cfg = preset("paper")
    else:
        try:
            cfg = config_from_official(json.loads(Path(config).read_text(encoding="utf-8")))
        except (OSError, ValueError) as e:
            raise PrismAudioError(f"cannot read official config {config}: {e}") from None
    parts = split_official_state_dict(load_official_state_dict(weights))
    if vae_weights is not None:
        extra = split_official_state_dict(load_official_state_dict(vae_weights))
        if extra["dit"] or extra["conditioner"] or not extra["vae"]:
            raise PrismAudioError(f"{vae_weights} is not an official VAE checkpoint")
        parts["vae"] = extra["vae"]
    if not parts["vae"]:
        raise PrismAudioError(f"{weights} holds no VAE weights; pass the official vae.ckpt as well")
    with torch.device("meta"):  # shapes only, no memory
        modules = {"dit": DiffusionTransformer(cfg.dit), "conditioner": Conditioner(cfg.conditioner),
                   "vae": OobleckVAE(cfg.vae)}
    for part, module in modules.items():
        check_state_dict(module, parts[part], f"official {part} weights ({weights})")
    if parts["unused"]:
        names = ", ".join(sorted(parts["unused"]))
        n = sum(v.numel() for v in parts["unused"].values())
        note(f"ignored {len(parts['unused'])} official weights ({n:,} values) that the network never uses: {names}")

    sources = _check_encoder_sources(cfg, dict(encoders or {}), dict(encoder_params or {}), build_encoder)
    for slot, name, flag, what in ENCODER_SOURCES:
        if slot not in sources:
            note(f"no {flag} given: {root} has no {name} {slot} encoder yet and `prismaudio generate` will refuse "
                 f"it until one is added (re-run with {flag} {what}, or set encoders.{slot}.params.path in config.json)")

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.converting-", dir=root.parent))
    try:
        placed = {"linked": 0, "copied": 0, "copied_bytes": 0}
        for slot, (src, spec) in sources.items():
            rel = Path(ENCODERS_DIR) / spec.name
            if src.is_dir():
                _place_tree(src, tmp / rel, placed)
            else:
                rel = rel / src.name
                _place_file(src, tmp / rel, placed)
            spec.params["path"] = rel.as_posix()
            setattr(cfg.encoders, slot, spec)
        (tmp / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n", encoding="utf-8")
        model = {f"{p}.{k}": v.contiguous() for p in ("dit", "conditioner") for k, v in parts[p].items()}
        save_file(model, str(tmp / "model.safetensors"))
        save_file({k: v.contiguous() for k, v in parts["vae"].items()}, str(tmp / "vae.safetensors"))
        if root.exists():
            root.rmdir()  # empty (checked above)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if sources:
        how = f"{placed['linked']} file(s) hard-linked"
        if placed["copied"]:
            how += f", {placed['copied']} copied ({placed['copied_bytes'] / 2**20:.0f} MiB; another filesystem)"
        note(f"encoders {', '.join(s.name for _, s in sources.values())} placed in {root / ENCODERS_DIR}: {how}")
    return cfg


def _check_encoder_sources(
    cfg: ModelConfig, given: dict[str, str | Path], params: dict[str, dict[str, Any]], build: Callable[..., Any]
) -> dict[str, tuple[Path, EncoderSpec]]:
    """Validate each given encoder by building it (cheap: the weights load lazily) and comparing its
    width with the conditioner's; returns slot -> (absolute source, spec to record)."""
    known = {slot: (name, flag) for slot, name, flag, _ in ENCODER_SOURCES}
    unknown = sorted(set(given) - set(known)) + sorted(set(params) - set(known))
    if unknown:
        raise PrismAudioError(f"unknown encoder slot(s) {unknown} (video, sync, text)")
    widths = {"video": cfg.conditioner.video_dim, "sync": cfg.conditioner.sync_dim, "text": cfg.conditioner.text_dim}
    out: dict[str, tuple[Path, EncoderSpec]] = {}
    for slot, src in given.items():
        if src is None:
            continue
        name, flag = known[slot]
        path = Path(src).expanduser().resolve()
        spec = EncoderSpec(name, {**params.get(slot, {}), "path": str(path)})
        try:
            enc = build(spec, modality=slot)
        except PrismAudioError as e:
            raise PrismAudioError(f"{flag} {src}: {e}") from None
        if enc.output_dim != widths[slot]:
            raise PrismAudioError(f"{flag} {src}: the {name} encoder gives {enc.output_dim}-d features but the "
                                  f"checkpoint's {slot} condition expects {widths[slot]}-d (another model size?)")
        out[slot] = (path, EncoderSpec(name, {**params.get(slot, {})}))
    return out


def _place_file(src: Path, dst: Path, placed: dict[str, int]) -> None:
    """Hard-link `src` to `dst` (free, same inode), or copy it when linking is impossible."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # follows a symlinked source (e.g. a Hugging Face cache snapshot)
        placed["linked"] += 1
    except OSError:
        shutil.copy2(src, dst)
        placed["copied"] += 1
        placed["copied_bytes"] += dst.stat().st_size


def _place_tree(src: Path, dst: Path, placed: dict[str, int]) -> None:
    """Every file under `src` (hidden entries such as .git or .cache skipped), keeping the layout."""
    for item in sorted(src.rglob("*")):
        if item.is_file() and not any(part.startswith(".") for part in item.relative_to(src).parts):
            _place_file(item, dst / item.relative_to(src), placed)
