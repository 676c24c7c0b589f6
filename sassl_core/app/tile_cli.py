"""``sassl tile``: slides to a patch index (``patches.csv``), tissue masks and ``summary.json``.

The target resolution is ``--mpp`` (µm/px) or ``--magnification`` (``20x`` ≙ 0.5 µm/px:
mpp = 10 / magnification); ``--fallback-mpp`` is assumed for slides that carry no resolution.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

from sassl_core.app.parsing import magnification, positive

DEFAULT_MPP = 0.5


def fraction(text: str) -> float:
    """A number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, found {text!r}")
    return value


def whole(minimum: int) -> Callable[[str], int]:
    """A whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, found {text!r}")
        return value

    return parse


def add_tile_parser(sub) -> None:
    p = sub.add_parser(
        "tile",
        help="tile slides into a patch index with tissue masks",
        description="Tile slides (files or folders of them) into tissue patches at a target resolution.",
        epilog="example:\n  sassl tile slides/ --out tiles --magnification 20x --max-per-slide 0 --workers 4",
    )
    p.add_argument("slides", nargs="+", type=Path, metavar="SLIDE_OR_DIR")
    p.add_argument("--out", type=Path, required=True, help="output folder (patches.csv, summary.json, masks/)")
    p.add_argument("--patch-size", type=whole(1), default=224, help="patch side in pixels")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--mpp", type=positive, help=f"target µm per pixel of the patches (default: {DEFAULT_MPP})")
    target.add_argument(
        "--magnification", type=magnification, metavar="MAGx", help="target magnification (20x = 0.5 µm/px)"
    )
    p.add_argument("--fallback-mpp", type=positive, help="µm/px to assume for slides that carry no resolution")
    p.add_argument("--max-per-slide", type=whole(0), default=100, help="patches kept per slide, 0 for all")
    p.add_argument("--tissue-threshold", type=fraction, default=0.5, help="least tissue fraction of a kept patch")
    p.add_argument("--overlap", type=whole(0), default=0, help="pixels shared by neighbouring patches")
    p.add_argument(
        "--save-tiles", action="store_true", help="also write each kept patch as tiles/<slide>/<x>_<y>.png (or .jpg)"
    )
    p.add_argument("--tile-format", choices=("png", "jpg"), default="png", help="file type of --save-tiles' tiles")
    p.add_argument("--workers", type=whole(1), help="slides tiled in parallel (default: the number of cores)")
    p.add_argument("--strict", action="store_true", help="a bad slide is fatal instead of skipped")
    p.add_argument("--overwrite", action="store_true", help="replace a tiling already in --out")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-slide sample")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def cmd_tile(args: argparse.Namespace) -> int:
    from sassl_core.wsi.reader import magnification_mpp
    from sassl_core.wsi.tiling import TileOptions, TilingInterrupted, tile_to_folder

    options = TileOptions(
        patch_size=args.patch_size,
        target_mpp=args.mpp or (magnification_mpp(args.magnification) if args.magnification else DEFAULT_MPP),
        magnification=args.magnification,
        fallback_mpp=args.fallback_mpp,
        max_per_slide=args.max_per_slide,
        tissue_threshold=args.tissue_threshold,
        overlap=args.overlap,
        seed=args.seed,
        save_tiles=args.save_tiles,
        tile_format=args.tile_format,
    )
    workers = args.workers or len(os.sched_getaffinity(0))
    progress, close = _progress(args.quiet)
    try:
        summary = tile_to_folder(
            args.slides, args.out, options, workers, strict=args.strict, overwrite=args.overwrite, progress=progress
        )
    except TilingInterrupted as err:
        close()
        print(str(err), file=sys.stderr)
        return 128 + err.signum
    finally:
        close()
    if not args.quiet:
        print(f"tiled {summary['slides']} slide(s), {summary['patches']} tissue patches → {args.out}")
        for item in summary["skipped"]:
            print(f"skipped {item['file']}: {item['reason']}", file=sys.stderr)
    return 0


def _progress(quiet: bool) -> tuple[Callable[[int, int, str], None] | None, Callable[[], None]]:
    """A progress callback for :func:`tile_to_folder` and its closer: a tqdm bar (slides/s, ETA)
    on a terminal, a plain line per slide otherwise, nothing when ``quiet``."""
    if quiet:
        return None, lambda: None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bars: list[tqdm] = []  # made at the first slide, when the total is known

        def tick(done: int, total: int, file: str) -> None:
            if not bars:
                bars.append(tqdm(total=total, unit="slide", file=sys.stderr))
            bars[0].set_postfix_str(Path(file).name, refresh=False)
            bars[0].update(done - bars[0].n)

        def close() -> None:
            for bar in bars:
                bar.close()

        return tick, close

    def line(done: int, total: int, file: str) -> None:
        print(f"[{done}/{total}] {file}", file=sys.stderr, flush=True)

    return line, lambda: None
