"""Start-up time of the command line: ``sassl --help`` must stay fast (it imports no torch and
loads no plugin), while a command's own ``--help`` loads the plugins to list their names.

    python benchmarks/cli_startup.py [--rounds 7]

Prints the median wall time of each command, run as a fresh interpreter, and its ratio to a bare
interpreter start (``python -c pass``).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "sassl --help": [sys.executable, "-m", "sassl_core.app.cli", "--help"],
    "sassl --version": [sys.executable, "-m", "sassl_core.app.cli", "--version"],
    "sassl pretrain --help": [sys.executable, "-m", "sassl_core.app.cli", "pretrain", "--help"],
}


def median_seconds(command: list[str], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    base = None
    for name, command in COMMANDS.items():
        seconds = median_seconds(command, args.rounds)
        base = base or seconds
        print(f"{name:24s} {seconds:6.3f} s  ({seconds / base:4.1f}x a bare interpreter)")


if __name__ == "__main__":
    main()
