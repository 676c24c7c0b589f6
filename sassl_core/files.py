"""Atomic file writes: every file sassl writes (checkpoints, run-folder files, reports, plots,
heatmaps, patch indexes, tiling outputs) goes through :func:`atomic_write`.

Writes go to a temporary file in the same folder, are flushed and fsynced, then renamed over
the target, so a kill at any moment leaves the previous file intact, and a symbolic link at the
target is replaced, not followed. A full disk is a :class:`UserError` naming the file; the
partial file is removed. A written file gets the mode any new file gets (``0666`` less the umask,
so ``0644`` by default), whatever mode the writing library gave its own file.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

from sassl_core.errors import UserError


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` over ``path``.

    The rename replaces ``path`` itself: where ``path`` is a symbolic link, the link is replaced,
    and the file it points to is never written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)  # a link planted under the temporary name is not followed either
    try:
        mode = _new_file_mode(tmp)
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(fd, mode)  # the writer may have made its own file (safetensors: 0600)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        # the partial file goes (below); the files written before it stay complete
        raise UserError(f"{path}: expected free disk space to write it, found the disk full") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def _new_file_mode(tmp: Path) -> int:
    """Create ``tmp`` afresh (never through a link) and return the mode a new file gets here:
    ``0666`` less the process umask, read from the kernel rather than by changing the umask."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    try:
        return os.fstat(fd).st_mode & 0o777
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with :func:`atomic_write`."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def remove_stale_temporaries(path: Path) -> None:
    """Delete the temporary files that writes of ``path`` cut short by SIGKILL left behind."""
    for stale in Path(path).parent.glob(f".{Path(path).name}.tmp*"):
        stale.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (another user's counts): the owner of a temporary
    ``<name>.tmp-<pid>`` or staging folder, which is left alone while it lives."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
