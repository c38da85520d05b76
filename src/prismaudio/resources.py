"""Where the shipped assets live: the default model, the offline judges, the visual classifier.

They are package data (`prismaudio/assets/<name>/`), located through `importlib.resources` rather
than a path relative to the source tree, so an installed wheel finds them exactly as a checkout
does. `$PRISMAUDIO_ASSETS` names a directory with the same layout that replaces the shipped one
(e.g. freshly retrained models), without touching the installed package.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

from .errors import PrismAudioError

ASSETS_ENV = "PRISMAUDIO_ASSETS"


def assets_root() -> Path:
    """`$PRISMAUDIO_ASSETS` when set, else the package's own `assets/` directory."""
    env = os.environ.get(ASSETS_ENV)
    if env:
        return Path(env).expanduser()
    root = files("prismaudio") / "assets"
    if not isinstance(root, Path):  # e.g. imported from a zip: safetensors needs real files
        raise PrismAudioError(f"the installed prismaudio package is not on the file system ({root}); "
                              f"set ${ASSETS_ENV} to a directory holding its assets")
    return root


def asset_path(name: str) -> Path:
    """Path of the shipped asset `name` (e.g. "prismaudio-mini", "judges", "visual_classifier").

    Only locates it: whether it exists is for the caller to check, since each one knows which
    files it needs and how to tell the user to make them.
    """
    return assets_root() / name


__all__ = ["ASSETS_ENV", "asset_path", "assets_root"]


PROCEDURAL = "prismaudio.procedural"


def world_module(name: str):
    """Import a module of the procedural world by name (`prismaudio.procedural...`), or say in one
    line that it is not installed. Why by name: the world is a plugin that the core never imports
    statically (tests/test_procedural_boundary.py); editing, the edit-pair stage and the offline
    planner reach it only through this lookup."""
    import importlib

    if not name.startswith(PROCEDURAL):
        raise ValueError(f"{name} is not a module of the procedural world")
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        raise PrismAudioError(f"the procedural world ({name}) is not available in this installation") from None
