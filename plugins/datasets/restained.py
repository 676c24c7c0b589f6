"""``restained``: a multi-centre stain-shift dataset made of real H&E tissue.

Every slide (any format OpenSlide reads) or plain image under ``--data-root`` is cut into square
blocks of tissue at the target resolution, the **pseudo-slides** (``block`` pixels a side; a
block needs ``block_tissue`` tissue). The blocks are dealt, seeded, to ``centres`` centres, so
every centre holds different tissue and at least two slides.

The stains of each block are separated once with Macenko's method (Macenko et al. 2009, "A
method for normalizing histology slides for quantitative analysis", ISBI; the ``macenko`` stain
plugin's machinery): one stain matrix per source file (its blocks pooled), the block's H and E
concentrations by least squares against it, and the optical density they leave unexplained (ink,
pigment). Each block is then recomposed with its centre's stain and scanner, drawn per centre
with a small per-slide jitter, as a change of its own file's stain
(:mod:`sassl_plugins.datasets.restained_stains`, which gives the ranges and why): centre 0 keeps
the source's own stain, and ``stain_shift`` scales every difference (0: every centre shows the
source's stain).

Labels come from the unshifted concentrations, so none can be read off the colour. Haematoxylin
is measured in units of its file's 99th percentile (comparable across files): ``mask`` = nuclei
(haematoxylin above ``nuclei_threshold``, opened and with holes filled; classes 0/1),
``target`` = the nuclear fraction of the patch (a cellularity, as BreastPathQ scores it),
``label`` = that fraction binned by its tertiles over all patches (``sparse``, ``medium``,
``dense``). Both are morphology — the area the nuclei cover — not stain intensity, so a per-image
stain normaliser (which rescales every image's haematoxylin to its target's) keeps them readable,
as it keeps a tumour grade readable.

Written once as pyramidal TIFFs with a lossless mask TIFF and the label maps each, under
``<cache_dir>/restained/<hash of the options and the source files' sizes and times>/``; later
runs reuse them. ``source`` is ``centre<k>``, ``slide_id`` the pseudo-slide; splits are by
slide, stratified by centre.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage

import sassl_core
from sassl_core.color import as_float_images, rgb_to_od
from sassl_core.errors import UserError
from sassl_core.interfaces import DatasetContext, PreparedData, TargetKind
from sassl_core.wsi.cache import read_patch
from sassl_core.wsi.reader import SlideReader
from sassl_core.wsi.tiling import SLIDE_SUFFIXES, find_slides
from sassl_core.wsi.tissue import tissue_from_thumbnail
from sassl_plugins.datasets.common import (
    cached_folder,
    fraction_map,
    label_maps,
    map_threads,
    patch_squares,
    prepare,
    require_root,
    save_label_maps,
    split_groups,
    tile_slides,
    write_labelled_slide,
)
from sassl_plugins.datasets.restained_stains import centre_draws, render, slide_stain
from sassl_plugins.stain.macenko import Macenko, MacenkoOptions

VERSION = 2  # bump when the making changes, so cached pseudo-slides are remade
CLASS_NAMES = ("sparse", "medium", "dense")
MIN_BLOCK = 256  # default block side: 4 patches, at least this many pixels
ESTIMATION_PIXELS = 1 << 20  # pixels per source file that estimate its stain matrix


class RestainedOptions(BaseModel):
    """Options of the restained dataset."""

    model_config = ConfigDict(extra="forbid")

    centres: int = Field(5, ge=4, le=32, description="centres (stain styles); each gets >= 2 pseudo-slides")
    block: int | None = Field(
        None,
        ge=32,
        le=8192,
        description="pseudo-slide side in pixels at the target resolution (default: 4 patches, >= 256)",
    )
    block_tissue: float = Field(0.5, gt=0.0, le=1.0, description="least tissue fraction of a kept block")
    max_blocks_per_file: int = Field(64, ge=1, description="blocks cut from one source file at most (seeded sample)")
    source_mpp: float = Field(0.5, gt=0.0, description="µm/px of images with no resolution (--fallback-mpp wins)")
    stain_shift: float = Field(1.0, ge=0.0, le=3.0, description="how far centres' stains differ (0: identical)")
    slide_jitter: float = Field(0.15, ge=0.0, le=1.0, description="per-slide jitter, a fraction of each span")
    max_blur: float = Field(0.0, ge=0.0, le=4.0, description="largest scanner blur sigma in px (0: none)")
    jpeg_quality: int | None = Field(None, ge=10, le=95, description="lowest JPEG re-encoding quality (None: none)")
    nuclei_threshold: float = Field(
        0.35, gt=0.0, lt=2.0, description="nuclei: haematoxylin above this times its 99th percentile"
    )
    seed: int | None = Field(None, description="dealing and stain seed (default: the run's seed)")
    val_fraction: float = Field(0.25, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.25, ge=0.0, lt=1.0)


def slide_name(centre: int, index: int) -> str:
    return f"centre{centre}_slide{index}"


def source_files(context: DatasetContext) -> list[Path]:
    """The slides and images under the data root (a folder or one file), leaving out the cache."""
    root = require_root(context, "restained", "a folder of H&E slides or images")
    if not root.exists():
        raise UserError(f"data.root: {root} not found (dataset 'restained' needs a folder of H&E slides or images)")
    cache = Path(context.cache_dir).resolve()
    files = [p for p in find_slides([root]) if not p.resolve().is_relative_to(cache)]
    if not files:
        raise UserError(f"{root}: no slides or images found (extensions {' '.join(sorted(SLIDE_SUFFIXES))})")
    return files


@dataclasses.dataclass
class SourceStain:
    """A source file's Macenko estimate: unit stain vectors ``(2, 3)`` (H, E) and the 99th
    percentile concentration of each stain."""

    vectors: np.ndarray
    max_concentration: np.ndarray


def estimate_stain(blocks: list[np.ndarray]) -> SourceStain:
    """Macenko's stain matrix and max concentrations of the pooled ``blocks`` (uint8 RGB)."""
    stride = max(1, int(np.ceil(np.sqrt(sum(b.shape[0] * b.shape[1] for b in blocks) / ESTIMATION_PIXELS))))
    fitted = Macenko(MacenkoOptions()).fit(np.stack([b[::stride, ::stride] for b in blocks]))
    return SourceStain(fitted.target_stains.double().numpy(), fitted.target_max.double().numpy())


