"""The real-config YAML: which LOCAL checkpoint each real backend loads (nothing is downloaded).

One file gives the paths to both consumers, so they are written once:

* ``prismaudio evaluate --judges real --real-config FILE``: one backend per role (``clap``, ``desync``,
  ``aesthetics``, ``crw``, ``embedder``, ``classifier``), each ``{backend: NAME, path: FILE, ...params}``
  (a plain string is the backend name alone);
* the official reward variants (``official_semantic`` ...; see `official_rewards`): the optional
  ``rewards:`` section, ``{official_semantic: {path: FILE, ...params}}`` (a plain string is the path).
  The backend of each official reward is fixed (`OFFICIAL_BACKENDS`); without its entry, a reward
  uses the role entry when that entry names the same backend (``clap: {backend: ms_clap, ...}``).

Relative ``path`` values resolve against the YAML's folder when the file exists there (the rule of
the training configs), else they are kept as given. The rewards find the file through `set_active`
(the GRPO trainer, evaluate) or, when nothing was set, ``$PRISMAUDIO_REAL_CONFIG``.
Every mistake (unknown role or reward, a non-mapping entry, an unreadable file) is one `PrismAudioError`.
See ``configs/eval/real.yaml`` for a documented example.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PrismAudioError

ROLES = ("clap", "desync", "aesthetics", "crw", "embedder", "classifier")
ENV = "PRISMAUDIO_REAL_CONFIG"
# official reward -> (role, backend name): the models the official PrismAudio rewards run
OFFICIAL_BACKENDS: dict[str, tuple[str, str]] = {
    "official_semantic": ("clap", "ms_clap"),
    "official_temporal": ("desync", "synchformer_desync"),
    "official_aesthetic": ("aesthetics", "audiobox_aesthetics"),
    "official_spatial": ("crw", "stereocrw"),
}


@dataclass(frozen=True)
class BackendSpec:
    """A backend to build: registered name + constructor parameters; `where` names the YAML entry."""

    backend: str
    params: dict[str, Any] = field(default_factory=dict)
    where: str = ""

    def key(self) -> tuple:
        return (self.backend, tuple(sorted((k, repr(v)) for k, v in self.params.items())))


@dataclass
class RealConfig:
    roles: dict[str, BackendSpec] = field(default_factory=dict)
    rewards: dict[str, BackendSpec] = field(default_factory=dict)
    source: Path | None = None

    def reward_spec(self, name: str) -> BackendSpec:
        """The backend of official reward `name`: its ``rewards:`` entry, else the matching role entry."""
        role, official = OFFICIAL_BACKENDS[name]
        if name in self.rewards:
            return self.rewards[name]
        spec = self.roles.get(role)
        if spec is not None and spec.backend == official:
            return spec
        where = f" in {self.source}" if self.source else ""
        raise PrismAudioError(f"reward {name!r} needs the local {official} checkpoint: add "
                              f"'rewards: {{{name}: {{path: FILE}}}}' (or '{role}: {{backend: {official}, "
                              f"path: FILE}}') to the real config{where}")


def _resolve_path(value: Any, base: Path | None, where: str) -> Any:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise PrismAudioError(f"real config: {where}.path must be a file path, got {value!r}")
    p = Path(value).expanduser()
    if base is not None and not p.is_absolute() and (base / p).exists():
        p = base / p
    return str(p)


def _spec(value: Any, where: str, base: Path | None, default_backend: str | None) -> BackendSpec | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = {"backend": value} if default_backend is None else {"path": value}
    if not isinstance(value, Mapping):
        raise PrismAudioError(f"real config: {where} must be a mapping {{backend: NAME, path: FILE, ...}}, "
                              f"got {type(value).__name__}")
    params = {str(k): v for k, v in value.items()}
    backend = params.pop("backend", default_backend)
    if not isinstance(backend, str) or not backend:
        raise PrismAudioError(f"real config: {where} needs 'backend: NAME'")
    if "path" in params:
        params["path"] = _resolve_path(params["path"], base, where)
    return BackendSpec(backend, params, where)


def parse_real_config(data: Any, base_dir: str | os.PathLike | None = None,
                      source: str | os.PathLike | None = None) -> RealConfig:
    """A mapping (the parsed YAML) as a `RealConfig`; see the module doc for the layout."""
    if isinstance(data, RealConfig):
        return data
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise PrismAudioError("real config must be a mapping of roles to backends")
    base = Path(base_dir) if base_dir is not None else None
    unknown = sorted(str(k) for k in data if k not in ROLES and k != "rewards")
    if unknown:
        raise PrismAudioError(f"real config: unknown key(s) {unknown}; roles: {', '.join(ROLES)}, and 'rewards'")
    cfg = RealConfig(source=Path(source) if source is not None else None)
    for role in ROLES:
        spec = _spec(data.get(role), role, base, None)
        if spec is not None:
            cfg.roles[role] = spec
    rewards = data.get("rewards") or {}
    if not isinstance(rewards, Mapping):
        raise PrismAudioError("real config: 'rewards' must map official reward names to {path: FILE, ...}")
    for name, value in rewards.items():
        if name not in OFFICIAL_BACKENDS:
            raise PrismAudioError(f"real config: unknown reward {name!r} under 'rewards'; "
                                  f"known: {', '.join(OFFICIAL_BACKENDS)}")
        spec = _spec(value, f"rewards.{name}", base, OFFICIAL_BACKENDS[name][1])
        if spec is not None:
            cfg.rewards[name] = spec
    return cfg


def load_real_config(path: str | os.PathLike) -> RealConfig:
    """Read a YAML (or JSON) real config; relative paths resolve against its folder (see module doc)."""
    import yaml

    p = Path(path)
    if p.is_dir():
        raise PrismAudioError(f"real config {p} is a directory, not a YAML file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise PrismAudioError(f"cannot read real config {p}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise PrismAudioError(f"real config {p} is not UTF-8 text") from None
    except yaml.YAMLError as e:
        raise PrismAudioError(f"real config {p} is not valid YAML/JSON: {' '.join(str(e).split())}") from None
    return parse_real_config(data, p.parent, p)


_ACTIVE: dict[str, RealConfig | None] = {"cfg": None}
_ENV_CACHE: dict[tuple[str, float], RealConfig] = {}


def set_active(cfg: RealConfig | Mapping[str, Any] | str | os.PathLike | None) -> RealConfig | None:
    """Make `cfg` (a RealConfig, a parsed mapping or a YAML path; None: clear) the config the official
    rewards read. Returns it parsed."""
    if cfg is None:
        _ACTIVE["cfg"] = None
    elif isinstance(cfg, (str, os.PathLike)):
        _ACTIVE["cfg"] = load_real_config(cfg)
    else:
        _ACTIVE["cfg"] = parse_real_config(cfg)
    return _ACTIVE["cfg"]


def active() -> RealConfig | None:
    """The config set with `set_active`, else the file named by ``$PRISMAUDIO_REAL_CONFIG``, else None."""
    if _ACTIVE["cfg"] is not None:
        return _ACTIVE["cfg"]
    env = os.environ.get(ENV)
    if not env:
        return None
    try:
        key = (env, os.stat(env).st_mtime)
    except OSError:
        return load_real_config(env)  # raises the one-line error
    if key not in _ENV_CACHE:  # read once per file version, not per batch
        _ENV_CACHE.clear()
        _ENV_CACHE[key] = load_real_config(env)
    return _ENV_CACHE[key]


__all__ = ["ENV", "OFFICIAL_BACKENDS", "ROLES", "BackendSpec", "RealConfig", "active", "load_real_config",
           "parse_real_config", "set_active"]
