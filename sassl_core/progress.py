"""Progress of long work that is not a training step (extracting patches into the cache): a
tqdm bar when stderr is a terminal, else a plain line at every tenth of the work, so that a log
file shows the work advancing without the bar's carriage returns."""

from __future__ import annotations

import sys
from collections.abc import Callable


def progress_reporter(label: str) -> Callable[[int, int], None]:
    """``report(done, total)``, called as the work advances; the last call closes the bar."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = None

        def report_bar(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                bar = tqdm(total=total, desc=label, unit="patch", file=sys.stderr)
            bar.update(done - bar.n)
            if done >= total:
                bar.close()

        return report_bar
    shown = -1

    def report_lines(done: int, total: int) -> None:
        nonlocal shown
        tenth = done * 10 // max(1, total)
        if tenth > shown:
            shown = tenth
            print(f"{label}: {done}/{total}", file=sys.stderr, flush=True)

    return report_lines
