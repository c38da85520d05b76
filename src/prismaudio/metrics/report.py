"""The evaluation table of `prismaudio evaluate`: mean ± std per metric, per system, per subset.

Input: ``per_clip = {system: [{"id": ..., "subset": "single" | "multi" | ..., METRIC: value}, ...]}``
(one system is usually the ground truth, "GT", evaluated like any other) and optionally
``set_level = {system: {subset: {METRIC: value}}}`` for metrics defined on a whole set (FD; KL can be
given either way). Metric keys are the paper's names (case-insensitive: "clap" == "CLAP").

Statistics ignore missing, None, NaN and inf values; each cell keeps the count ``n`` of valid
values and shows "n/a" when there are none. std is the sample std (ddof = 1), 0 for one value, and
absent for set-level metrics. A set-level value is a number, or ``{"value": v, "n": clips}`` for a
value computed over `clips` clips (FD over the valid clips): the cell shows "v (n=clips)". Subsets: "all" (every clip), then "single" and "multi", then any other
subset label found, in sorted order. Columns follow the paper (CLAP, DeSync, PQ, PC, CE, CU, GCC,
CRW, FD, KL), then the ground-truth measures (onset_ms, side_acc, itd_err_ms, class_recall), then
any other metric in sorted order. `modes` names the protocol of a column, shown in its header,
e.g. ``{"GCC": "bewo", "FD": "PANNs"}`` -> "GCC (bewo) ↓". `notes` (optional, JSON-ready) carries
what the table cannot show: `evaluate` puts the backends' status, FD clip counts and every NaN
reason, grouped with its clip ids, there; the Markdown lists them under "Notes" (without the ids).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PrismAudioError
from ..io.files import atomic_path

PAPER_COLUMNS = ["CLAP", "DeSync", "PQ", "PC", "CE", "CU", "GCC", "CRW", "FD", "KL"]
GT_COLUMNS = ["onset_ms", "side_acc", "itd_err_ms", "class_recall"]
COLUMN_ORDER = PAPER_COLUMNS + GT_COLUMNS
HIGHER_IS_BETTER = {"CLAP": True, "DeSync": False, "PQ": True, "PC": False, "CE": True, "CU": True,
                    "GCC": False, "CRW": False, "FD": False, "KL": False, "onset_ms": False,
                    "side_acc": True, "itd_err_ms": False, "class_recall": True}
SUBSET_ORDER = ["all", "single", "multi"]
RESERVED = {"id", "subset"}
_CANON = {c.lower(): c for c in COLUMN_ORDER}


def canonical_metric(name: str) -> str:
    """The paper's spelling of a metric name ("desync" -> "DeSync"); others are kept as given."""
    return _CANON.get(name.lower(), name)


@dataclass
class Stat:
    mean: float | None  # None when n == 0
    std: float | None  # None when n == 0 or set-level
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n}

    def render(self, digits: int = 2) -> str:
        if self.mean is None:
            return "n/a"
        if self.std is None:
            return f"{self.mean:.{digits}f}" + (f" (n={self.n})" if self.n > 1 else "")
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def _finite(v: Any) -> float | None:
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def summarize(values: Sequence[Any]) -> Stat:
    """NaN-aware mean ± sample std of `values` (non-numbers and non-finite values are skipped)."""
    xs = [x for x in (_finite(v) for v in values) if x is not None]
    if not xs:
        return Stat(None, None, 0)
    mean = math.fsum(xs) / len(xs)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return Stat(mean, std, len(xs))


@dataclass
class Report:
    columns: list[str]
    systems: list[str]
    subsets: list[str]
    cells: dict[str, dict[str, dict[str, Stat]]]  # subset -> system -> metric -> Stat
    modes: dict[str, str] = field(default_factory=dict)
    gt_name: str = "GT"
    notes: dict[str, Any] = field(default_factory=dict)

    def header(self, column: str) -> str:
        mode = self.modes.get(column)
        arrow = {True: " ↑", False: " ↓"}.get(HIGHER_IS_BETTER.get(column), "")  # type: ignore[arg-type]
        return f"{column} ({mode}){arrow}" if mode else f"{column}{arrow}"

    def to_dict(self) -> dict[str, Any]:
        out = {
            "columns": self.columns,
            "headers": [self.header(c) for c in self.columns],
            "systems": self.systems,
            "subsets": self.subsets,
            "modes": self.modes,
            "gt_name": self.gt_name,
            "cells": {
                sub: {sys: {m: st.to_dict() for m, st in row.items()} for sys, row in rows.items()}
                for sub, rows in self.cells.items()
            },
        }
        if self.notes:
            out["notes"] = self.notes
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        try:
            cells = {
                sub: {sys: {m: Stat(**st) for m, st in row.items()} for sys, row in rows.items()}
                for sub, rows in data["cells"].items()
            }
            return cls(list(data["columns"]), list(data["systems"]), list(data["subsets"]), cells,
                       dict(data.get("modes", {})), data.get("gt_name", "GT"), dict(data.get("notes") or {}))
        except (KeyError, TypeError, AttributeError) as e:
            raise PrismAudioError(f"not a PrismAudio report: {e}") from None

    def to_markdown(self, digits: int = 2) -> str:
        lines: list[str] = []
        if self.modes:
            lines.append("Protocols: " + ", ".join(f"{k} = {v}" for k, v in self.modes.items()) + ".")
            lines.append("")
        for sub in self.subsets:
            rows = self.cells.get(sub, {})
            n_clips = max((st.n for row in rows.values() for st in row.values()), default=0)
            lines.append(f"### Subset: {sub} (up to {n_clips} clips per cell)")
            lines.append("")
            lines.append("| System | " + " | ".join(self.header(c) for c in self.columns) + " |")
            lines.append("|---|" + "---:|" * len(self.columns))
            for sys in self.systems:
                row = rows.get(sys, {})
                vals = [row[c].render(digits) if c in row else "n/a" for c in self.columns]
                lines.append(f"| {sys} | " + " | ".join(vals) + " |")
            lines.append("")
        lines += notes_markdown(self.notes)
        return "\n".join(lines)

    def write(self, markdown_path: str | Path | None = None, json_path: str | Path | None = None) -> None:
        """Write the Markdown and/or JSON renderings atomically."""
        if markdown_path is not None:
            with atomic_path(markdown_path) as tmp:
                Path(tmp).write_text(self.to_markdown(), encoding="utf-8")
        if json_path is not None:
            with atomic_path(json_path) as tmp:
                Path(tmp).write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n",
                                     encoding="utf-8")


