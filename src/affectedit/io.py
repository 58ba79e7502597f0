"""Crash-safe, verified file writing: write to a temporary file beside the target, check that it is
complete, flush it to the disk, then rename it over the target.

A nearly full disk does not always raise: a C writer (Pillow's JPEG encoder, for one) ignores a short
``write()`` and leaves a truncated file behind without an error. So nothing is renamed over a target
until (1) the temporary file is non-empty, has the size its writer claims (``size``) and passes the
writer's decode check (``check``), and (2) ``os.fsync`` has flushed it. Any failure removes the
temporary file, leaves the old target untouched and is one ``UserError`` line (the CLI's status 2).

``atomic_path`` is the context manager every writer goes through; ``write_bytes`` and ``write_text``
write data that is already in memory, with a loop that notices short writes.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from affectedit.errors import UserError

__all__ = ["WriteError", "atomic_path", "free_space", "write_bytes", "write_failure", "write_text"]

_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class WriteError(UserError):
    """An output could not be written completely; the previous file (if any) is untouched."""


def free_space(folder: str | os.PathLike) -> int | None:
    """Bytes free for this user on the file system holding ``folder`` (None when unknown)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _human(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def write_failure(path: str | os.PathLike, why: str, error: BaseException | None = None) -> WriteError:
    """The one-line message for an output that could not be written (a full disk when ``error`` says so)."""
    path = Path(path)
    if isinstance(error, OSError) and error.errno in _FULL:
        return WriteError(f"disk full while writing {path}; free some space and retry (the old file is untouched)")
    free = free_space(path.parent if str(path.parent) else ".")
    return WriteError(f"could not write {path} completely ({why}; {_human(free)} free on its disk); "
                      "free some space and retry (the old file is untouched)")


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(fd: int, data) -> int:
    """One ``os.write`` (a seam for tests that simulate a full disk)."""
    return os.write(fd, data)


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd``: a short write is retried, and a write that makes no
    progress is a full disk (ENOSPC), never a silently shorter file."""
    view = memoryview(data)
    while len(view):
        n = _write(fd, view[: 1 << 24])
        if n is None or n <= 0:
            raise OSError(errno.ENOSPC, "No space left on device (short write)")
        view = view[n:]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, force: bool = True, *, size: int | None = None,
                check: Callable[[Path], object] | None = None):
    """Yield a temporary path in the target's folder; when the body succeeds, verify it and rename
    it to ``path``.

    Verification, before the rename: the file exists and is not empty; it holds exactly ``size``
    bytes when that is given; ``check(tmp)`` (a decode check: raise if the file is not what was
    meant) passes; and it is flushed to the disk (fsync; the folder is fsynced after the rename).
    If the body raises or a check fails, the temporary file is removed and ``path`` is untouched:
    an OSError of a full disk, a failed check or a short file becomes one WriteError line.
    With ``force=False`` an existing ``path`` is an error (nothing the user made is overwritten).
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a file name as the output")
    if not force and path.exists():
        raise UserError(f"{path} already exists; pass --force to overwrite it")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.exists():
        raise UserError(f"output folder {folder} does not exist; create it first")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=folder)
    except PermissionError:
        raise UserError(f"cannot write to {folder}: permission denied; choose another output path") from None
    except OSError as e:  # read-only file system, /proc, a file where a folder should be, a full disk ...
        if e.errno in _FULL:
            raise write_failure(path, "no room for a new file", e) from None
        raise UserError(f"cannot write to {folder}: {e.strerror or type(e).__name__}; choose another output path") from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        _verify(tmp, path, size, check)
        # mkstemp makes the file private (0600); give it the mode a plain open() would have
        # (or the mode of the file it replaces), so outputs open in other programs as usual.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, (path.stat().st_mode & 0o777) if path.exists() else (0o666 & ~umask))
        os.replace(tmp, path)
    except WriteError:
        _remove(tmp)
        raise
    except OSError as e:
        _remove(tmp)
        if e.errno in _FULL:
            raise write_failure(path, "disk full", e) from None
        if e.errno == errno.EIO:
            raise write_failure(path, "input/output error", e) from None
        raise
    except BaseException:
        _remove(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself reaches the disk (not possible everywhere)
        _fsync(folder, directory=True)


def _remove(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def _verify(tmp: Path, path: Path, size: int | None, check) -> None:
    try:
        actual = tmp.stat().st_size
    except FileNotFoundError:
        raise write_failure(path, "nothing was written") from None
    if actual == 0:
        raise write_failure(path, "the file came out empty")
    if size is not None and actual != size:
        raise write_failure(path, f"{actual} of {size} bytes reached the disk")
    if check is not None:
        try:
            check(tmp)
        except UserError as e:
            raise write_failure(path, f"the written file does not read back: {e}") from None
        except Exception as e:  # noqa: BLE001 - any decoder error means the file is not what was written
            raise write_failure(path, f"the written file does not read back: {type(e).__name__}") from None
    _fsync(tmp)


def write_bytes(path: str | os.PathLike, data: bytes, force: bool = True,
                check: Callable[[Path], object] | None = None) -> Path:
    """Write ``data`` to ``path`` atomically and verified (every byte written, the size on disk,
    ``check``, fsync; see ``atomic_path``). Returns the path."""
    path = Path(path)
    data = bytes(data)
    with atomic_path(path, force, size=len(data), check=check) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
    return path


def write_text(path: str | os.PathLike, text: str, force: bool = True,
               check: Callable[[Path], object] | None = None) -> Path:
    """``write_bytes`` of ``text`` in UTF-8; by default checked to read back as the same text."""
    data = text.encode("utf-8")
    if check is None:
        def check(tmp: Path) -> None:
            if tmp.read_bytes() != data:
                raise ValueError("content differs")
    return write_bytes(path, data, force, check)
