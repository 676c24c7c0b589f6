"""``RUN/run.log``: what a stage printed to the console, also kept in its run folder.

From the moment a stage starts, everything written to stdout and stderr is also kept; once the
stage holds its run folder, the log is appended to ``run.log`` (a header first: the process's
command line, sassl, torch and timm versions, python, the git revision of sassl's source when it is a
checkout, the device), and every later line follows it there. The log is opened for appending
only, never through a link. Progress-bar redraws (lines ending in a carriage return) stay on
the terminal. The command line keeps its own lines too (plugin warnings before the stage, the
closing ``done:`` or metrics line after it) by opening the log around the whole command: the
stage then shares that log instead of opening its own.
"""

from __future__ import annotations

import io
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from sassl_core import __version__
from sassl_core.errors import SasslError, UserError

LOG = "run.log"


def _version(module: str) -> str:
    try:
        return str(__import__(module).__version__)
    except ImportError:
        return "not installed"


def _git_revision() -> str | None:
    source = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    revision = done.stdout.strip()
    return revision if done.returncode == 0 and revision else None


def header(device: str) -> str:
    """The lines that open each stage's part of the log."""
    revision = _git_revision()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return (
        f"=== {started} {shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])}\n"
        f"sassl {__version__}{f' (git {revision})' if revision else ''}, torch {_version('torch')}, "
        f"timm {_version('timm')}, python {platform.python_version()}, device {device}\n"
    )


class _Tee(io.TextIOBase):
    """A console stream whose writes are also kept for the log."""

    def __init__(self, console, log: RunLog) -> None:
        self.console, self.log = console, log

    def write(self, text: str) -> int:
        self.console.write(text)
        self.log.add(text)
        return len(text)

    def flush(self) -> None:
        self.console.flush()

    def isatty(self) -> bool:
        return self.console.isatty()

    @property
    def encoding(self):  # type: ignore[override]
        return getattr(self.console, "encoding", "utf-8")


class RunLog:
    """The console output of one stage: kept in memory until :meth:`attach`, then appended to the file."""

    def __init__(self) -> None:
        self.pending: list[str] = []
        self.fd: int | None = None

    def add(self, text: str) -> None:
        if "\r" in text:  # a progress bar redrawing itself
            return
        if self.fd is None:
            self.pending.append(text)
        else:
            os.write(self.fd, text.encode("utf-8", "replace"))

    def attach(self, run_dir: Path, device: str) -> None:
        """Append the header and what was printed so far to ``run_dir/run.log``, and the rest as it comes."""
        path = Path(run_dir) / LOG
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            self.fd = os.open(path, flags, 0o644)
        except OSError as err:
            raise UserError(f"{path}: cannot append to the run log ({err.strerror}); expected a regular file") from None
        os.write(self.fd, (header(device) + "".join(self.pending)).encode("utf-8", "replace"))
        self.pending.clear()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@contextmanager
def console_log() -> Iterator[RunLog]:
    """Keep what is printed to stdout and stderr inside the ``with`` block (the exception that
    ends it too, as the CLI prints it: ``error: ...``). Inside another such block, that block's
    log, which goes on keeping what is printed until that block ends."""
    if isinstance(sys.stdout, _Tee):
        yield sys.stdout.log
        return
    log = RunLog()
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(out, log), _Tee(err, log)
    try:
        yield log
    except SasslError as error:  # printed by the CLI as it ends
        log.add(f"error: {error}\n")
        raise
    finally:
        sys.stdout, sys.stderr = out, err
        log.close()
