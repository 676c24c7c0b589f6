"""The output folder a command is given: refused before any work when it cannot be one."""

from __future__ import annotations

import os
from pathlib import Path

from sassl_core.errors import UserError


def check_out_dir(path: Path, field: str) -> None:
    """Raise a :class:`UserError` naming ``field`` when ``path`` is a file, lies under a file, or
    cannot be created or written for lack of permission, or when the system refuses its name."""
    path = Path(path)
    try:
        _check(path, field)
    except OSError as err:  # a name too long for the file system, a loop of links, ...
        raise UserError(f"{field}: {path}: expected a usable folder path, found {err.strerror or err}") from None


def _check(path: Path, field: str) -> None:
    if path.is_file() or (path.exists() and not path.is_dir()):
        raise UserError(f"{field}: {path} is a file; expected a folder")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{field}: {path} lies under the file {existing}; expected a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == path else f"cannot be created: {existing} is not writable"
        raise UserError(f"{field}: {path} {what}; expected a folder sassl may write")
