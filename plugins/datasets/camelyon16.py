"""``camelyon16``: lymph-node metastasis segmentation (and patch tumour / normal classification).

Layout (``root``)::

    training/normal/*.tif   training/tumor/*.tif
    training/lesion_annotations/<slide>.xml   (or lesion_annotations/ at the root)
    testing/images/*.tif    testing/lesion_annotations/<slide>.xml
    testing/reference.csv   name, class (Tumor/Normal)[, lesion type, location]; header optional

Annotations are ASAP XML: ``Annotations/Annotation`` with ``PartOfGroup`` ``_0``, ``_1`` or
``Tumor`` (tumour polygons) or ``_2``/``Exclusion`` (holes cut out of the tumour), each a
``Coordinates/Coordinate`` list with ``X``, ``Y`` (level-0 pixels) and ``Order``. They are
rasterised, tile by tile, into a tumour mask TIFF per slide under ``<cache_dir>/camelyon16/``
(1 = tumour, red channel, at ``1/mask_downsample`` of the slide's resolution), which the rows
carry for segmentation. Patch ``label`` = 1 when the patch holds at least
``min_tumour_fraction`` tumour, ``target`` = its tumour fraction. The paper (§4.1) keeps the
slides containing tumour only (``tumour_slides_only``). Training slides give train (and
optionally val) by slide; the testing slides are the test split. ``source`` is the slide.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from skimage.draw import polygon as fill_polygon

import sassl_core
from sassl_core.errors import UserError
from sassl_core.interfaces import DatasetContext, PreparedData, TargetKind
from sassl_core.wsi.reader import SlideReader
from sassl_plugins.datasets.common import (
    fraction_map,
    patch_extent,
    prepare,
    read_text,
    require_root,
    split_groups,
    tile_slides,
)
from sassl_plugins.datasets.tiff_slides import level_shapes, write_pyramid

TUMOUR_GROUPS = {"_0", "_1", "tumor", "tumour", "metastases"}
EXCLUSION_GROUPS = {"_2", "exclusion"}
IGNORED_GROUPS = {"none"}
ANNOTATION_FOLDERS = ("training/lesion_annotations", "lesion_annotations", "testing/lesion_annotations")
COARSE_SIDE = 4096  # longest side of the in-memory raster used to label patches
MASK_TILE = 512


class Camelyon16Options(BaseModel):
    """Options of the CAMELYON16 dataset."""

    model_config = ConfigDict(extra="forbid")

    tumour_slides_only: bool = Field(True, description="keep only slides containing tumour (paper §4.1)")
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="share of training slides for validation")
    min_tumour_fraction: float = Field(0.01, gt=0.0, le=1.0, description="tumour share making a patch 'tumour'")
    mask_downsample: int = Field(4, ge=1, le=64, description="mask resolution: 1/n of the slide's level 0")
    fallback_mpp: float | None = Field(None, gt=0, description="µm/px for slides without a resolution")


@dataclass
class Lesions:
    """Tumour polygons and exclusion holes of one slide, level-0 ``(N, 2)`` arrays of (x, y)."""

    tumour: list[np.ndarray] = field(default_factory=list)
    exclusion: list[np.ndarray] = field(default_factory=list)

    def digest(self) -> str:
        h = hashlib.sha256()
        for part in self.tumour + [np.zeros((1, 2))] + self.exclusion:
            h.update(np.ascontiguousarray(part, np.float64).tobytes())
        return h.hexdigest()[:16]

    def rasterise(self, x: int, y: int, h: int, w: int, scale: float) -> np.ndarray:
        """uint8 ``(h, w)`` window at ``(x, y)`` of the raster at ``scale`` level-0 px per pixel."""
        out = np.zeros((h, w), np.uint8)
        for polygons, value in ((self.tumour, 1), (self.exclusion, 0)):
            for points in polygons:
                cols, rows = points[:, 0] / scale - x, points[:, 1] / scale - y
                if cols.max() < 0 or rows.max() < 0 or cols.min() >= w or rows.min() >= h:
                    continue
                rr, cc = fill_polygon(rows, cols, shape=(h, w))
                out[rr, cc] = value
        return out


def parse_asap(path: Path) -> Lesions:
    """Polygons of an ASAP annotation file; malformed content raises naming the file."""
    try:
        tree = ET.parse(path)
    except (ET.ParseError, OSError) as err:
        raise UserError(f"{path}: malformed annotation XML ({err})") from None
    lesions = Lesions()
    for k, annotation in enumerate(tree.getroot().iter("Annotation")):
        group = annotation.get("PartOfGroup", "").strip()
        if group.lower() in IGNORED_GROUPS:
            continue
        if group.lower() not in TUMOUR_GROUPS | EXCLUSION_GROUPS:
            known = ", ".join(sorted(TUMOUR_GROUPS | EXCLUSION_GROUPS))
            raise UserError(f"{path}: annotation {k}: PartOfGroup: expected one of {known}, found {group!r}")
        coords = annotation.findall("./Coordinates/Coordinate")
        try:
            ordered = sorted(coords, key=lambda c: int(c.get("Order", "0")))
            points = np.array([[float(c.get("X", "")), float(c.get("Y", ""))] for c in ordered])
        except (TypeError, ValueError):
            raise UserError(f"{path}: annotation {k}: expected numeric X, Y and Order on every Coordinate") from None
        if len(points) < 3:
            raise UserError(
                f"{path}: annotation {k}: expected a polygon of at least 3 coordinates, found {len(points)}"
            )
        (lesions.tumour if group.lower() in TUMOUR_GROUPS else lesions.exclusion).append(points)
    return lesions


def read_reference(path: Path) -> dict[str, str]:
    """``testing/reference.csv``: lower-case slide name -> 'tumor' or 'normal'."""
    if not path.is_file():
        return {}
    out = {}
    for line_no, line in enumerate(read_text(path).splitlines(), start=1):
        fields = [f.strip() for f in line.split(",")]
        if not fields[0] or (line_no == 1 and fields[0].lower() in {"name", "image", "slide"}):
            continue
        if len(fields) < 2 or fields[1].lower() not in {"tumor", "normal"}:
            raise UserError(f"{path}: line {line_no}: class: expected Tumor or Normal, found {line!r}")
        out[Path(fields[0]).stem.lower()] = fields[1].lower()
    return out


def _annotation(root: Path, stem: str) -> Path | None:
    for folder in ANNOTATION_FOLDERS:
        for candidate in (root / folder).glob("*.xml") if (root / folder).is_dir() else ():
            if candidate.stem.lower() == stem.lower():
                return candidate
    return None


def write_mask(reader: SlideReader, lesions: Lesions, folder: Path, downsample: int) -> Path:
    """Tumour mask TIFF of one slide (reused when its lesions and size are unchanged)."""
    width, height = reader.dimensions
    key = f"{reader.path.stem}_{lesions.digest()}_{width}x{height}_d{downsample}"
    path = folder / f"{key}_mask.tif"
    if path.is_file():
        return path
    shapes = level_shapes(-(-height // downsample), -(-width // downsample), levels=32, tile=MASK_TILE)

    def render(level_downsample: float, y: int, x: int, h: int, w: int) -> np.ndarray:
        rgb = np.zeros((h, w, 3), np.uint8)
        rgb[..., 0] = lesions.rasterise(x, y, h, w, downsample * level_downsample)
        return rgb

    mpp = reader.mpp * downsample if reader.mpp_source else None
    return write_pyramid(path, shapes, render, mpp=mpp, tile=MASK_TILE, compression="zlib")


class _Slides:
    """The slide list of the layout and per-slide lesions, masks and patch labels."""

    def __init__(self, root: Path, options: Camelyon16Options, cache: Path):
        self.root, self.options, self.cache = root, options, cache
        self.lesions: dict[str, Lesions] = {}

    def collect(self) -> list[tuple[Path, str, bool]]:
        """``(path, split group, contains tumour)`` of every slide kept."""
        found = [(p, "training", True) for p in sorted((self.root / "training" / "tumor").glob("*.tif"))]
        found += [(p, "training", False) for p in sorted((self.root / "training" / "normal").glob("*.tif"))]
        reference = read_reference(self.root / "testing" / "reference.csv")
        for p in sorted((self.root / "testing" / "images").glob("*.tif")):
            cls = reference.get(p.stem.lower())
            found.append((p, "testing", cls == "tumor" if cls else _annotation(self.root, p.stem) is not None))
        if not found:
            raise UserError(
                f"{self.root}: expected slides in training/tumor, training/normal or testing/images, found none"
            )
        for path, _, tumour in found:
            xml = _annotation(self.root, path.stem)
            if tumour and path.parent.name == "tumor" and xml is None:
                raise UserError(f"{path}: tumour slide without lesion annotation (expected {path.stem}.xml)")
            self.lesions[path.stem] = parse_asap(xml) if xml is not None else Lesions()
        return [f for f in found if f[2] or not self.options.tumour_slides_only]

    def mask_for(self, reader: SlideReader) -> str:
        return str(write_mask(reader, self.lesions[reader.path.stem], self.cache, self.options.mask_downsample))

    def label(self, reader: SlideReader, rows: list[dict]) -> list[dict]:
        """Write the slide's mask; label each patch by its tumour fraction."""
        mask = self.mask_for(reader)
        lesions = self.lesions[reader.path.stem]
        scale = max(max(reader.dimensions) / COARSE_SIDE, 1.0)
        w, h = (int(np.ceil(d / scale)) for d in reader.dimensions)
        coarse = fraction_map(lesions.rasterise(0, 0, h, w, scale) > 0, scale)
        xs, ys = [r["x"] for r in rows], [r["y"] for r in rows]
        share = np.atleast_1d(coarse.fraction(xs, ys, patch_extent(rows[0], reader))) if rows else np.empty(0)
        for row, s in zip(rows, share):
            row.update(mask=mask, target=float(s), label=int(s >= self.options.min_tumour_fraction))
        return rows


def build(options: Camelyon16Options, context: DatasetContext) -> PreparedData:
    """Tile every kept slide; rasterise its annotations into a mask; label its patches."""
    root = require_root(context, "camelyon16", "the folder holding training/ and testing/")
    slides = _Slides(root, options, Path(context.cache_dir) / "camelyon16")
    kept = slides.collect()
    training = [p.stem for p, group, _ in kept if group == "training"]
    splits = split_groups(training, {"val": options.val_fraction}, context.seed)
    items = [
        (path, {"slide_id": path.stem, "source": path.stem, "split": splits.get(path.stem, "test")})
        for path, group, _ in kept
    ]
    rows, skipped = tile_slides(items, context, label_rows=slides.label, fallback_mpp=options.fallback_mpp)
    return prepare(
        rows,
        context,
        (TargetKind.MASK, TargetKind.LABEL),
        skipped,
        str(root),
        class_names=["normal", "tumour"],
        seg_classes=2,
    )


@sassl_core.hookimpl
def sassl_register_datasets(register):
    register("camelyon16", build, Camelyon16Options)
