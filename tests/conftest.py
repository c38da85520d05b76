"""Shared test fixtures.

Official reference fixtures live in `../shared/reference/` beside the clone (always present in CI).
A user's clone may not have it: those tests skip with a clear reason instead of failing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PRISMAUDIO_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_reference() -> Path:
    """`../shared/reference` or skip (CI always has it; a user's clone may not)."""
    ref = SHARED / "reference"
    if not ref.is_dir():
        pytest.skip(f"official reference fixtures not found at {ref} (set PRISMAUDIO_SHARED)")
    return ref


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh 8-clip procedural corpus per test module (2 s, 48 px, every split): the data of the
    tiny training / GRPO smoke runs (`configs/*/tiny_smoke.yaml`). A module may define its own."""
    from prismaudio.cli import main as cli_main

    out = tmp_path_factory.mktemp("corpus")
    assert cli_main(["synth", "--out", str(out), "--n", "8", "--duration", "2", "--size", "48",
                     "--workers", "1", "--quiet"]) == 0
    return out
