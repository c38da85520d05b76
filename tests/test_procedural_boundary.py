"""The procedural world is a plugin: the core never imports `prismaudio.procedural`, and finds the
offline planner only by name, through the planner registry's table of built-in plugins."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "prismaudio"


def _imports(path: Path) -> list[str]:
    """Absolute module names imported anywhere in `path` (function bodies included)."""
    rel = path.relative_to(PKG.parent).with_suffix("").parts
    package = rel[:-1]  # for __init__.py too: level 1 is the package itself
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out += [mod] + [f"{mod}.{a.name}" for a in node.names]
    return out


def test_core_modules_import_nothing_from_procedural() -> None:
    offenders = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        if rel.parts[0] == "procedural" or rel == Path("cli.py"):  # the plugin, and the composition root
            continue
        offenders += [f"{rel}: {m}" for m in _imports(path) if m.startswith("prismaudio.procedural")]
    assert not offenders, offenders


def test_offline_planner_is_imported_only_when_asked_for() -> None:
    code = (
        "import sys\n"
        "import prismaudio.cot, prismaudio.metrics.offline, prismaudio.metrics.evaluate, prismaudio.cot.visual_classifier\n"
        "from prismaudio.cot import get_planner, list_planners\n"
        "assert 'offline' in list_planners()\n"
        "assert not any(m.startswith('prismaudio.procedural.') for m in sys.modules), sorted(sys.modules)\n"
        "cls = get_planner('offline')\n"
        "assert cls.__module__ == 'prismaudio.procedural.planner' and cls.name == 'offline'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
