"""How every ``sassl`` argument parser behaves.

* Bad arguments are one line, ``error: <message>``, and exit status 2 (argparse's own usage
  block is left out: ``--help`` shows it).
* ``--help`` shows each option's default and, for an option naming a component (``--task``,
  ``--ssl``, ...), the names registered by the installed plugins. Those are looked up only
  when that help is printed: loading the plugins imports torch, which ``sassl --help`` must not.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
from typing import Any, NoReturn

from sassl_core.config import DEVICE_PATTERN

#: ``Action`` attribute naming the registry whose names an option's help lists.
REGISTRY_ATTR = "sassl_registry"


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` with one-line errors whose sub-command parsers are alike."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {' '.join(message.split())}\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Epilogs kept as written; defaults and registered names appended to each option's help."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        if text is None or text == argparse.SUPPRESS:
            return text
        kind = getattr(action, REGISTRY_ATTR, None)
        if kind is not None:
            text += f"; installed: {_escape(', '.join(registered_names(kind)) or '(none)')}"
        if action.default not in (None, False, [], argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _escape(text: str) -> str:
    return text.replace("%", "%%")


def registered_names(kind: str) -> list[str]:
    """The names of ``kind`` the installed plugins register (loads the plugins)."""
    from sassl_core.plugins import default_plugins

    return default_plugins()[kind].names()


def listing(action: argparse.Action, kind: str) -> argparse.Action:
    """Make ``action``'s help list the names registered for ``kind``."""
    setattr(action, REGISTRY_ATTR, kind)
    return action


def device(text: str) -> str:
    """``--device``: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (availability is checked
    when the run starts, :func:`sassl_core.train.runtime.pick_device`)."""
    if not DEVICE_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, found {text!r}")
    return text


def positive(text: str) -> float:
    """A number > 0 (a resolution, a magnification)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, found {text!r}")
    return value


def magnification(text: str) -> float:
    """An objective magnification such as ``20x`` or ``40`` (> 0)."""
    number = text[:-1] if text.lower().endswith("x") else text
    try:
        return positive(number)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a magnification such as 10x, 20x or 40x, found {text!r}") from None


class VersionAction(argparse.Action):
    """``--version``: ``sassl <version>`` from the installed package's metadata."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        kwargs.setdefault("help", "print the version and exit")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> NoReturn:
        print(f"sassl {importlib.metadata.version('sassl')}")
        parser.exit(0)


def dest_of(flags: tuple[str, ...]) -> str:
    """The destination argparse derives from an option's flags (``--data-root`` → ``data_root``)."""
    long = next((f for f in flags if f.startswith("--")), flags[0])
    return re.sub(r"^-+", "", long).replace("-", "_")
