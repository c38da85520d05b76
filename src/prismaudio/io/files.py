"""File checks shared by every reader and writer: clear input errors, atomic outputs."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import PrismAudioError


def check_input_file(path: str | os.PathLike, kind: str) -> Path:
    """The path of an existing, non-empty regular file, or one clear `PrismAudioError`."""
    p = Path(path)
    if not p.exists():
        raise PrismAudioError(f"{kind} file not found: {p}")
    if p.is_dir():
        raise PrismAudioError(f"{kind} path is a directory, not a file: {p}")
    if p.stat().st_size == 0:
        raise PrismAudioError(f"{kind} file is empty (0 bytes): {p}")
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, else delete it.

    The temp name keeps the suffix so format sniffing by extension still works; the final file
    gets the usual permissions (0666 & ~umask), not mkstemp's 0600.
    """
    out = Path(path)
    if out.is_dir():
        raise PrismAudioError(f"output path is a directory: {out}")
    if not out.parent.is_dir():
        raise PrismAudioError(f"output directory does not exist: {out.parent}")
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}.", suffix=f".part{out.suffix}")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
