"""Dataset manifests: one `ManifestRow` per clip, read from JSONL / CSV / VGGSound / AudioCanvas lists.

Schema (JSONL, one object per line; the synth generator writes every key, real data may omit most):
`id`, `video` and `audio` (paths relative to the manifest's folder, or absolute), `split`
("train" | "val" | "test"), `subset` ("single" | "multi" | null), `duration`, `caption`,
`cot` {"semantic", "temporal", "aesthetic", "spatial"}, `cot_monolithic`, `scene` (dict). Any other
key (`sample_rate`, `fps`, ...) is kept in `ManifestRow.extra` and written back unchanged.

CSV manifests use the same column names, with the CoT flattened to `cot_semantic`, `cot_temporal`,
`cot_aesthetic`, `cot_spatial`; empty cells mean "absent"; `scene` may hold a JSON object.

Readers never raise on a bad row: they return `(rows, problems)`, where each problem is one
sentence naming the file and line ("missing id", "bad JSON", "duplicate id", ...), so a caller can
report them and go on with the good rows. Only an unreadable manifest file raises `PrismAudioError`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PrismAudioError
from ..io.files import atomic_path, check_input_file

PathLike = str | os.PathLike

COT_KEYS = ("semantic", "temporal", "aesthetic", "spatial")  # the paper's order
SPLITS = ("train", "val", "test")
_KNOWN = ("id", "video", "audio", "caption", "cot", "cot_monolithic", "split", "subset", "duration", "scene")


@dataclass
class ManifestRow:
    """One clip. `video` / `audio` are resolved paths (relative entries joined to the manifest folder)."""

    id: str
    video: Path
    audio: Path | None = None
    caption: str = ""
    cot: dict[str, str] | None = None
    cot_monolithic: str | None = None
    split: str | None = None
    subset: str | None = None
    duration: float | None = None
    scene: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, base: PathLike | None = None) -> dict[str, Any]:
        """JSON-able dict in the manifest schema; paths relative to `base` when they lie under it."""
        out: dict[str, Any] = {"id": self.id, "video": _rel(self.video, base)}
        out["audio"] = _rel(self.audio, base) if self.audio is not None else None
        out.update(split=self.split, subset=self.subset, duration=self.duration, caption=self.caption)
        out.update(cot=self.cot, cot_monolithic=self.cot_monolithic, scene=self.scene)
        for k, v in self.extra.items():
            out.setdefault(k, v)
        return out


def _rel(p: Path, base: PathLike | None) -> str:
    if base is None:
        return str(p)
    try:
        return Path(os.path.relpath(Path(p).absolute(), Path(base).absolute())).as_posix()
    except ValueError:  # another drive on Windows
        return str(p)


# ------------------------------------------------------------------------------ row parsing
class _RowError(Exception):
    pass


def _opt_str(d: dict[str, Any], key: str) -> str | None:
    v = d.get(key)
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    if not isinstance(v, (str, int, float)) or isinstance(v, bool):
        raise _RowError(f"'{key}' must be a string, got {type(v).__name__}")
    return str(v)


def check_id(clip_id: Any) -> str:
    """A clip id usable as a file name (`<id>.safetensors`), or `_RowError`."""
    if clip_id is None or (isinstance(clip_id, str) and not clip_id.strip()):
        raise _RowError("missing id")
    if isinstance(clip_id, bool) or not isinstance(clip_id, (str, int)):
        raise _RowError(f"id must be a string, got {type(clip_id).__name__}")
    s = str(clip_id).strip()
    if "/" in s or "\\" in s or s.startswith(".") or "\x00" in s:
        raise _RowError(f"id {s!r} cannot be used as a file name (no '/', '\\' or leading '.')")
    return s


def _path(value: str, base: Path) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _parse_cot(d: dict[str, Any]) -> dict[str, str] | None:
    cot = d.get("cot")
    if cot is None:  # flat CSV-style columns
        flat = {k: _opt_str(d, f"cot_{k}") for k in COT_KEYS}
        cot = {k: v for k, v in flat.items() if v is not None}
        return cot or None
    if isinstance(cot, str):  # a JSON object in a CSV cell
        try:
            cot = json.loads(cot) if cot.strip() else None
        except ValueError:
            raise _RowError("'cot' is not a JSON object") from None
        if cot is None:
            return None
    if not isinstance(cot, dict):
        raise _RowError(f"'cot' must be an object with {', '.join(COT_KEYS)}, got {type(cot).__name__}")
    out = {}
    for k in COT_KEYS:
        v = _opt_str(cot, k)
        if v is not None:
            out[k] = v
    return out or None


def row_from_dict(d: dict[str, Any], base: PathLike) -> ManifestRow:
    """Build a row from one manifest object; raises `_RowError` (one sentence) when it is unusable."""
    if not isinstance(d, dict):
        raise _RowError(f"expected a JSON object, got {type(d).__name__}")
    base = Path(base)
    clip_id = check_id(d.get("id"))
    video = _opt_str(d, "video")
    if video is None:
        raise _RowError(f"clip {clip_id!r}: missing video path")
    audio = _opt_str(d, "audio")
    split = _opt_str(d, "split")
    if split is not None and split not in SPLITS:
        raise _RowError(f"clip {clip_id!r}: split must be one of {', '.join(SPLITS)}, got {split!r}")
    duration = d.get("duration")
    if duration in (None, ""):
        duration = None
    else:
        try:
            duration = float(duration)
        except (TypeError, ValueError):
            raise _RowError(f"clip {clip_id!r}: duration must be a number, got {duration!r}") from None
        if not (duration > 0 and math.isfinite(duration)):
            raise _RowError(f"clip {clip_id!r}: duration must be > 0 s, got {duration!r}")
    scene = d.get("scene")
    if isinstance(scene, str):
        try:
            scene = json.loads(scene) if scene.strip() else None
        except ValueError:
            raise _RowError(f"clip {clip_id!r}: 'scene' is not a JSON object") from None
    if scene is not None and not isinstance(scene, dict):
        raise _RowError(f"clip {clip_id!r}: 'scene' must be an object, got {type(scene).__name__}")
    try:
        cot = _parse_cot(d)
        caption = _opt_str(d, "caption") or ""
        cot_mono = _opt_str(d, "cot_monolithic")
        subset = _opt_str(d, "subset")
    except _RowError as e:
        raise _RowError(f"clip {clip_id!r}: {e}") from None
    flat_cot = {f"cot_{k}" for k in COT_KEYS}
    extra = {k: v for k, v in d.items() if k not in _KNOWN and k not in flat_cot}
    return ManifestRow(
        id=clip_id, video=_path(video, base), audio=_path(audio, base) if audio else None, caption=caption,
        cot=cot, cot_monolithic=cot_mono, split=split, subset=subset, duration=duration, scene=scene, extra=extra,
    )


# --------------------------------------------------------------------------------- readers
def _read_text(path: PathLike) -> tuple[Path, str]:
    p = check_input_file(path, "manifest")
    try:
        return p, p.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise PrismAudioError(f"cannot read manifest {p}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise PrismAudioError(f"manifest {p} is not valid UTF-8 text") from None


def _collect(items: Iterable[tuple[int, Any]], p: Path, base: Path, problems: list[str]) -> list[ManifestRow]:
    """Parse (line number, dict) pairs; bad rows and duplicate ids become problems."""
    rows: list[ManifestRow] = []
    seen: dict[str, int] = {}
    for line, d in items:
        try:
            row = row_from_dict(d, base)
        except _RowError as e:
            problems.append(f"{p}:{line}: {e}")
            continue
        if row.id in seen:
            problems.append(f"{p}:{line}: duplicate id {row.id!r} (first on line {seen[row.id]}); row skipped")
            continue
        seen[row.id] = line
        rows.append(row)
    return rows


def _jsonl_items(p: Path, text: str, problems: list[str]) -> list[tuple[int, Any]]:
    items = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            items.append((i, json.loads(line)))
        except ValueError as e:
            problems.append(f"{p}:{i}: bad JSON line ({e})")
    return items


def _csv_items(p: Path, text: str, problems: list[str]) -> list[tuple[int, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        return []
    reader.fieldnames = [(f or "").strip() for f in reader.fieldnames]
    items = []
    for d in reader:
        line = reader.line_num
        if None in d:  # more cells than header columns
            problems.append(f"{p}:{line}: {len(d[None])} more cell(s) than header columns")
            continue
        d = {k: v.strip() for k, v in d.items() if k and isinstance(v, str) and v.strip()}  # empty = absent
        if not d:
            continue
        items.append((line, d))
    return items


def read_manifest(path: PathLike) -> tuple[list[ManifestRow], list[str]]:
    """Read a JSONL (`.jsonl`, `.json` holding a list also works) or CSV (`.csv`) manifest.

    Returns (good rows in file order, problems). Paths are resolved relative to the manifest's folder.
    """
    p, text = _read_text(path)
    problems: list[str] = []
    if p.suffix.lower() == ".csv":
        items = _csv_items(p, text, problems)
    elif p.suffix.lower() == ".json" and text.lstrip().startswith("["):
        items = _json_list_items(p, text)
    else:
        items = _jsonl_items(p, text, problems)
    return _collect(items, p, p.parent, problems), problems


def _json_list_items(p: Path, text: str) -> list[tuple[int, Any]]:
    try:
        data = json.loads(text)
    except ValueError as e:
        raise PrismAudioError(f"manifest {p} is not valid JSON: {e}") from None
    if not isinstance(data, list):
        raise PrismAudioError(f"manifest {p} must hold a JSON list of objects")
    return [(i, d) for i, d in enumerate(data, 1)]  # "line" = 1-based item index


def vggsound_id(youtube_id: str, start_seconds: int) -> str:
    """The VGGSound clip id / file stem: `<ytid>_<start:06d>`."""
    return f"{youtube_id}_{int(start_seconds):06d}"


def read_vggsound_list(
    path: PathLike, video_dir: PathLike, audio_dir: PathLike | None = None,
    video_ext: str = ".mp4", audio_ext: str = ".wav",
) -> tuple[list[ManifestRow], list[str]]:
    """Read the VGGSound list (`vggsound.csv`: `youtube_id,start_seconds,label,split`, no header).

    Each clip becomes id `<ytid>_<start:06d>`, video `<video_dir>/<id><video_ext>`, audio
    `<audio_dir>/<id><audio_ext>` (None without `audio_dir`: the video's own track is used), caption
    = the label, duration 10 s. A header line and `#` comments are skipped; relative dirs are taken
    relative to the list's folder. Files are not checked here (extraction reports missing ones).
    """
    p, text = _read_text(path)
    vdir = _path(str(video_dir), p.parent)
    adir = _path(str(audio_dir), p.parent) if audio_dir is not None else None
    problems: list[str] = []
    items = []
    for i, cells in enumerate(csv.reader(io.StringIO(text, newline="")), 1):
        cells = [c.strip() for c in cells]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if len(cells) < 2:
            problems.append(f"{p}:{i}: expected 'youtube_id,start_seconds,label,split', got {len(cells)} cell(s)")
            continue
        try:
            start = float(cells[1])
        except ValueError:
            if i == 1:
                continue  # a header line
            problems.append(f"{p}:{i}: start_seconds must be a number, got {cells[1]!r}")
            continue
        if start < 0 or start != int(start):
            problems.append(f"{p}:{i}: start_seconds must be a whole number >= 0, got {cells[1]!r}")
            continue
        if not cells[0]:
            problems.append(f"{p}:{i}: missing id")
            continue
        cid = vggsound_id(cells[0], int(start))
        split = cells[3] if len(cells) > 3 and cells[3] else None
        split = {"validation": "val"}.get(split, split)
        d = {
            "id": cid, "video": str(vdir / f"{cid}{video_ext}"),
            "audio": str(adir / f"{cid}{audio_ext}") if adir is not None else None,
            "caption": cells[2] if len(cells) > 2 else "", "split": split, "duration": 10.0,
            "youtube_id": cells[0], "start_seconds": int(start),
        }
        items.append((i, d))
    return _collect(items, p, p.parent, problems), problems


def read_audiocanvas(
    path: PathLike, video_dir: PathLike | None = None, video_ext: str = ".mp4"
) -> tuple[list[ManifestRow], list[str]]:
    """Read an AudioCanvas-style annotation list (ASSUMED format; the release format is not fixed here).

    Accepted: a JSON list of objects, JSONL, or CSV, each record holding
    * `id` (or `video_id` / `name`),
    * `caption` (or `text`),
    * the CoT as a `cot` object, as top-level `semantic` / `temporal` / `aesthetic` / `spatial`
      keys, or as `cot_semantic`... columns; an optional monolithic `cot_monolithic` (or `cot_text`),
    * optional `video` path (relative to the list's folder); without it the video is
      `<video_dir>/<id><video_ext>`, and `video_dir` is then required,
    * optional `audio`, `split`, `subset`, `duration`; other keys go to `extra`.
    """
    p, text = _read_text(path)
    problems: list[str] = []
    if p.suffix.lower() == ".csv":
        raw = _csv_items(p, text, problems)
    elif text.lstrip().startswith("["):
        raw = _json_list_items(p, text)
    else:
        raw = _jsonl_items(p, text, problems)
    vdir = _path(str(video_dir), p.parent) if video_dir is not None else None
    items = []
    for line, d in raw:
        if not isinstance(d, dict):
            items.append((line, d))  # reported by _collect
            continue
        d = dict(d)
        for alias in ("video_id", "name"):
            if d.get("id") in (None, "") and d.get(alias) not in (None, ""):
                d["id"] = d.pop(alias)
        if d.get("caption") in (None, "") and "text" in d:
            d["caption"] = d.pop("text")
        if d.get("cot_monolithic") in (None, "") and "cot_text" in d:
            d["cot_monolithic"] = d.pop("cot_text")
        if d.get("cot") is None and any(k in d for k in COT_KEYS):
            d["cot"] = {k: d.pop(k) for k in COT_KEYS if k in d}
        if d.get("video") in (None, "") and d.get("id") not in (None, ""):
            if vdir is None:
                problems.append(f"{p}:{line}: no video path and no video_dir given")
                continue
            d["video"] = str(vdir / f"{d['id']}{video_ext}")
        items.append((line, d))
    return _collect(items, p, p.parent, problems), problems


# --------------------------------------------------------------------------------- writer
def write_manifest(path: PathLike, rows: Iterable[ManifestRow]) -> None:
    """Write rows as JSONL (or CSV for a `.csv` path) atomically; paths relative to the file's folder."""
    out = Path(path)
    base = out.parent
    dicts = [r.to_dict(base) for r in rows]
    if out.suffix.lower() == ".csv":
        text = _to_csv(dicts)
    else:
        text = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in dicts)
    try:
        with atomic_path(out) as tmp:
            Path(tmp).write_text(text, encoding="utf-8")
    except OSError as e:
        raise PrismAudioError(f"cannot write manifest {out}: {e.strerror or e}") from None


def _to_csv(dicts: list[dict[str, Any]]) -> str:
    flat = []
    for d in dicts:
        d = dict(d)
        cot = d.pop("cot") or {}
        for k in COT_KEYS:
            d[f"cot_{k}"] = cot.get(k)
        flat.append({k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in d.items()})
    cols: list[str] = []
    for d in flat:
        cols += [k for k in d if k not in cols]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for d in flat:
        w.writerow({k: ("" if v is None else v) for k, v in d.items()})
    return buf.getvalue()
