"""Atomic file writes: every file sassl writes (checkpoints, run-folder files, reports, plots,
heatmaps, patch indexes, tiling outputs) goes through :func:`atomic_write`.

Writes go to a temporary file in the same folder, are flushed and fsynced, then renamed over
the target, so a kill at any moment leaves the previous file intact, and a symbolic link at the
target is replaced, not followed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


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
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with :func:`atomic_write`."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def remove_stale_temporaries(path: Path) -> None:
    """Delete the temporary files that writes of ``path`` cut short by SIGKILL left behind."""
    for stale in Path(path).parent.glob(f".{Path(path).name}.tmp*"):
        stale.unlink(missing_ok=True)
