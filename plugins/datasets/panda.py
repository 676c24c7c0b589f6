"""``panda``: Prostate cANcer graDe Assessment (Kaggle PANDA) — ISUP grade classification.

Layout (``root``)::

    train.csv                       image_id, data_provider, isup_grade, gleason_score
    train_images/<image_id>.tiff
    train_label_masks/<image_id>_mask.tiff   (optional per slide; label in the red channel)

Mask values differ by provider. radboud: 0 glass, 1 stroma, 2 benign epithelium, 3/4/5
Gleason 3/4/5 epithelium. karolinska: 0 glass, 1 benign tissue (stroma and epithelium),
2 cancer. When a slide has a mask, its tissue (value > 0) replaces Otsu detection, and on a
slide graded ISUP >= 1 only patches holding cancer (radboud >= 3, karolinska 2) are kept — the
slide's grade is a fair label for them. Every patch carries its slide's ISUP grade (0-5,
paper §4.1). Split: the paper's 80/20 train/test by slide (seeded, stratified by provider),
optionally with a validation share. ``source`` is the data provider, so the metrics'
per-source QWK is the paper's QWK_k and QWK_r; ``slide_id`` is the image id.

An ``image_id`` must be a plain file name (no folder, no ``..``), so no row can make the loader
read outside the root. A slide listed twice with the same provider and grade is read once; listed
with different ones, it is an error. A slide or mask that cannot be read leaves its slide out (it
is reported as skipped), unless ``--strict``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

import sassl_core
from sassl_core.errors import UserError
from sassl_core.interfaces import DatasetContext, PreparedData, TargetKind
from sassl_core.wsi.reader import SlideReader, open_slide
from sassl_plugins.datasets.common import (
    fraction_map,
    is_plain_name,
    patch_extent,
    prepare,
    read_level,
    read_table,
    require_root,
    skip_or_raise,
    split_groups,
    tile_slides,
)

COLUMNS = ("image_id", "data_provider", "isup_grade", "gleason_score")
PROVIDERS = ("karolinska", "radboud")
CANCER_FROM = {"radboud": 3, "karolinska": 2}  # smallest mask value that is cancer
ISUP_GRADES = [f"ISUP {g}" for g in range(6)]


class PandaOptions(BaseModel):
    """Options of the PANDA dataset."""

    model_config = ConfigDict(extra="forbid")

    test_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="share of slides in the test split (paper: 0.2)")
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="share of slides in a validation split")
    use_masks: bool = Field(True, description="pick tissue (and cancer) patches with the label masks")
    min_cancer_fraction: float = Field(0.05, ge=0.0, le=1.0, description="cancer share for a patch to hold cancer")
    fallback_mpp: float | None = Field(None, gt=0, description="µm/px for slides without a resolution")


def _int_in(value: str, low: int, high: int) -> int | None:
    try:
        number = int(value)
    except ValueError:
        return None
    return number if low <= number <= high else None


def read_labels(root: Path) -> list[dict]:
    """Validated rows of ``train.csv``, one per slide; errors name the file, the row and the column."""
    table = root / "train.csv"
    rows: list[dict] = []
    first: dict[str, dict] = {}
    for row in read_table(table, COLUMNS):
        where = f"{table}: row {row['_line']}"
        if _int_in(row["isup_grade"], 0, 5) is None:
            raise UserError(f"{where}: isup_grade: expected an integer 0-5, found {row['isup_grade']!r}")
        if row["data_provider"] not in PROVIDERS:
            raise UserError(
                f"{where}: data_provider: expected one of {', '.join(PROVIDERS)}, found {row['data_provider']!r}"
            )
        if not is_plain_name(row["image_id"]):
            raise UserError(f"{where}: image_id: expected a slide id (a plain file name), found {row['image_id']!r}")
        earlier = first.setdefault(row["image_id"], row)
        if earlier is not row:
            if (earlier["data_provider"], earlier["isup_grade"]) != (row["data_provider"], row["isup_grade"]):
                raise UserError(
                    f"{where}: image_id {row['image_id']}: expected one grade per slide, found "
                    f"{row['data_provider']} ISUP {row['isup_grade']} here and {earlier['data_provider']} "
                    f"ISUP {earlier['isup_grade']} in row {earlier['_line']}"
                )
            continue  # the same slide listed again, identically: read it once
        image = root / "train_images" / f"{row['image_id']}.tiff"
        if not image.is_file():
            raise UserError(f"{where}: image_id {row['image_id']}: slide {image} not found")
        rows.append(row)
    return rows


class _Masks:
    """Per-slide label masks: tissue from the mask, cancer patches on graded slides."""

    def __init__(self, root: Path, rows: list[dict], options: PandaOptions):
        self.root = root
        self.by_stem = {r["image_id"]: r for r in rows}
        self.options = options
        self._last: tuple[Path, tuple[np.ndarray, float]] | None = None

    def path(self, image_id: str) -> Path | None:
        path = self.root / "train_label_masks" / f"{image_id}_mask.tiff"
        return path if self.options.use_masks and path.is_file() else None

    def check_sizes(self, context: DatasetContext, skipped: list[str]) -> set[str]:
        """Every mask must have its slide's size (a mask of another slide is a layout error). A
        slide or mask that cannot be opened leaves its slide out (recorded in ``skipped``, fatal
        with ``context.strict``); returns the ids left out."""
        left_out = set()
        for image_id in self.by_stem:
            path = self.path(image_id)
            if path is None:
                continue
            slide_path = self.root / "train_images" / f"{image_id}.tiff"
            try:
                with open_slide(slide_path, require_mpp=False) as slide, open_slide(path, require_mpp=False) as mask:
                    sizes = mask.dimensions, slide.dimensions
            except UserError as err:
                skip_or_raise(context, skipped, err)
                left_out.add(image_id)
                continue
            if sizes[0] != sizes[1]:
                (mw, mh), (sw, sh) = sizes
                raise UserError(f"{path}: mask size {mw}x{mh} differs from its slide's {sw}x{sh}")
        return left_out

    def labels(self, reader: SlideReader) -> tuple[np.ndarray, float] | None:
        """Mask labels (red channel) at a level of at most 4096 px, and its downsample."""
        path = self.path(reader.path.stem)
        if path is None:
            return None
        if self._last is None or self._last[0] != path:
            with open_slide(path, require_mpp=False) as mask:
                pixels, downsample = read_level(mask)
            self._last = (path, (pixels[..., 0], downsample))
        return self._last[1]

    def tissue(self, reader: SlideReader):
        found = self.labels(reader)
        return None if found is None else fraction_map(found[0] > 0, found[1])

    def keep_cancer(self, reader: SlideReader, rows: list[dict]) -> list[dict]:
        row = self.by_stem[reader.path.stem]
        found = self.labels(reader)
        if found is None or not rows or int(row["isup_grade"]) == 0:
            return rows
        labels, downsample = found
        cancer = fraction_map(labels >= CANCER_FROM[row["data_provider"]], downsample)
        share = np.atleast_1d(
            cancer.fraction([r["x"] for r in rows], [r["y"] for r in rows], patch_extent(rows[0], reader))
        )
        kept = [r for r, s in zip(rows, share) if s >= self.options.min_cancer_fraction]
        return kept or rows  # a graded slide whose mask shows no cancer keeps its tissue patches


def build(options: PandaOptions, context: DatasetContext) -> PreparedData:
    """Tile every slide of ``train.csv``; every patch gets its slide's ISUP grade."""
    root = require_root(context, "panda", "the folder holding train.csv")
    rows = read_labels(root)
    providers = {r["image_id"]: r["data_provider"] for r in rows}
    fractions = {"val": options.val_fraction, "test": options.test_fraction}
    splits = split_groups(providers, fractions, context.seed, strata=providers)
    masks = _Masks(root, rows, options)
    skipped: list[str] = []
    left_out = masks.check_sizes(context, skipped)
    slides = [
        (
            root / "train_images" / f"{r['image_id']}.tiff",
            {
                "slide_id": r["image_id"],
                "source": r["data_provider"],
                "label": int(r["isup_grade"]),
                "split": splits[r["image_id"]],
            },
        )
        for r in rows
        if r["image_id"] not in left_out
    ]
    patches, unreadable = tile_slides(
        slides, context, label_rows=masks.keep_cancer, tissue=masks.tissue, fallback_mpp=options.fallback_mpp
    )
    skipped += unreadable
    return prepare(patches, context, (TargetKind.LABEL,), skipped, str(root / "train.csv"), class_names=ISUP_GRADES)


@sassl_core.hookimpl
def sassl_register_datasets(register):
    register("panda", build, PandaOptions)
