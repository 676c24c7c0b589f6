"""``synthetic``: the zero-setup multi-centre dataset (classification, regression, segmentation).

Small whole slides are drawn by :mod:`sassl_plugins.datasets.synthetic_slides` — morphology
carries the labels, the stain varies by centre — and written once as pyramidal TIFFs (0.5 µm/px
at level 0, JPEG) with a lossless tumour mask TIFF each, under
``<cache_dir>/synthetic/<hash of the options>/``; later runs reuse them.

Per patch: ``label`` = the grade pattern covering most of the patch (``low``, ``intermediate``,
``high``), ``target`` = the tumour fraction of the patch (from the mask), ``mask`` = the
tumour mask (1 = tumour). ``source`` is the centre, ``slide_id`` the slide (the run's
``sassl.source_key`` picks which is the stain source). Splits are by slide, stratified by centre; the core's ``data.held_out_source``
holds a whole centre out as the test split instead (the stain-shift benchmark).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

import sassl_core
from sassl_core.interfaces import DatasetContext, PreparedData, TargetKind
from sassl_core.wsi.reader import SlideReader
from sassl_plugins.datasets.common import (
    cached_folder,
    fraction_map,
    label_maps,
    map_threads,
    patch_squares,
    prepare,
    save_label_maps,
    split_groups,
    tile_slides,
    write_labelled_slide,
)
from sassl_plugins.datasets.synthetic_slides import GRADES, centre_stains, draw_slide

GENERATOR_VERSION = 1  # bump when the drawing changes, so cached slides are redrawn
MPP = 0.5
LABEL_DOWNSAMPLE = 4  # resolution of the stored label maps used to label patches


class SyntheticOptions(BaseModel):
    """Options of the synthetic dataset."""

    model_config = ConfigDict(extra="forbid")
    reads_root: ClassVar[bool] = False  # it draws its slides: the core refuses a data root

    centres: int = Field(3, ge=1, le=32, description="scanning centres (stain styles)")
    slides_per_centre: int = Field(4, ge=1, description="slides drawn per centre")
    slide_size: int = Field(1536, ge=256, le=8192, description="slide side in pixels at 0.5 µm/px")
    regions: int = Field(6, ge=1, le=64, description="grade regions per slide")
    stain_shift: float = Field(1.0, ge=0.0, le=3.0, description="how far centres' stains differ (0: identical)")
    seed: int | None = Field(None, description="drawing seed (default: the run's seed)")
    val_fraction: float = Field(0.25, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.25, ge=0.0, lt=1.0)


def slide_name(centre: int, index: int) -> str:
    return f"centre{centre}_slide{index}"


def _drawing_key(options: SyntheticOptions, seed: int) -> dict:
    fields = ("centres", "slides_per_centre", "slide_size", "regions", "stain_shift")
    return {"version": GENERATOR_VERSION, "seed": seed, **{f: getattr(options, f) for f in fields}}


def ensure_slides(options: SyntheticOptions, cache_dir: Path, seed: int) -> Path:
    """Folder holding the drawn slides for ``options`` (drawn now unless already cached)."""
    stains = centre_stains(options.centres, seed, options.stain_shift)
    jobs = [(c, i) for c in range(options.centres) for i in range(options.slides_per_centre)]

    def draw_all(work: Path) -> None:
        def draw(job: tuple[int, int]) -> None:
            c, i = job
            slide = draw_slide(options.slide_size, stains[c], seed, c, i, options.regions)
            name = slide_name(c, i)
            write_labelled_slide(work, name, slide.rgb, slide.tumour, MPP)
            step = LABEL_DOWNSAMPLE
            save_label_maps(work, name, grade=slide.grade[::step, ::step], tumour=slide.tumour[::step, ::step])

        map_threads(draw, jobs)

    return cached_folder(Path(cache_dir) / "synthetic", _drawing_key(options, seed), draw_all)


def _label_patches(reader: SlideReader, rows: list[dict]) -> list[dict]:
    """Grade label (majority pattern) and tumour fraction of every patch, from the label maps."""
    maps = label_maps(reader)
    squares = patch_squares(rows, reader)
    per_grade = np.stack(
        [fraction_map(maps["grade"] == g + 1, LABEL_DOWNSAMPLE).fraction(*squares) for g in range(len(GRADES))]
    )
    tumour = fraction_map(maps["tumour"] > 0, LABEL_DOWNSAMPLE).fraction(*squares)
    for row, label, target in zip(rows, per_grade.argmax(axis=0), np.atleast_1d(tumour)):
        row["label"], row["target"] = int(label), float(np.clip(target, 0.0, 1.0))
    return rows


def _tissue(reader: SlideReader):
    return fraction_map(label_maps(reader)["grade"] > 0, LABEL_DOWNSAMPLE)


def build(options: SyntheticOptions, context: DatasetContext) -> PreparedData:
    """Draw (or reuse) the slides, tile them and label every patch."""
    seed = context.seed if options.seed is None else options.seed
    folder = ensure_slides(options, context.cache_dir, seed)
    names = {slide_name(c, i): c for c in range(options.centres) for i in range(options.slides_per_centre)}
    strata = {n: f"centre{c}" for n, c in names.items()}
    splits = split_groups(names, {"val": options.val_fraction, "test": options.test_fraction}, seed, strata)
    slides = []
    for name, centre in names.items():
        fields = {
            "slide_id": name,
            "source": f"centre{centre}",
            "mask": str(folder / f"{name}_mask.tif"),
            "split": splits[name],
        }
        slides.append((folder / f"{name}.tif", fields))
    rows, skipped = tile_slides(slides, context, label_rows=_label_patches, tissue=_tissue)
    return prepare(rows, context, tuple(TargetKind), skipped, str(folder), class_names=list(GRADES), seg_classes=2)


@sassl_core.hookimpl
def sassl_register_datasets(register):
    register("synthetic", build, SyntheticOptions)
