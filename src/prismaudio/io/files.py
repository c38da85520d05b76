"""File checks shared by every reader and writer: clear input errors, atomic outputs."""

from __future__ import annotations

import os
import re
import shutil
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
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}.{os.getpid()}.", suffix=f".part{out.suffix}")
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


# ----------------------------------------------------------------------------- output checks
def os_error_line(e: OSError) -> str:
    """An OSError as one sentence: why, and on which path (no errno noise)."""
    why = e.strerror or str(e) or type(e).__name__
    return f"{why}: {e.filename}" if e.filename is not None else why


def _existing_ancestor(p: Path) -> Path:
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """A directory the process can create (or fill): fail before any work, not after it.

    The nearest existing ancestor must be a directory we can create a file in (probed with a
    temporary file, so a read-only mount fails here even for root); an existing non-directory
    (a file where the folder should be) is refused. Nothing is created.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise PrismAudioError(f"{what} {out} exists and is not a directory")
    base = _existing_ancestor(out)
    if not base.is_dir():
        raise PrismAudioError(f"{what} {out}: {base} is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=base, prefix=".prismaudio-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PrismAudioError(f"{what} {out} is not writable ({base}: {e.strerror or e})") from None
    return out


def check_output_file(path: str | os.PathLike, what: str = "--out") -> Path:
    """A file path we can write atomically (its folder exists and is writable; it is not a folder)."""
    out = Path(path)
    if out.is_dir():
        raise PrismAudioError(f"{what} {out} is a directory, not a file")
    if out.parent.exists() and not out.parent.is_dir():
        raise PrismAudioError(f"{what} {out}: {out.parent} is a file, not a directory")
    if not out.parent.is_dir():
        raise PrismAudioError(f"{what} {out}: directory {out.parent} does not exist")
    check_output_dir(out.parent, what)
    return out


# ------------------------------------------------------------------------------- staging
STAGING_PREFIX = ".prismaudio-staging-"
_PART = re.compile(r"^\..*\.(\d+)\.[A-Za-z0-9_]{8}\.part(\.[^.]*)?$")
_STAGING = re.compile(r"^" + re.escape(STAGING_PREFIX) + r"(\d+)-[A-Za-z0-9_]{8}$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by another user
        return True
    return True


def sweep_stale(folder: str | os.PathLike) -> list[Path]:
    """Remove what a killed writer left in `folder`: staging folders and `.part` temp files whose
    process is gone (their names carry its pid). Returns what was removed; errors are ignored."""
    d = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(d.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _STAGING.match(p.name) or _PART.match(p.name)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        try:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


class Staging:
    """Outputs written in a hidden folder on the destination's own filesystem, then published by
    rename: either every file appears in `out`, or none does (a full disk fails while staging).

    The folder lives in `out` when it exists, else in its nearest existing ancestor; a new `out`
    is the staging folder itself renamed (one atomic step). Created at construction, so an
    unwritable destination fails before any compute; stale folders of killed runs are swept.
    """

    def __init__(self, out: str | os.PathLike, what: str = "--out") -> None:
        self.out = check_output_dir(out, what)
        self.base = self.out if self.out.is_dir() else _existing_ancestor(self.out)
        sweep_stale(self.base)
        try:
            self.dir = Path(tempfile.mkdtemp(dir=self.base, prefix=f"{STAGING_PREFIX}{os.getpid()}-"))
        except OSError as e:
            raise PrismAudioError(f"{what} {self.out} is not writable ({e.strerror or e})") from None

    def path(self, name: str) -> Path:
        return self.dir / name

    def publish(self) -> list[Path]:
        """Move every staged file into `out`; returns their final paths (sorted)."""
        os.chmod(self.dir, 0o777 & ~_umask())
        names = sorted(p.name for p in self.dir.iterdir())
        for p in self.dir.iterdir():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~_umask())
        if not self.out.exists():
            self.out.parent.mkdir(parents=True, exist_ok=True)
            os.rename(self.dir, self.out)
        else:
            old = self.dir / ".replaced"
            for n in names:
                dest = self.out / n
                if dest.is_dir() and not dest.is_symlink():  # a folder output (a model) replaces the old one
                    old.mkdir(exist_ok=True)
                    os.rename(dest, old / n)
                os.replace(self.dir / n, dest)
            shutil.rmtree(self.dir)
        return [self.out / n for n in names]

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.dir.exists():  # failed, or never published: nothing of it may remain
            self.discard()
        return False