UNAVAILABLE = "backend unavailable"  # NaN reasons that the backend line already explains


def notes_markdown(notes: Mapping[str, Any]) -> list[str]:
    """The "Notes" section: unavailable / fallback backends, FD clip counts, NaN reasons (grouped; those
    of an unavailable backend are said once, by its line)."""
    lines: list[str] = []
    for role, st in (notes.get("backends") or {}).items():
        if st.get("status") == "unavailable":
            lines.append(f"- {role} backend {st.get('backend')} unavailable (its columns are n/a): {st.get('reason')}")
        elif st.get("status") == "offline fallback":
            lines.append(f"- {role}: not in the real config, offline judge {st.get('backend')} used")
    for system, per in (notes.get("fd") or {}).items():
        c = per.get("all") or {}
        if c.get("reason"):
            if not str(c["reason"]).startswith(UNAVAILABLE):
                lines.append(f"- {system}: FD n/a: {c['reason']}")
        elif c and c.get("n", 0) < c.get("n_clips", 0):
            lines.append(f"- {system}: FD over {c['n']} of {c['n_clips']} clips (reference: {c.get('n_reference')})")
    for system, groups in (notes.get("nan_reasons") or {}).items():
        for g in groups:
            if str(g["reason"]).startswith(UNAVAILABLE):
                continue
            lines.append(f"- {system}: NaN in {', '.join(g['metrics'])} for {g['n_clips']} clip(s): {g['reason']}")
    return ["### Notes", "", *lines, ""] if lines else []


def load_report(path: str | Path) -> Report:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PrismAudioError(f"cannot read report {path}: {e}") from None
    return Report.from_dict(data)


def _ordered(found: set[str], order: Sequence[str]) -> list[str]:
    return [x for x in order if x in found] + sorted(found - set(order))


def build_report(
    per_clip: Mapping[str, Sequence[Mapping[str, Any]]],
    set_level: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    modes: Mapping[str, str] | None = None,
    gt_name: str = "GT",
) -> Report:
    """Assemble the table (see module doc). The GT system, when present, is the first row."""
    set_level = set_level or {}
    metrics: set[str] = set()
    subsets: set[str] = {"all"}
    by_sub: dict[str, dict[str, dict[str, list[Any]]]] = {}
    for system, clips in per_clip.items():
        for i, clip in enumerate(clips):
            if not isinstance(clip, Mapping):
                raise PrismAudioError(f"{system}: clip #{i} is not a mapping")
            sub = str(clip.get("subset") or "unspecified")
            for target in dict.fromkeys(("all", sub)):
                subsets.add(target)
                vals = by_sub.setdefault(target, {}).setdefault(system, {})
                for key, value in clip.items():
                    if key in RESERVED:
                        continue
                    m = canonical_metric(key)
                    metrics.add(m)
                    vals.setdefault(m, []).append(value)
    for system, subs in set_level.items():
        for sub, vals in subs.items():
            subsets.add(sub)
            for key in vals:
                metrics.add(canonical_metric(key))
    cells: dict[str, dict[str, dict[str, Stat]]] = {}
    systems = list(dict.fromkeys(list(per_clip) + list(set_level)))
    if gt_name in systems:
        systems = [gt_name] + [s for s in systems if s != gt_name]
    for sub in subsets:
        for system in systems:
            row = cells.setdefault(sub, {}).setdefault(system, {})
            for m, values in by_sub.get(sub, {}).get(system, {}).items():
                row[m] = summarize(values)
            for key, value in set_level.get(system, {}).get(sub, {}).items():
                m = canonical_metric(key)
                if m in row and row[m].n:
                    raise PrismAudioError(f"{system}/{sub}: metric {m} given both per clip and per set")
                count = 1
                if isinstance(value, Mapping):
                    value, count = value.get("value"), value.get("n", 1)
                    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                        raise PrismAudioError(f"{system}/{sub}: set-level {m} count must be an int >= 0, got {count!r}")
                v = _finite(value)
                row[m] = Stat(v, None, 0 if v is None else count)
    modes = {canonical_metric(k): v for k, v in (modes or {}).items()}
    return Report(_ordered(metrics, COLUMN_ORDER), systems, _ordered(subsets, SUBSET_ORDER), cells, modes, gt_name)
