"""``synthetic``: the zero-setup multi-centre dataset (classification, regression, segmentation).

Small whole slides are drawn by :mod:`sassl_plugins.datasets.synthetic_slides` — morphology
carries the labels, the stain varies by centre — and written once as pyramidal TIFFs (0.5 µm/px
at level 0, JPEG) with a lossless tumour mask TIFF each, under
``<cache_dir>/synthetic/<hash of the options>/``; later runs reuse them.

Per patch: ``label`` = the grade pattern covering most of the patch (``low``, ``intermediate``,
``high``), ``target`` = the tumour fraction of the patch (from the mask), ``mask`` = the
tumour mask (1 = tumour). ``source`` is the centre, ``slide_id`` the slide (the run's
``sassl.source_key`` picks which is the stain source). Splits are by slide, stratified by centre; ``test_centre`` holds a
whole centre out as the test split instead — the stain-shift benchmark.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

import sassl_core
from sassl_core.interfaces import DatasetContext, PreparedData
from sassl_core.wsi.reader import SlideReader, write_pyramid_tiff
from sassl_plugins.datasets.common import fraction_map, patch_extent, prepare, split_groups, tile_slides
from sassl_plugins.datasets.synthetic_slides import GRADES, centre_stains, draw_slide

GENERATOR_VERSION = 1  # bump when the drawing changes, so cached slides are redrawn
MPP = 0.5
LABEL_DOWNSAMPLE = 4  # resolution of the stored label maps used to label patches


class SyntheticOptions(BaseModel):
    """Options of the synthetic dataset."""

    model_config = ConfigDict(extra="forbid")

    centres: int = Field(3, ge=1, le=32, description="scanning centres (stain styles)")
    slides_per_centre: int = Field(4, ge=1, description="slides drawn per centre")
    slide_size: int = Field(1536, ge=256, le=8192, description="slide side in pixels at 0.5 µm/px")
    regions: int = Field(6, ge=1, le=64, description="grade regions per slide")
    stain_shift: float = Field(1.0, ge=0.0, le=3.0, description="how far centres' stains differ (0: identical)")
    seed: int | None = Field(None, description="drawing seed (default: the run's seed)")
    test_centre: int | None = Field(None, ge=0, description="hold this centre out as the test split")
    val_fraction: float = Field(0.25, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.25, ge=0.0, lt=1.0, description="ignored when test_centre is set")

    @model_validator(mode="after")
    def _check(self) -> SyntheticOptions:
        if self.test_centre is not None and self.test_centre >= self.centres:
            raise ValueError(f"test_centre must be below centres ({self.centres}), found {self.test_centre}")
        return self


def slide_name(centre: int, index: int) -> str:
    return f"centre{centre}_slide{index}"


def _drawing_key(options: SyntheticOptions, seed: int) -> dict:
    fields = ("centres", "slides_per_centre", "slide_size", "regions", "stain_shift")
    return {"version": GENERATOR_VERSION, "seed": seed, **{f: getattr(options, f) for f in fields}}


def ensure_slides(options: SyntheticOptions, cache_dir: Path, seed: int) -> Path:
    """Folder holding the drawn slides for ``options`` (drawn now unless already cached)."""
    key = _drawing_key(options, seed)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(cache_dir) / "synthetic" / digest
    if (folder / "done.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=folder.parent))
    stains = centre_stains(options.centres, seed, options.stain_shift)
    jobs = [(c, i) for c in range(options.centres) for i in range(options.slides_per_centre)]

    def draw(job: tuple[int, int]) -> None:
        c, i = job
        slide = draw_slide(options.slide_size, stains[c], seed, c, i, options.regions)
        name = slide_name(c, i)
        write_pyramid_tiff(work / f"{name}.tif", slide.rgb, MPP, levels=3, tile=256)
        write_pyramid_tiff(work / f"{name}_mask.tif", _red(slide.tumour), MPP, levels=3, tile=256, label_mask=True)
        step = LABEL_DOWNSAMPLE
        np.savez_compressed(
            work / f"{name}_labels.npz", grade=slide.grade[::step, ::step], tumour=slide.tumour[::step, ::step]
        )

    try:
        with ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
            list(pool.map(draw, jobs))
        (work / "done.json").write_text(json.dumps(key, indent=1))
        try:
            work.replace(folder)
        except OSError:  # drawn meanwhile by another process: keep theirs
            if not (folder / "done.json").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder


def _red(labels: np.ndarray) -> np.ndarray:
    rgb = np.zeros((*labels.shape, 3), np.uint8)
    rgb[..., 0] = labels
    return rgb


def _label_maps(reader: SlideReader):
    return np.load(reader.path.with_name(f"{reader.path.stem}_labels.npz"))


def _label_patches(reader: SlideReader, rows: list[dict]) -> list[dict]:
    """Grade label (majority pattern) and tumour fraction of every patch, from the label maps."""
    maps = _label_maps(reader)
    xs, ys = np.array([r["x"] for r in rows]), np.array([r["y"] for r in rows])
    size0 = patch_extent(rows[0], reader)
    per_grade = np.stack(
        [fraction_map(maps["grade"] == g + 1, LABEL_DOWNSAMPLE).fraction(xs, ys, size0) for g in range(len(GRADES))]
    )
    tumour = fraction_map(maps["tumour"] > 0, LABEL_DOWNSAMPLE).fraction(xs, ys, size0)
    for row, label, target in zip(rows, per_grade.argmax(axis=0), np.atleast_1d(tumour)):
        row["label"], row["target"] = int(label), float(np.clip(target, 0.0, 1.0))
    return rows


def _tissue(reader: SlideReader):
    return fraction_map(_label_maps(reader)["grade"] > 0, LABEL_DOWNSAMPLE)


def build(options: SyntheticOptions, context: DatasetContext) -> PreparedData:
    """Draw (or reuse) the slides, tile them and label every patch."""
    seed = context.seed if options.seed is None else options.seed
    folder = ensure_slides(options, context.cache_dir, seed)
    names = {slide_name(c, i): c for c in range(options.centres) for i in range(options.slides_per_centre)}
    if options.test_centre is not None:
        splits = {n: "test" for n, c in names.items() if c == options.test_centre}
        rest = {n: f"centre{c}" for n, c in names.items() if c != options.test_centre}
        splits.update(split_groups(rest, {"val": options.val_fraction}, seed, strata=rest))
    else:
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
    return prepare(rows, context, ("cls", "reg", "seg"), skipped, str(folder), class_names=list(GRADES), seg_classes=2)


@sassl_core.hookimpl
def sassl_register_datasets(register):
    register("synthetic", build, SyntheticOptions)