def separate(rgb: np.ndarray, own: SourceStain) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative H and E concentrations ``(2, h, w)`` of ``rgb`` against its file's stain
    ``own`` (least squares, Macenko et al. 2009, clamped at 0), and the optical density they
    leave unexplained ``(3, h, w)``: ink, pigment, noise and the negative part of the fit (a pixel
    pinker than the eosin vector). Recomposing with ``own`` and the residual gives ``rgb`` back;
    a centre re-stains only the concentrations, so ink and pink keep their colour.
    """
    od = rgb_to_od(as_float_images(np.require(rgb, requirements="W"))).flatten(2).double()[0]
    vectors = torch.from_numpy(own.vectors)
    conc = Macenko(MacenkoOptions()).concentrations(od[None], vectors[None])[0].clamp(min=0.0)
    residual = od - vectors.T @ conc
    shape = rgb.shape[:2]
    return conc.reshape(2, *shape).float().numpy(), residual.reshape(3, *shape).float().numpy()


def nuclei_mask(haematoxylin: np.ndarray, threshold: float) -> np.ndarray:
    """Nuclei: haematoxylin above ``threshold``, opened (3x3 cross: specks and threads go) and
    with holes filled (pale chromatin inside a nucleus)."""
    mask = ndimage.binary_opening(haematoxylin > threshold)
    return ndimage.binary_fill_holes(mask)


@dataclasses.dataclass
class Block:
    """A source block: its tiling row (``slide``, ``x``, ``y``, ``level``, ``read_size``) and
    where it was dealt."""

    row: dict
    centre: int = -1
    index: int = -1


def _cut_blocks(files: list[Path], side: int, options: RestainedOptions, context: DatasetContext, seed: int):
    """Tissue blocks of every file (``(block rows per file, skipped)``), from the shared tiler."""
    fallback = context.fallback_mpp or options.source_mpp
    as_blocks = dataclasses.replace(
        context,
        patch_size=side,
        tissue_threshold=options.block_tissue,
        max_per_slide=options.max_blocks_per_file,
        seed=seed,
    )
    rows, skipped = tile_slides([(f, {}) for f in files], as_blocks, fallback_mpp=fallback)
    per_file: dict[str, list[dict]] = {}
    for row in rows:
        per_file.setdefault(row["slide"], []).append(row)
    return per_file, skipped


def make_slides(work: Path, files: list[Path], side: int, options: RestainedOptions, context, seed: int) -> None:
    """Cut, separate, deal and re-stain the source tissue into ``work`` (see the module doc);
    ``slides.json`` lists the pseudo-slides with their origin and stain, the files' stains and
    the skipped files."""
    per_file, skipped = _cut_blocks(files, side, options, context, seed)
    stains: dict[str, SourceStain] = {}
    for path, rows in per_file.items():
        try:
            stains[path] = estimate_stain([read_patch(r, side) for r in rows])
        except ValueError as err:  # no tissue pixels for Macenko
            if context.strict:
                raise UserError(f"{path}: {err}") from None
            skipped.append(f"{path}: {err}")
    blocks = [Block(row) for path in stains for row in per_file[path]]
    if len(blocks) < 2 * options.centres:
        detail = f"; skipped: {'; '.join(skipped[:3])}" if skipped else ""
        raise UserError(
            f"{context.root}: dataset 'restained' found {len(blocks)} tissue blocks of {side} px, needs "
            f"{2 * options.centres} (2 per centre): lower options.block or options.centres, or add slides{detail}"
        )
    for rank, i in enumerate(np.random.default_rng([seed, 1]).permutation(len(blocks))):
        blocks[i].centre, blocks[i].index = rank % options.centres, rank // options.centres
    draws = centre_draws(options.centres, seed, options.stain_shift)

    def restain(block: Block) -> dict:
        source = read_patch(block.row, side)
        own = stains[block.row["slide"]]
        conc, residual = separate(source, own)
        haematoxylin = conc[0] / np.float32(max(own.max_concentration[0], 1e-6))  # comparable across files
        tissue = tissue_from_thumbnail(source)
        nuclei = nuclei_mask(haematoxylin, options.nuclei_threshold) & tissue
        rng = np.random.default_rng([seed, 3, block.centre, block.index])
        stain = slide_stain(
            draws[block.centre], rng, options.slide_jitter, options.stain_shift, options.max_blur, options.jpeg_quality
        )
        name = slide_name(block.centre, block.index)
        rgb = render(conc, own.vectors, stain, residual)
        write_labelled_slide(work, name, rgb, nuclei.astype(np.uint8), context.target_mpp)
        save_label_maps(work, name, nuclei=nuclei, tissue=tissue)
        origin = {k: block.row[k] for k in ("slide", "x", "y")}
        return {"name": name, "centre": block.centre, **origin, "stain": dataclasses.asdict(stain)}

    slides = map_threads(restain, blocks)
    manifest = {
        "slides": sorted(slides, key=lambda s: (s["centre"], s["name"])),
        "source_stains": {
            p: {"vectors": v.vectors.tolist(), "max": v.max_concentration.tolist()} for p, v in stains.items()
        },
        "skipped": skipped,
    }
    (work / "slides.json").write_text(json.dumps(manifest, indent=1))


def _making_key(files: list[Path], side: int, options: RestainedOptions, context: DatasetContext, seed: int) -> dict:
    fields: tuple[str, ...] = ("centres", "block_tissue", "max_blocks_per_file", "stain_shift", "slide_jitter")
    fields += ("max_blur", "jpeg_quality", "nuclei_threshold")
    stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return {
        "version": VERSION,
        "seed": seed,
        "block": side,
        "target_mpp": context.target_mpp,
        "source_mpp": context.fallback_mpp or options.source_mpp,
        "files": stats,
        **{f: getattr(options, f) for f in fields},
    }


def ensure_slides(options: RestainedOptions, context: DatasetContext) -> tuple[Path, dict]:
    """The folder of pseudo-slides for ``options`` and the sources under ``context.root`` (made
    now unless already cached) and its manifest."""
    files = source_files(context)
    side = options.block or max(MIN_BLOCK, 4 * context.patch_size)
    if side < context.patch_size:
        raise UserError(f"options.block: expected at least the patch size ({context.patch_size} px), found {side}")
    seed = context.seed if options.seed is None else options.seed
    key = _making_key(files, side, options, context, seed)
    folder = cached_folder(
        Path(context.cache_dir) / "restained", key, lambda work: make_slides(work, files, side, options, context, seed)
    )
    manifest = json.loads((folder / "slides.json").read_text())
    if context.strict and manifest["skipped"]:
        raise UserError(manifest["skipped"][0])
    return folder, manifest


def _label_patches(reader: SlideReader, rows: list[dict]) -> list[dict]:
    """Nuclear fraction (``target``) of every patch, from the label maps."""
    nuclear = np.atleast_1d(fraction_map(label_maps(reader)["nuclei"], 1).fraction(*patch_squares(rows, reader)))
    for row, fraction in zip(rows, nuclear):
        row["target"] = float(np.clip(fraction, 0.0, 1.0))
    return rows


def _tissue(reader: SlideReader):
    return fraction_map(label_maps(reader)["tissue"], 1)


def tertile_labels(values: np.ndarray) -> np.ndarray:
    """Class 0, 1, 2 of each value: below, between or above the tertiles of ``values``."""
    return np.searchsorted(np.quantile(values, [1 / 3, 2 / 3]), values, side="right")


def build(options: RestainedOptions, context: DatasetContext) -> PreparedData:
    """Make (or reuse) the pseudo-slides, tile them and label every patch."""
    folder, manifest = ensure_slides(options, context)
    seed = context.seed if options.seed is None else options.seed
    names = {s["name"]: f"centre{s['centre']}" for s in manifest["slides"]}
    splits = split_groups(names, {"val": options.val_fraction, "test": options.test_fraction}, seed, names)
    slides = [
        (
            folder / f"{name}.tif",
            {"slide_id": name, "source": centre, "mask": str(folder / f"{name}_mask.tif"), "split": splits[name]},
        )
        for name, centre in names.items()
    ]
    rows, skipped = tile_slides(slides, context, label_rows=_label_patches, tissue=_tissue)
    if rows:
        labels = tertile_labels(np.array([r["target"] for r in rows]))
        for row, label in zip(rows, labels):
            row["label"] = int(label)
    return prepare(
        rows,
        context,
        tuple(TargetKind),
        manifest["skipped"] + skipped,
        str(folder),
        class_names=list(CLASS_NAMES),
        seg_classes=2,
    )


@sassl_core.hookimpl
def sassl_register_datasets(register):
    register("restained", build, RestainedOptions)
