"""Helpers shared by the dataset plugins: label tables, splits by slide, tiling with skips and
per-dataset tiling options, per-patch fractions and means of a label raster, and derived slides
written once to the cache."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sassl_core.errors import UserError
from sassl_core.interfaces import DatasetContext, PreparedData, TargetKind
from sassl_core.wsi.patches import PatchTable
from sassl_core.wsi.reader import SlideReader, open_slide, write_pyramid_tiff
from sassl_core.wsi.tiling import tile_slide
from sassl_core.wsi.tissue import TissueMask

Row = dict[str, str]


def read_text(path: Path) -> str:
    """The UTF-8 text of ``path`` (a byte-order mark is dropped); a missing file or bytes that
    are not UTF-8 raise :class:`UserError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(
            f"{path}: expected UTF-8 text, found byte 0x{err.object[err.start]:02x} at offset {err.start}"
        ) from None


def read_table(path: Path, required: Iterable[str], delimiter: str = ",") -> list[Row]:
    """Rows of a delimited text file with a header, as dicts with whitespace stripped.

    Raises :class:`UserError` naming the file when it is missing, not UTF-8 text, not parsable
    as delimited text, or lacks a ``required`` column. Each row gets ``_line`` (its 1-based
    line number) for error messages.
    """
    path = Path(path)
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""), delimiter=delimiter)
    try:
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in required if c not in header]
        if missing:
            raise UserError(f"{path}: expected columns {', '.join(missing)}, found {', '.join(header) or 'no header'}")
        rows = []
        for raw in reader:
            row = {k.strip(): (v or "").strip() if isinstance(v, str) else "" for k, v in raw.items() if k is not None}
            row["_line"] = str(reader.line_num)
            rows.append(row)
    except csv.Error as err:
        raise UserError(f"{path}: line {reader.line_num}: not readable as delimited text ({err})") from None
    return rows


def require_root(context: DatasetContext, dataset: str, holding: str) -> Path:
    """The data root of a dataset that reads the user's files; none given is an error naming
    ``data.root`` and what the folder should hold."""
    if context.root is None:
        raise UserError(f"data.root: dataset '{dataset}' needs --data-root: {holding}")
    return Path(context.root)


def resolve(path: str | Path, base: Path) -> Path:
    """``path`` if absolute, else ``base / path`` (a file named in an option or a table)."""
    return Path(path) if Path(path).is_absolute() else Path(base) / path


def is_plain_name(name: str) -> bool:
    """Whether ``name`` is a plain file name: not empty, no folder separator, not ``.``/``..``
    (so a name read from a table cannot point outside the folder it is looked up in)."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0")


def skip_or_raise(context: DatasetContext, skipped: list[str], err: UserError) -> None:
    """Record a bad slide as ``'file: reason'`` in ``skipped``, or raise ``err`` when ``context.strict``."""
    if context.strict:
        raise err
    skipped.append(str(err))


class TilingOptions(BaseModel):
    """Tiling settings a dataset may set for itself; unset ones are the run's ``data`` settings."""

    model_config = ConfigDict(extra="forbid")

    patches_per_slide: int | None = Field(None, ge=1, description="tissue patches kept per slide (data.max_per_slide)")
    mpp: float | None = Field(None, gt=0, description="µm/px of the patches (data.target_mpp)")
    fallback_mpp: float | None = Field(None, gt=0, description="µm/px for slides without a resolution (data.mpp)")
    tissue_threshold: float | None = Field(None, ge=0, le=1, description="least tissue fraction of a patch")

    def tiling(self, context: DatasetContext) -> DatasetContext:
        """``context`` with the settings given here."""
        given: dict[str, Any] = {
            "max_per_slide": self.patches_per_slide,
            "target_mpp": self.mpp,
            "fallback_mpp": self.fallback_mpp,
            "tissue_threshold": self.tissue_threshold,
        }
        return replace(context, **{k: v for k, v in given.items() if v is not None})


def split_groups(
    groups: Iterable[str], fractions: dict[str, float], seed: int, strata: dict[str, str] | None = None
) -> dict[str, str]:
    """Assign every group (slide, patient) to ``'train'`` or one of ``fractions``' splits.

    Deterministic in ``seed``: groups are sorted, shuffled per stratum (e.g. per centre or per
    label, so every stratum is represented in every split), and each split takes
    ``round(n * fraction)`` groups of a stratum — at least one when its fraction is positive and
    the stratum has groups to spare — and ``'train'`` keeps the rest.
    """
    unique = sorted(set(groups))
    strata = strata or {}
    by_stratum: dict[str, list[str]] = {}
    for g in unique:
        by_stratum.setdefault(strata.get(g, ""), []).append(g)
    rng = np.random.default_rng(seed)
    out: dict[str, str] = {}
    for key in sorted(by_stratum):
        members = [by_stratum[key][i] for i in rng.permutation(len(by_stratum[key]))]
        start = 0
        for split, fraction in fractions.items():
            spare = len(members) - start - 1  # keep at least one group for training
            count = min(max(round(len(members) * fraction), 1 if fraction > 0 else 0), max(spare, 0))
            for g in members[start : start + count]:
                out[g] = split
            start += count
        for g in members[start:]:
            out[g] = "train"
    return out


def read_level(reader: SlideReader, max_side: int = 4096) -> tuple[np.ndarray, float]:
    """The whole of the finest pyramid level no larger than ``max_side`` (else the coarsest):
    RGB uint8 ``(h, w, 3)`` and its downsample. Pixels are read as stored (no resampling), so
    label images keep their values."""
    fits = [lv for lv, (w, h) in enumerate(reader.level_dimensions) if max(w, h) <= max_side]
    level = min(fits) if fits else reader.level_count - 1
    w, h = reader.level_dimensions[level]
    pixels = reader.read(0, 0, level, max(w, h), fill=0)[:h, :w]
    return pixels, reader.level_downsamples[level]


def fraction_map(mask: np.ndarray, downsample: float) -> TissueMask:
    """Area fractions of a boolean raster (``downsample`` level-0 pixels per raster pixel) over
    level-0 squares: ``fraction_map(m, d).fraction(x, y, size0)``."""
    return TissueMask(np.asarray(mask, bool), float(downsample))


def patch_extent(row: dict, reader: SlideReader) -> float:
    """Side in level-0 pixels of a tiled patch row."""
    return row["read_size"] * reader.level_downsamples[row["level"]]


def patch_squares(rows: list[dict], reader: SlideReader) -> tuple[np.ndarray, np.ndarray, float]:
    """Level-0 corners ``xs``, ``ys`` and side of tiled patch rows of one slide, as
    ``fraction_map(...).fraction(*patch_squares(rows, reader))`` takes them."""
    xs, ys = np.array([r["x"] for r in rows]), np.array([r["y"] for r in rows])
    return xs, ys, patch_extent(rows[0], reader)


def save_label_maps(folder: Path, name: str, **maps: np.ndarray) -> None:
    """Save the label maps of a derived slide ``<name>.tif`` beside it, as ``<name>_labels.npz``."""
    np.savez_compressed(Path(folder) / f"{name}_labels.npz", allow_pickle=False, **maps)


def label_maps(reader: SlideReader):
    """The label maps :func:`save_label_maps` saved beside ``reader``'s slide."""
    return np.load(reader.path.with_name(f"{reader.path.stem}_labels.npz"))


def tile_slides(
    slides: Iterable[tuple[Path, dict]],
    context: DatasetContext,
    label_rows: Callable[[SlideReader, list[dict]], list[dict]] | None = None,
    tissue: Callable[[SlideReader], TissueMask | None] | None = None,
    fallback_mpp: float | None = None,
) -> tuple[list[dict], list[str]]:
    """Tile each ``(path, fields)`` slide; every patch row gets ``fields`` (source, label, ...).

    ``tissue(reader)`` may supply the tissue mask (e.g. from a label mask) instead of Otsu
    detection; ``label_rows(reader, rows)`` may label or filter the rows (then at most
    ``context.max_per_slide`` are kept afterwards). A slide
    that cannot be read or has no tissue is recorded as ``'file: reason'`` in the returned
    skipped list, or raised when ``context.strict``.
    """
    rows: list[dict] = []
    skipped: list[str] = []
    for i, (path, fields) in enumerate(slides):
        try:
            with open_slide(path, fallback_mpp=fallback_mpp or context.fallback_mpp) as reader:
                tiles = tile_slide(
                    reader,
                    context.patch_size,
                    target_mpp=context.target_mpp,
                    tissue_threshold=context.tissue_threshold,
                    max_patches=None if label_rows else context.max_per_slide,
                    seed=context.seed + i,
                    tissue=tissue(reader) if tissue else None,
                )
                tiles = [{**t, **fields} for t in tiles]
                if label_rows:
                    tiles = subsample(label_rows(reader, tiles), context.max_per_slide, context.seed + i)
        except UserError as err:
            skip_or_raise(context, skipped, err)
            continue
        rows.extend(tiles)
    return rows, skipped


def subsample(rows: list[dict], k: int | None, seed: int) -> list[dict]:
    """At most ``k`` of ``rows`` (seeded, order kept)."""
    if k is None or len(rows) <= k:
        return rows
    keep = np.sort(np.random.default_rng(seed).choice(len(rows), size=k, replace=False))
    return [rows[i] for i in keep]


def prepare(
    rows: list[dict],
    context: DatasetContext,
    target_kinds: tuple[TargetKind, ...],
    skipped: list[str],
    what: str,
    class_names: list[str] | None = None,
    seg_classes: int = 2,
) -> PreparedData:
    """Wrap patch rows as :class:`PreparedData`; no patch at all is an error naming ``what``."""
    if not rows:
        detail = f" ({len(skipped)} slides skipped: {'; '.join(skipped[:3])})" if skipped else ""
        raise UserError(f"{what}: no tissue patches found{detail}")
    return PreparedData(
        patches=PatchTable.from_rows(rows, context.patch_size),
        target_kinds=target_kinds,
        class_names=list(class_names or []),
        seg_classes=seg_classes,
        skipped=skipped,
    )


def cached_folder(parent: Path, key: dict, build: Callable[[Path], None]) -> Path:
    """``<parent>/<digest of key>``, holding what ``build(work)`` writes into an empty folder.

    Made once: built in a temporary sibling and renamed into place when complete (with
    ``done.json`` holding ``key``), so an interrupted build leaves nothing half-written and later
    calls with the same ``key`` reuse the folder. When another process completes the same folder
    first, theirs is kept.
    """
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(parent) / digest
    if (folder / "done.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=folder.parent))
    try:
        build(work)
        (work / "done.json").write_text(json.dumps(key, indent=1))
        try:
            work.replace(folder)
        except OSError:  # made meanwhile by another process: keep theirs
            if not (folder / "done.json").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder


def map_threads(function: Callable, jobs: list) -> list:
    """``[function(job) for job in jobs]`` on up to one thread per CPU (slide decoding, encoding
    and most numpy work release the GIL)."""
    with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        return list(pool.map(function, jobs))


def write_labelled_slide(
    folder: Path, name: str, rgb: np.ndarray, labels: np.ndarray, mpp: float, levels: int = 3, tile: int = 256
) -> None:
    """Write ``<name>.tif`` (pyramidal, JPEG) and its lossless label mask ``<name>_mask.tif``
    (labels in the red channel, as :func:`sassl_core.wsi.cache.read_mask` reads them)."""
    mask = np.zeros((*labels.shape, 3), np.uint8)
    mask[..., 0] = labels
    write_pyramid_tiff(Path(folder) / f"{name}.tif", rgb, mpp, levels=levels, tile=tile)
    write_pyramid_tiff(Path(folder) / f"{name}_mask.tif", mask, mpp, levels=levels, tile=tile, label_mask=True)
