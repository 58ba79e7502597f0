"""Crash-safe file writing: write to a temporary file beside the target, then rename over it."""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from affectedit.errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, force: bool = True):
    """Yield a temporary path in the target's folder; on success rename it to ``path``.

    If the body raises, the temporary file is removed and ``path`` is untouched. With
    ``force=False`` an existing ``path`` is an error (nothing the user made is overwritten).
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
    except OSError as e:  # read-only file system, /proc, a file where a folder should be, ...
        raise UserError(f"cannot write to {folder}: {e.strerror or type(e).__name__}; choose another output path") from None
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file private (0600); give it the mode a plain open() would have
        # (or the mode of the file it replaces), so outputs open in other programs as usual.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, (path.stat().st_mode & 0o777) if path.exists() else (0o666 & ~umask))
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"disk full while writing {path}; free some space and retry (the old file is untouched)") from None
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
