"""Tiling slides into tissue patches at a target resolution (paper §4.1: 100 tissue patches per
slide after Otsu background removal).

A patch is a square of ``patch_size`` pixels at ``target_mpp`` µm/px. It is read as
``read_size`` pixels from the pyramid level needing the least resampling and resized to
``patch_size`` afterwards (see :func:`sassl_core.wsi.cache.read_patch`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sassl_core.errors import UserError
from sassl_core.wsi.patches import PatchTable
from sassl_core.wsi.reader import SlideReader, open_slide
from sassl_core.wsi.tissue import TissueMask, detect_tissue, save_overlay

SLIDE_SUFFIXES = {
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif",
    ".png", ".jpg", ".jpeg",
}  # fmt: skip
MPP_TOLERANCE = 1.02  # a level within 2% of the target counts as the target (scanner rounding)


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
    grid step is ``patch_size - overlap`` patch pixels. Beyond ``max_patches`` kept patches, a
    seeded, spatially balanced sample without replacement is taken (one patch per equal stratum
    of the Z-order curve over the grid).
    """
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
    tissue = tissue if tissue is not None else detect_tissue(reader)
    keep = np.flatnonzero(tissue.fraction(xs, ys, size0) >= tissue_threshold)
    if keep.size == 0:
        raise UserError(
            f"{reader.path}: no tissue found (none of {xs.size} patches has >= {tissue_threshold:.0%} tissue)"
        )
    if max_patches is not None and keep.size > max_patches:
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


def find_slides(paths: list[Path]) -> list[Path]:
    """Files given, plus the slide files (by extension) inside given folders, sorted per folder."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES)
        else:
            found.append(path)  # open_slide reports a missing or unsupported file
    return found


def tile_to_folder(
    paths: list[Path],
    out: Path,
    patch_size: int = 224,
    target_mpp: float = 0.5,
    fallback_mpp: float | None = None,
    max_per_slide: int | None = 100,
    tissue_threshold: float = 0.5,
    overlap: int = 0,
    strict: bool = False,
    seed: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
    overwrite: bool = False,
) -> dict:
    """Tile every slide of ``paths`` (files or folders) into ``out``.

    Writes ``out/patches.jsonl`` (a :class:`PatchTable`; source and slide_id = slide file stem,
    split 'train'), ``out/masks/<stem>_tissue.png`` overlays and ``out/summary.json``
    ``{slides, patches_per_slide, skipped: [{file, reason}], seconds}``. A slide that fails is
    recorded in ``skipped`` (or, with ``strict``, its :class:`UserError` is raised).
    ``progress(done, total, file)`` is called after each slide. Returns the summary.

    Overlays are written to a temporary sibling folder and moved into ``out`` only once the
    run succeeds: a run that fails (or is killed) leaves ``out`` as it was.
    """
    start = time.perf_counter()
    out = Path(out)
    if (out / "patches.jsonl").exists() and not overwrite:
        raise UserError(f"{out / 'patches.jsonl'}: already exists; choose another folder or overwrite")
    slides = find_slides(paths)
    if not slides:
        raise UserError(
            f"{', '.join(map(str, paths))}: no slide files found (extensions {' '.join(sorted(SLIDE_SUFFIXES))})"
        )
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:

        def tile(reader: SlideReader, tissue: TissueMask) -> list[dict]:
            return tile_slide(reader, patch_size, target_mpp, tissue_threshold, max_per_slide, overlap, seed, tissue)

        rows, summary = _tile_all(slides, staging, tile, fallback_mpp, strict, progress)
        summary["seconds"] = round(time.perf_counter() - start, 3)
        if not rows:
            first = summary["skipped"][0]["reason"]
            raise UserError(f"{out}: no patches from any of {len(slides)} slides (first problem: {first})")
        (out / "masks").mkdir(parents=True, exist_ok=True)
        for overlay in staging.iterdir():
            overlay.replace(out / "masks" / overlay.name)
        PatchTable.from_rows(rows, patch_size).save(out / "patches.jsonl")
        tmp = out / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2))
        tmp.replace(out / "summary.json")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def _tile_all(
    slides: list[Path],
    overlays: Path,
    tile: Callable[[SlideReader, TissueMask], list[dict]],
    fallback_mpp: float | None,
    strict: bool,
    progress: Callable[[int, int, str], None] | None,
) -> tuple[list[dict], dict]:
    """Patch rows of every slide (``tile(reader, tissue)``), tissue overlays written to
    ``overlays``, and the summary without its timing."""
    rows: list[dict] = []
    per_slide: dict[str, int] = {}
    skipped: list[dict] = []
    for done, path in enumerate(slides, 1):
        try:
            if path.stem in per_slide:
                raise UserError(f"{path}: another slide is already named {path.stem!r} (stems identify slides)")
            with open_slide(path, fallback_mpp) as reader:
                tissue = detect_tissue(reader)
                if tissue.thumbnail is not None:  # always: detect_tissue keeps the thumbnail it read
                    save_overlay(tissue.thumbnail, tissue.mask, overlays / f"{path.stem}_tissue.png")
                kept = tile(reader, tissue)
        except UserError as err:
            if strict:
                raise
            skipped.append({"file": str(path), "reason": str(err)})
        else:
            rows += [{**row, "source": path.stem, "slide_id": path.stem, "split": "train"} for row in kept]
            per_slide[path.stem] = len(kept)
        if progress is not None:
            progress(done, len(slides), str(path))
    return rows, {"slides": len(per_slide), "patches_per_slide": per_slide, "skipped": skipped}
