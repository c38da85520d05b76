"""The wheel is a working install: it carries the shipped assets, and `prismaudio generate` run
from an installed copy, outside the repository, finds its default model and planner in them.

Why: the assets used to be found by source-tree paths (`parents[2] / "models"`), which find
nothing in an installed wheel; this test fails if anything still reaches into the checkout.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "example.mp4"

# Run by the installed copy: it must be the one imported, and every asset must come from it.
PROBE = """
import json, sys
site = sys.argv[1]
sys.path.insert(0, site)
import prismaudio
from prismaudio.cli import main
from prismaudio.resources import asset_path
paths = {"package": prismaudio.__file__, "model": str(asset_path("prismaudio-mini")),
         "classifier": str(asset_path("visual_classifier")), "judges": str(asset_path("judges"))}
print("PATHS " + json.dumps(paths), flush=True)
sys.exit(main(sys.argv[2:]))
"""


def _build_wheel(tmp: Path) -> Path:
    """Build from a clean copy of the sources: an in-tree build/ can keep stale modules."""
    src = tmp / "source"
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    out = tmp / "dist"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                        "--no-index", "-q", "-w", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    wheels = list(out.glob("prismaudio-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="setuptools is needed to build the wheel")
def test_installed_wheel_generates_with_its_own_assets(tmp_path: Path) -> None:
    assert not tmp_path.resolve().is_relative_to(REPO)
    wheel = _build_wheel(tmp_path)

    names = set(zipfile.ZipFile(wheel).namelist())
    for asset in ("prismaudio-mini/config.json", "prismaudio-mini/model.safetensors", "prismaudio-mini/vae.safetensors",
                  "prismaudio-mini/encoders.safetensors", "prismaudio-mini/training_summary.png",
                  "judges/semantic/config.json", "judges/sync/model.safetensors", "judges/quality/model.safetensors",
                  "visual_classifier/config.json", "visual_classifier/model.safetensors"):
        assert f"prismaudio/assets/{asset}" in names, asset
    assert "prismaudio/procedural/planner.py" in names and "prismaudio/resources.py" in names
    assert not any(n.startswith(("prismaudio/data/synth/", "models/")) for n in names)

    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site),
                        str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]

    work = tmp_path / "work"
    work.mkdir()
    video = shutil.copy(EXAMPLE, work / "clip.mp4")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PRISMAUDIO_MODEL", "PRISMAUDIO_ASSETS", "PRISMAUDIO_JUDGES", "PYTHONPATH")}
    r = subprocess.run([sys.executable, "-I", "-c", PROBE, str(site), "generate", str(video), "--out", "out",
                        "--steps", "4", "--quiet"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "randomly initialised" not in r.stderr  # the default model was found
    paths = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("PATHS "))[6:])
    for what, p in paths.items():
        assert Path(p).resolve().is_relative_to(site.resolve()), (what, p)

    audio, sr = sf.read(work / "out" / "clip.wav")
    assert sr == 16000 and audio.ndim == 2 and audio.shape[1] == 2 and len(audio) > sr
    rms = np.sqrt((audio**2).mean(0))
    assert (rms > 1e-3).all(), rms  # both channels sound
