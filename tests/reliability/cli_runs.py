"""Running the real ``sassl`` command line in this process, and checking its error contract."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

from sassl_core.cli import main


@dataclass
class CliResult:
    status: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("error:")]


def cli(*args) -> CliResult:
    """``sassl *args`` through :func:`sassl_core.cli.main`; an unexpected exception propagates
    (a traceback the user would have seen fails the test)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([str(a) for a in args])
    return CliResult(status, out.getvalue(), err.getvalue())


def assert_user_error(result: CliResult, *fragments: str) -> str:
    """Exit status 2, exactly one ``error:`` line, last on stderr, holding every fragment."""
    assert result.status == 2, (result.status, result.err[-2000:])
    assert "Traceback" not in result.err
    [line] = result.error_lines
    assert result.err.strip().splitlines()[-1] == line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line
