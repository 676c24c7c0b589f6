"""Tiling slides into tissue patches at a target resolution (paper §4.1: 100 tissue patches per
slide after Otsu background removal).

A patch is a square of ``patch_size`` pixels at ``target_mpp`` µm/px. It is read as
``read_size`` pixels from the pyramid level needing the least resampling and resized to
``patch_size`` afterwards (see :func:`sassl_core.wsi.cache.read_patch`).

:func:`tile_to_folder` tiles many slides (in parallel worker processes, one slide each at a
time) into a folder holding ``patches.csv``, ``summary.json`` and per-slide masks.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Generator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

import sassl_core
from sassl_core.errors import SasslError, UserError
from sassl_core.files import atomic_write_text, process_alive
from sassl_core.wsi.patches import PatchTable
from sassl_core.wsi.reader import SlideReader, open_slide
from sassl_core.wsi.tissue import TissueMask, detect_tissue, save_mask, save_overlay

SLIDE_SUFFIXES = {
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif",
    ".png", ".jpg", ".jpeg",
}  # fmt: skip
MPP_TOLERANCE = 1.02  # a level within 2% of the target counts as the target (scanner rounding)
MASK_PX_PER_PATCH = 8  # tissue-mask pixels along a patch side: fractions to 1/64 of a patch
MASK_SIDE = (256, 1024)  # bounds of the mask's longest side (the overlay stays legible)
TILE_FORMATS: dict[str, Callable[[Image.Image, BinaryIO], None]] = {  # --save-tiles encoders
    "png": partial(Image.Image.save, format="PNG", compress_level=1),  # lossless, fast zlib level
    "jpg": partial(Image.Image.save, format="JPEG", quality=90),
}


def choose_level(reader: SlideReader, target_mpp: float, patch_size: int) -> tuple[int, int]:
    """``(level, read_size)``: the coarsest level whose resolution is at least ``target_mpp``
    (so patches are only ever downsampled, by the least factor), and the side to read there.

    A slide coarser than the target at level 0 is read at level 0 and upsampled.
    """
    if target_mpp <= 0 or patch_size <= 0:
        raise UserError(f"tiling: expected positive target_mpp and patch_size, found {target_mpp} and {patch_size}")
    levels = [lv for lv in range(reader.level_count) if reader.level_mpp(lv) <= target_mpp * MPP_TOLERANCE]
    level = max(levels, key=reader.level_mpp) if levels else 0
    return level, max(1, round(patch_size * target_mpp / reader.level_mpp(level)))


def mask_side(reader: SlideReader, target_mpp: float, patch_size: int) -> int:
    """Longest side of the tissue mask for a patch grid: :data:`MASK_PX_PER_PATCH` mask pixels
    per patch side, within :data:`MASK_SIDE`. Detection time grows with the square of the side,
    while a finer mask only places tissue borders more exactly within a patch."""
    level, read_size = choose_level(reader, target_mpp, patch_size)
    size0 = read_size * reader.level_downsamples[level]
    return int(np.clip(np.ceil(MASK_PX_PER_PATCH * max(reader.dimensions) / size0), *MASK_SIDE))


def tile_slide(
    reader: SlideReader,
    patch_size: int,
    target_mpp: float = 0.5,
    tissue_threshold: float = 0.5,
    max_patches: int | None = None,
    overlap: int = 0,
    seed: int = 0,
    tissue: TissueMask | None = None,
) -> list[dict]:
    """Grid patches of ``reader`` holding at least ``tissue_threshold`` tissue.

    Rows ``{slide, x, y, level, read_size}`` (level-0 top-left corners, row-major order). The
    grid step is ``patch_size - overlap`` patch pixels. Beyond ``max_patches`` (0 or None: no
    limit) kept patches, a
    seeded, spatially balanced sample without replacement is taken (one patch per equal stratum
    of the Z-order curve over the grid).
    """
    if max_patches is not None and max_patches < 0:
        raise UserError(f"max patches per slide: expected 0 (all) or more, found {max_patches}")
    if not 0 <= overlap < patch_size:
        raise UserError(f"overlap: expected 0 <= overlap < patch size {patch_size}, found {overlap}")
    level, read_size = choose_level(reader, target_mpp, patch_size)
    size0 = read_size * reader.level_downsamples[level]
    step0 = size0 * (patch_size - overlap) / patch_size
    width, height = reader.dimensions
    if width < size0 or height < size0:
        raise UserError(
            f"{reader.path}: image ({width}x{height}) is smaller than the patch "
            f"({patch_size} px at {target_mpp:g} µm/px = {size0:.0f} level-0 px)"
        )
    gx = np.arange(int((width - size0) // step0) + 1)
    gy = np.arange(int((height - size0) // step0) + 1)
    mesh_x, mesh_y = np.meshgrid(gx, gy)
    grid_x, grid_y = mesh_x.ravel(), mesh_y.ravel()
    xs, ys = np.floor(grid_x * step0).astype(np.int64), np.floor(grid_y * step0).astype(np.int64)
    tissue = tissue if tissue is not None else detect_tissue(reader, mask_side(reader, target_mpp, patch_size))
    keep = np.flatnonzero(tissue.fraction(xs, ys, size0) >= tissue_threshold)
    if keep.size == 0:
        raise UserError(
            f"{reader.path}: no tissue found (none of {xs.size} patches has >= {tissue_threshold:.0%} tissue)"
        )
    if max_patches and keep.size > max_patches:
        keep = _balanced_sample(keep, grid_x[keep], grid_y[keep], max_patches, seed)
    slide = str(reader.path)
    return [{"slide": slide, "x": int(xs[i]), "y": int(ys[i]), "level": level, "read_size": read_size} for i in keep]


def _balanced_sample(items: np.ndarray, gx: np.ndarray, gy: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``k`` of ``items`` without replacement, one from each of ``k`` equal runs along the Z-order
    curve of grid positions ``(gx, gy)``; returned in the input order."""
    order = np.argsort(_morton(gx, gy), kind="stable")
    bounds = np.linspace(0, len(items), k + 1).astype(np.int64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(bounds[:-1], bounds[1:])  # bounds strictly increase since k < len(items)
    return np.sort(items[order[picks]])


def _morton(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Z-order (Morton) codes of non-negative grid coordinates (below 2**32): bits interleaved."""

    def spread(v):
        v = v.astype(np.uint64) & np.uint64(0xFFFFFFFF)
        for shift, mask in (
            (16, 0x0000FFFF0000FFFF),
            (8, 0x00FF00FF00FF00FF),
            (4, 0x0F0F0F0F0F0F0F0F),
            (2, 0x3333333333333333),
            (1, 0x5555555555555555),
        ):
            v = (v | (v << np.uint64(shift))) & np.uint64(mask)
        return v

    return spread(x) | (spread(y) << np.uint64(1))


@dataclass(frozen=True)
class TileOptions:
    """Parameters of a tiling run (all recorded in ``summary.json``).

    ``magnification`` is recorded only (``target_mpp`` = 10 / magnification was derived from it);
    ``max_per_slide`` 0 keeps every tissue patch; ``tile_format`` (:data:`TILE_FORMATS`) is the
    file type of ``save_tiles``' tiles; ``fallback_flag`` names the option that sets
    ``fallback_mpp`` in error messages.
    """

    patch_size: int = 224
    target_mpp: float = 0.5
    magnification: float | None = None
    fallback_mpp: float | None = None
    max_per_slide: int = 100
    tissue_threshold: float = 0.5
    overlap: int = 0
    seed: int = 0
    save_tiles: bool = False
    tile_format: str = "png"
    fallback_flag: str = "--fallback-mpp"

    def __post_init__(self) -> None:
        if self.tile_format not in TILE_FORMATS:
            raise UserError(f"tile format: expected {' or '.join(TILE_FORMATS)}, found {self.tile_format!r}")


class TilingInterrupted(SasslError):
    """SIGTERM or SIGINT arrived during :func:`tile_to_folder`; nothing was written to ``out``."""

    def __init__(self, signum: int):
        super().__init__(f"tiling interrupted by signal {signum}; nothing written")
        self.signum = signum


def find_slides(paths: list[Path], skip: Path | None = None) -> list[Path]:
    """Files given, plus the slide files (by extension) inside given folders, sorted per folder.

    Inside folders, ``skip`` (the output folder), sassl's staging folders and every folder
    holding a tiling's ``summary.json`` (with all below it) are left out, so tiling a folder into
    a sub-folder of itself, again, never picks up its own outputs.
    """
    skip = Path(os.path.abspath(skip)) if skip is not None else None
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            found.append(path)  # open_slide reports a missing or unsupported file
            continue
        inside: list[Path] = []
        for folder, dirs, files in os.walk(path):
            here = Path(folder)
            staging = here.name.startswith(".") and ".partial-" in here.name
            if staging or Path(os.path.abspath(here)) == skip or _holds_tiling(here):
                dirs.clear()
                continue
            inside += [here / f for f in files if Path(f).suffix.lower() in SLIDE_SUFFIXES]
        found += sorted(inside)
    return found


def _holds_tiling(folder: Path) -> bool:
    """Whether ``folder`` holds a ``summary.json`` written by :func:`tile_to_folder`."""
    try:
        return "patches_per_slide" in json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def tile_to_folder(
    paths: list[Path],
    out: Path,
    options: TileOptions = TileOptions(),
    workers: int = 1,
    strict: bool = False,
    overwrite: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict:
    """Tile every slide of ``paths`` (files or folders) into ``out``.

    Writes ``out/patches.csv`` (a :class:`PatchTable`: absolute slide paths; source and slide_id
    = the slide id of :func:`slide_ids`; split 'train'), per slide ``out/masks/<name>_mask.png``
    (``<name>`` = :func:`output_name` of the id; tissue 255, glass 0, mask scale) and
    ``out/masks/<name>_tiles.png`` (thumbnail, tissue tinted green, kept patches outlined in
    blue), with ``save_tiles`` every kept patch as ``out/tiles/<name>/<x>_<y>.<tile_format>``,
    and ``out/summary.json`` ``{sassl_version, parameters, slides, patches, patches_per_slide,
    skipped: [{file, reason}], seconds}``. A slide that fails is recorded in ``skipped`` (or, with ``strict``, its :class:`UserError` is raised).

    ``workers`` > 1 tiles slides in that many processes; results are merged in slide order, so
    the output does not depend on it. ``progress(done, total, file)`` is called after each slide.
    Everything is written to a staging folder beside ``out`` and moved in only once the run
    succeeds: a run that fails or gets SIGTERM/SIGINT (:class:`TilingInterrupted`) leaves ``out``
    as it was; staging folders of killed runs are removed by the next run.
    """
    start = time.perf_counter()
    out = Path(os.path.abspath(out))
    _check_out(out, overwrite)
    slides = find_slides(paths, skip=out)
    if not slides:
        raise UserError(
            f"{', '.join(map(str, paths))}: no slide files found (extensions {' '.join(sorted(SLIDE_SUFFIXES))})"
        )
    _remove_stale_staging(out)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    with _signals_raise():
        try:
            staging.mkdir()
            rows, summary = _tile_all(slides, staging, options, workers, strict, progress)
            if not rows:
                first = summary["skipped"][0]["reason"]
                raise UserError(f"{out}: no patches from any of {len(slides)} slides (first problem: {first})")
            summary = {"sassl_version": sassl_core.__version__, "parameters": _parameters(options, workers), **summary}
            summary["seconds"] = round(time.perf_counter() - start, 3)
            PatchTable.from_rows(rows, options.patch_size).save(staging / "patches.csv")
            atomic_write_text(staging / "summary.json", json.dumps(summary, indent=2))
            if options.save_tiles:
                os.sync()  # the tiles, written without an fsync each, reach the disk before the move
            _move_into(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return summary


def _parameters(options: TileOptions, workers: int) -> dict:
    params = {k: v for k, v in asdict(options).items() if k != "fallback_flag"}
    return {**params, "workers": workers}


def _check_out(out: Path, overwrite: bool) -> None:
    """One-line errors for an output folder that is a file, lies under a file, cannot be created
    or already holds a tiling (without ``overwrite``)."""
    for parent in [out, *out.parents]:
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == out else f"lies under the file {parent}"
            raise UserError(f"{out}: expected a folder for the output, found one that {where}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{out}: the output folder cannot be created ({err.strerror})") from None
    if not os.access(out.parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK | os.X_OK)):
        raise UserError(f"{out}: the output folder cannot be created (permission denied)")
    if (out / "summary.json").exists() and not overwrite:
        raise UserError(f"{out}: already holds a tiling (summary.json); choose another folder or overwrite")


def _remove_stale_staging(out: Path) -> None:
    """Delete staging folders of ``out`` left by runs whose process is gone (SIGKILL, power loss)."""
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


class _signals_raise:
    """Context in which SIGTERM and SIGINT raise :class:`TilingInterrupted` (main thread only),
    so ``finally`` blocks remove the staging folder."""

    def __enter__(self) -> None:
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._raise) for s in (signal.SIGTERM, signal.SIGINT)}

    @staticmethod
    def _raise(signum, frame) -> None:
        signal.signal(signum, signal.SIG_IGN)  # a second signal must not cut the clean-up short
        raise TilingInterrupted(signum)

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def _move_into(staging: Path, out: Path) -> None:
    """Move the staged outputs into ``out``, replacing a previous tiling's files there."""
    if not out.exists():
        staging.rename(out)
        return
    for name in ("masks", "tiles", "patches.jsonl"):  # a previous tiling's own outputs
        old = out / name
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        elif old.exists() or old.is_symlink():
            old.unlink()
    for item in staging.iterdir():
        os.replace(item, out / item.name)


def _tile_all(
    slides: list[Path],
    staging: Path,
    options: TileOptions,
    workers: int,
    strict: bool,
    progress: Callable[[int, int, str], None] | None,
) -> tuple[list[dict], dict]:
    """Patch rows of every slide, in slide order, and the summary counts."""
    rows: list[dict] = []
    per_slide: dict[str, int] = {}
    skipped: list[dict] = []
    ids = slide_ids(slides)
    jobs = [(path, slide_id) for path, slide_id in zip(slides, ids, strict=True) if slide_id is not None]
    results = _results(jobs, staging, options, workers)
    try:
        for done, (path, slide_id) in enumerate(zip(slides, ids, strict=True), 1):
            kept: list[dict]
            reason: str | None
            if slide_id is None:
                kept, reason = [], f"{path}: expected each slide once, found this file again"
            else:
                kept, reason = next(results)
            if reason is not None:
                if strict:
                    raise UserError(reason)
                skipped.append({"file": str(path), "reason": reason})
            else:
                rows += kept
                per_slide[str(slide_id)] = len(kept)
            if progress is not None:
                progress(done, len(slides), str(path))
    finally:
        results.close()
    summary = {"slides": len(per_slide), "patches": len(rows), "patches_per_slide": per_slide, "skipped": skipped}
    return rows, summary


def slide_ids(slides: list[Path]) -> list[str | None]:
    """The id of each slide: its file stem, or, for slides sharing a stem, its path relative to
    the folder holding all slides, without the suffix (``centreA/s1``; with it where that is
    shared too). None for a file listed a second time."""
    full = [Path(os.path.abspath(p)) for p in slides]
    unique = list(dict.fromkeys(full))
    root = Path(os.path.commonpath([p.parent for p in unique])) if unique else Path("/")
    stems = Counter(p.stem for p in unique)
    relative = Counter(p.relative_to(root).with_suffix("").as_posix() for p in unique)
    ids: list[str | None] = []
    seen: set[Path] = set()
    for path in full:
        rel = path.relative_to(root).with_suffix("").as_posix()
        if path in seen:
            ids.append(None)
        elif stems[path.stem] == 1:
            ids.append(path.stem)
        else:
            ids.append(rel if relative[rel] == 1 else path.relative_to(root).as_posix())
        seen.add(path)
    return ids


def output_name(slide_id: str) -> str:
    """File-name form of a slide id: sub-folders joined by ``__`` (``centreA/s1`` → ``centreA__s1``)."""
    return slide_id.replace("/", "__")


def _results(
    jobs: list[tuple[Path, str]], staging: Path, options: TileOptions, workers: int
) -> Generator[tuple[list[dict], str | None], None, None]:
    """``tile_one_slide`` of each ``(path, slide_id)`` job, in order: in this process, or in
    ``workers`` worker processes (closing the iterator cancels what has not started and waits
    for the rest)."""
    if workers <= 1 or len(jobs) <= 1:
        for path, slide_id in jobs:
            yield tile_one_slide(path, staging, options, slide_id)
        return
    pool = ProcessPoolExecutor(min(workers, len(jobs)), mp_context=_start_method(), initializer=_worker_signals)
    try:
        futures = [pool.submit(tile_one_slide, path, staging, options, slide_id) for path, slide_id in jobs]
        for future in futures:
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _start_method() -> multiprocessing.context.BaseContext:
    """'fork' (workers start at once, nothing re-imported) when this process runs no other thread
    and has not loaded torch, whose OpenMP thread pool does not survive a fork; else 'spawn'
    (a fresh interpreter per worker: slower to start, safe whatever runs here)."""
    single = threading.active_count() == 1 and "torch" not in sys.modules
    return multiprocessing.get_context("fork" if single and hasattr(os, "fork") else "spawn")


def _worker_signals() -> None:
    """Workers leave Ctrl-C to the main process (which stops them and removes the staging
    folder) and take SIGTERM's default action, not the handler a fork inherits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def tile_one_slide(
    path: Path, staging: Path, options: TileOptions, slide_id: str | None = None
) -> tuple[list[dict], str | None]:
    """Tile one slide (``slide_id`` by default its stem), writing its masks (and tiles) under
    ``staging``: ``(rows, None)``, or ``([], reason)`` when it is unusable. Runs in a worker
    process."""
    path = Path(os.path.abspath(path))
    slide_id = slide_id or path.stem
    stem = output_name(slide_id)
    try:
        with open_slide(path, options.fallback_mpp, fallback_flag=options.fallback_flag) as reader:
            tissue = detect_tissue(reader, mask_side(reader, options.target_mpp, options.patch_size))
            thumb = tissue.thumbnail
            assert thumb is not None  # detect_tissue keeps the view it read
            save_mask(tissue.mask, staging / "masks" / f"{stem}_mask.png")
            try:
                kept = tile_slide(
                    reader,
                    options.patch_size,
                    options.target_mpp,
                    options.tissue_threshold,
                    options.max_per_slide,
                    options.overlap,
                    options.seed,
                    tissue,
                )
            except UserError:  # the overlay of a slide without tissue shows why
                save_overlay(thumb, tissue.mask, staging / "masks" / f"{stem}_tiles.png")
                raise
            overlay = staging / "masks" / f"{stem}_tiles.png"
            save_overlay(thumb, tissue.mask, overlay, boxes=_boxes(reader, tissue, kept))
            if options.save_tiles:
                _save_tiles(kept, options.patch_size, staging / "tiles" / stem, options.tile_format)
    except UserError as err:
        return [], str(err)
    return [{**row, "source": slide_id, "slide_id": slide_id, "split": "train"} for row in kept], None


def _boxes(reader: SlideReader, tissue: TissueMask, rows: list[dict]) -> np.ndarray:
    """``(n, 4)`` outlines ``x0, y0, x1, y1`` of ``rows``' patches in thumbnail pixels."""
    boxes = np.array(
        [[r["x"], r["y"], r["read_size"] * reader.level_downsamples[r["level"]]] for r in rows], np.float64
    ).reshape(-1, 3)
    corners = np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 2]], axis=1)
    return corners / tissue.downsample


def _save_tiles(rows: list[dict], patch_size: int, folder: Path, fmt: str = "png") -> None:
    """Each patch of ``rows`` as ``folder/<x>_<y>.<fmt>`` (``patch_size`` pixels a side).

    ``folder`` lies in the run's private staging folder, which is moved into place only once
    every slide is done, so tiles are written straight to their names (never through a link)
    and :func:`tile_to_folder` syncs them all at once before that move, instead of an fsync and
    a rename per tile (:func:`sassl_core.files.atomic_write`; ~4 ms a tile).
    """
    from sassl_core.wsi.cache import read_patch  # cache builds on this module

    folder.mkdir(parents=True, exist_ok=True)
    try:
        for row in rows:
            path = folder / f"{row['x']}_{row['y']}.{fmt}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
            with os.fdopen(fd, "wb") as fh:
                TILE_FORMATS[fmt](Image.fromarray(read_patch(row, patch_size)), fh)
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise UserError(f"{folder}: expected free disk space to write the tiles, found the disk full") from None
