"""Reading whole-slide images and plain images through one interface.

:func:`open_slide` returns a :class:`SlideReader` for any file OpenSlide reads (SVS, generic
tiled TIFF, NDPI, MRXS, ...) and, through the same interface with a single level, for plain
RGB images (PNG / JPEG / untiled TIFF patches such as BreastPathQ's). Coordinates are level-0
pixels (OpenSlide's convention); regions outside the image read as background.

The resolution (µm per level-0 pixel) comes from the file (``openslide.mpp-x/y`` or TIFF
resolution tags), else from the objective power (mpp ≈ 10 / power, logged as an estimate),
else from the caller's ``fallback_mpp``; otherwise it is an error, never a silent guess.

Plain images are decoded whole, so one declaring more than ``max_image_pixels()`` pixels (a
decompression bomb: a few kB of deflate can declare 20000 x 20000 px) is refused before
decoding; the limit is raised with the environment variable ``SASSL_MAX_IMAGE_PIXELS``.
"""

from __future__ import annotations

import logging
import os
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from pathlib import Path

import numpy as np
import openslide
from PIL import Image

from sassl_core.errors import UserError

log = logging.getLogger(__name__)

# Resolutions outside this range (µm/px) are not microscopy: typically a 72/96/300 dpi
# default written by an image editor. They are treated as absent.
PLAUSIBLE_MPP = (0.05, 20.0)
PLAIN_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
# Whole-slide formats that only OpenSlide reads: when it does not recognise such a file, the
# file is damaged (a cut-off download), not of another format.
SLIDE_ONLY_SUFFIXES = {".svs", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif"}
# A thumbnail is built from blocks of at most this many pixels a side when the slide has no level
# small enough to read whole: OpenSlide's get_thumbnail reads the whole level in one go, 40 GB
# of RGBA for a 100k x 100k slide stored without a pyramid.
THUMBNAIL_BLOCK = 4096
# Default pixel limit of a plain image decoded whole: PIL's MAX_IMAGE_PIXELS (~0.27 GB of RGB).
MAX_IMAGE_PIXELS = 89_478_485
# Advice in the error of a slide without a resolution: the flag of the command that reads it.
FALLBACK_FLAG = "--fallback-mpp"


class SlideReader(ABC):
    """A slide (or plain image) opened for region reads.

    Attributes: ``path``, ``dimensions`` (w, h at level 0), ``level_count``,
    ``level_dimensions``, ``level_downsamples``, ``mpp_source`` ('file', 'objective-power',
    'fallback' or None), the property ``mpp`` and ``fallback_flag`` (the option named in the
    error when no resolution is known).
    """

    fallback_flag = FALLBACK_FLAG

    def __init__(self, path: Path, level_dimensions, level_downsamples, mpp: float | None, mpp_source: str | None):
        self.path = Path(path)
        self.level_dimensions = tuple(tuple(int(v) for v in d) for d in level_dimensions)
        self.level_downsamples = tuple(float(d) for d in level_downsamples)
        self.level_count = len(self.level_dimensions)
        self.dimensions = self.level_dimensions[0]
        self._mpp = mpp
        self.mpp_source = mpp_source

    @property
    def mpp(self) -> float:
        """µm per level-0 pixel; raises :class:`UserError` when the file gives none."""
        if self._mpp is None:
            raise UserError(f"{self.path}: no resolution (openslide.mpp-x) in the file; pass {self.fallback_flag}")
        return self._mpp

    def use_fallback_mpp(self, mpp: float) -> None:
        """Take ``mpp`` as the resolution when the file gives none."""
        if mpp <= 0:
            raise UserError(f"{self.fallback_flag}: expected a positive resolution in µm/px, found {mpp}")
        if self._mpp is None:
            self._mpp, self.mpp_source = float(mpp), "fallback"

    def level_mpp(self, level: int) -> float:
        return self.mpp * self.level_downsamples[level]

    @abstractmethod
    def read(self, x: int, y: int, level: int, size: int, fill: int = 255) -> np.ndarray:
        """RGB uint8 ``(size, size, 3)`` of the square at level-0 ``(x, y)`` read at ``level``.

        Area outside the image (or transparent in the file) takes the value ``fill``.
        """

    @abstractmethod
    def thumbnail(self, max_side: int) -> np.ndarray:
        """RGB uint8 ``(h, w, 3)`` of the whole image, longest side ``max_side``."""

    def overview(self, max_side: int) -> np.ndarray:
        """RGB uint8 view of the whole image for tissue detection: longest side between
        ``max_side / 2`` and ``max_side``, taken as cheaply as the file allows."""
        return self.thumbnail(max_side)

    def close(self) -> None:  # noqa: B027 - a no-op unless the reader holds a file
        """Release the file."""

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, {self.dimensions}, levels={self.level_count})"


class OpenSlideReader(SlideReader):
    """A pyramidal slide read by OpenSlide."""

    def __init__(self, path: Path, slide: openslide.OpenSlide, mpp, mpp_source):
        super().__init__(path, slide.level_dimensions, slide.level_downsamples, mpp, mpp_source)
        self._slide = slide

    def read(self, x, y, level, size, fill=255):
        try:
            region = self._slide.read_region((int(x), int(y)), int(level), (int(size), int(size)))
        except openslide.OpenSlideError as err:  # a corrupt or truncated tile
            raise UserError(f"{self.path}: unreadable region at ({x}, {y}) level {level} ({err})") from None
        if region.getchannel("A").getextrema()[0] == 255:  # opaque (the usual case): PIL's C conversion
            return np.asarray(region.convert("RGB"))
        return _flatten_rgba(np.asarray(region), fill)

    def thumbnail(self, max_side):
        level = self._slide.get_best_level_for_downsample(max(self.dimensions) / max_side)
        if max(self.level_dimensions[level]) > THUMBNAIL_BLOCK:
            return self._thumbnail_by_blocks(level, max_side)
        try:
            image = self._slide.get_thumbnail((max_side, max_side))
        except openslide.OpenSlideError as err:  # a corrupt tile of the level it is read from
            raise UserError(f"{self.path}: unreadable slide thumbnail ({err})") from None
        return np.asarray(image.convert("RGB"))

    def overview(self, max_side):
        """The file's own thumbnail image (an SVS stores one) when it shows the whole slide at
        ``max_side / 2`` or more pixels a side (shrunk to ``max_side`` when larger): no pyramid
        level is decoded, which on a single-level slide would mean the whole scan."""
        stored = self._slide.associated_images.get("thumbnail") if max_side > 1 else None
        if stored is not None:
            (w, h), (sw, sh) = self.dimensions, stored.size
            if max_side / 2 <= max(sw, sh) and abs(sw / sh - w / h) <= 0.02 * w / h:
                stored = stored.convert("RGB")
                stored.thumbnail((max_side, max_side), Image.Resampling.BOX)
                return np.asarray(stored)
        return self.thumbnail(max_side)

    def _thumbnail_by_blocks(self, level: int, max_side: int) -> np.ndarray:
        """The thumbnail of ``level`` read and shrunk one ``THUMBNAIL_BLOCK`` square at a time,
        so memory stays bounded whatever the level's size."""
        (w, h), down = self.level_dimensions[level], self.level_downsamples[level]
        scale = max(w, h) / max_side  # level pixels per thumbnail pixel
        out = np.empty((max(1, round(h / scale)), max(1, round(w / scale)), 3), np.uint8)
        for y in range(0, h, THUMBNAIL_BLOCK):
            for x in range(0, w, THUMBNAIL_BLOCK):
                block = self.read(x * down, y * down, level, THUMBNAIL_BLOCK)[: h - y, : w - x]
                x0, x1 = round(x / scale), round(min(x + THUMBNAIL_BLOCK, w) / scale)
                y0, y1 = round(y / scale), round(min(y + THUMBNAIL_BLOCK, h) / scale)
                if x1 > x0 and y1 > y0:
                    out[y0:y1, x0:x1] = np.asarray(
                        Image.fromarray(block).resize((x1 - x0, y1 - y0), Image.Resampling.BOX)
                    )
        return out

    def close(self):
        self._slide.close()


class PlainImageReader(SlideReader):
    """A plain RGB image held in memory, presented as a one-level slide."""

    def __init__(self, path: Path, pixels: np.ndarray, mpp, mpp_source):
        h, w = pixels.shape[:2]
        super().__init__(path, [(w, h)], [1.0], mpp, mpp_source)
        self._pixels = pixels

    def read(self, x, y, level, size, fill=255):
        if level != 0:
            raise ValueError(f"{self.path}: a plain image has only level 0, asked for {level}")
        x, y, size = int(x), int(y), int(size)
        out = np.full((size, size, 3), fill, np.uint8)
        w, h = self.dimensions
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + size, w), min(y + size, h)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._pixels[y0:y1, x0:x1]
        return out

    def thumbnail(self, max_side):
        image = Image.fromarray(self._pixels)
        image.thumbnail((max_side, max_side), Image.Resampling.BOX)
        return np.asarray(image)


def _flatten_rgba(rgba: np.ndarray, fill: int) -> np.ndarray:
    """RGB of a non-premultiplied RGBA array composited over a uniform ``fill`` background."""
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha[..., None].astype(np.float32) / 255.0
    return (rgba[..., :3] * a + fill * (1.0 - a) + 0.5).astype(np.uint8)


def _plausible(mpp: float | None) -> float | None:
    if mpp is None or not (PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]):
        return None
    return mpp


def magnification_mpp(power: float) -> float:
    """µm/px of an objective magnification (the usual scanner optics: 40x ≙ 0.25, 20x ≙ 0.5)."""
    return 10.0 / power


def _openslide_mpp(path: Path, props) -> tuple[float | None, str | None]:
    try:
        values = [float(props[k]) for k in (openslide.PROPERTY_NAME_MPP_X, openslide.PROPERTY_NAME_MPP_Y) if k in props]
    except ValueError:
        values = []
    mpp = _plausible(float(np.mean(values)) if values else None)
    if mpp is not None:
        return mpp, "file"
    power = props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)
    try:
        power = float(power) if power is not None else None
    except ValueError:
        power = None
    if power and power > 0:
        mpp = magnification_mpp(power)
        log.warning("%s: no mpp in the file; estimated %.3f µm/px from objective power %gx", path, mpp, power)
        return mpp, "objective-power"
    return None, None


def _tiff_mpp(tif) -> float | None:
    """µm/px from a TIFF's XResolution / ResolutionUnit tags (None when absent or implausible)."""
    tags = tif.pages[0].tags
    if "XResolution" not in tags:
        return None
    num, den = tags["XResolution"].value
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
    per_unit = {2: 25400.0, 3: 10000.0}.get(unit)  # µm per inch / per cm
    if not per_unit or not num:
        return None
    return _plausible(per_unit * den / num)


def max_image_pixels() -> int:
    """Largest plain image (pixels) decoded whole: ``SASSL_MAX_IMAGE_PIXELS`` or ``MAX_IMAGE_PIXELS``."""
    value = os.environ.get("SASSL_MAX_IMAGE_PIXELS", "")
    if not value:
        return MAX_IMAGE_PIXELS
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit <= 0:
        raise UserError(f"SASSL_MAX_IMAGE_PIXELS: expected a positive whole number of pixels, found {value!r}")
    return limit


def _check_pixels(path: Path, width: int, height: int) -> None:
    """Refuse a plain image declaring more pixels than :func:`max_image_pixels` before decoding it."""
    limit = max_image_pixels()
    if width * height > limit:
        raise UserError(
            f"{path}: image declares {width}x{height} = {width * height} pixels, more than the limit "
            f"{limit} for a single-level image (a decompression bomb?); raise SASSL_MAX_IMAGE_PIXELS "
            "or store it as a tiled pyramid"
        )


def _load_plain(path: Path) -> tuple[np.ndarray, float | None]:
    """Pixels (h, w, 3) uint8 and the resolution found in the file, if any."""
    if path.suffix.lower() in {".tif", ".tiff"}:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            _check_pixels(path, int(page.imagewidth), int(page.imagelength))
            pixels, mpp = page.asarray(), _tiff_mpp(tif)
    else:
        with Image.open(path) as image:
            _check_pixels(path, *image.size)
            pixels, mpp = np.asarray(image.convert("RGB")), None  # PNG/JPEG dpi is never microscopy
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4) or pixels.dtype != np.uint8:
        raise UserError(f"{path}: expected an 8-bit RGB image, found shape {pixels.shape} of {pixels.dtype}")
    return np.ascontiguousarray(pixels[..., :3]), mpp


def open_slide(
    path: str | Path, fallback_mpp: float | None = None, require_mpp: bool = True, fallback_flag: str = FALLBACK_FLAG
) -> SlideReader:
    """Open a slide or plain image; see the module docstring for how the resolution is found.

    ``require_mpp=False`` opens files without a resolution (label masks, thumbnails); their
    ``mpp`` then raises on access. ``fallback_flag``: the option that error advises (the calling
    command's name for ``fallback_mpp``).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except PermissionError:
        raise UserError(f"{path}: permission denied (the file cannot be read by this user)") from None
    try:
        fmt = openslide.OpenSlide.detect_format(str(path))
    except openslide.OpenSlideError as err:
        raise UserError(f"{path}: unreadable slide ({err})") from None
    try:
        if fmt is not None:
            slide = openslide.OpenSlide(str(path))
            mpp, source = _openslide_mpp(path, slide.properties)
            reader: SlideReader = OpenSlideReader(path, slide, mpp, source)
        elif path.suffix.lower() in PLAIN_IMAGE_SUFFIXES:
            pixels, mpp = _load_plain(path)
            reader = PlainImageReader(path, pixels, mpp, "file" if mpp else None)
        elif path.suffix.lower() in SLIDE_ONLY_SUFFIXES:
            raise UserError(
                f"{path}: unreadable slide (OpenSlide cannot read this {path.suffix} file: truncated or corrupt?)"
            )
        else:
            raise UserError(
                f"{path}: unsupported format (not a slide OpenSlide reads, nor one of "
                f"{', '.join(sorted(PLAIN_IMAGE_SUFFIXES))})"
            )
    except UserError:
        raise
    except Exception as err:  # any decoder's failure on a truncated or corrupt file
        raise UserError(f"{path}: unreadable image ({type(err).__name__}: {err})") from None
    reader.fallback_flag = fallback_flag
    if fallback_mpp is not None:
        reader.use_fallback_mpp(fallback_mpp)
    if require_mpp:
        reader.mpp  # noqa: B018 - raises the UserError when no resolution is known
    return reader


_READERS: OrderedDict[tuple[int, str], SlideReader] = OrderedDict()
_READERS_LOCK = threading.Lock()
MAX_OPEN_READERS = 32


def get_reader(path: str | Path, fallback_mpp: float | None = None) -> SlideReader:
    """A reader for ``path`` shared within this process (one handle per process and path).

    Keyed by process id, so DataLoader workers (forked or spawned) each open their own; safe
    to call from threads. Beyond ``MAX_OPEN_READERS`` the least recently used handle is
    forgotten (OpenSlide closes it once no thread still holds it). A missing resolution raises
    only when ``mpp`` is asked for.
    """
    key = (os.getpid(), str(path))
    with _READERS_LOCK:
        reader = _READERS.get(key)
        if reader is None:
            for stale in [k for k in _READERS if k[0] != key[0]]:
                del _READERS[stale]  # inherited from the parent process: not ours to use
            reader = _READERS[key] = open_slide(path, require_mpp=False)
            while len(_READERS) > MAX_OPEN_READERS:
                _READERS.popitem(last=False)
        else:
            _READERS.move_to_end(key)
    if fallback_mpp is not None:
        reader.use_fallback_mpp(fallback_mpp)
    return reader


def write_pyramid_tiff(
    path: str | Path, image: np.ndarray, mpp: float | None, levels: int = 3, tile: int = 128, label_mask: bool = False
) -> Path:
    """Write ``image`` as a tiled pyramidal TIFF that OpenSlide opens as ``generic-tiff``.

    Each level halves the previous one and is a separate page (OpenSlide's generic-tiff reads
    pages, not SubIFDs); the resolution goes in the TIFF tags in centimetres, which OpenSlide
    reports as ``openslide.mpp-x/y``. ``mpp=None`` writes no resolution. ``label_mask=True``
    stores labels losslessly (zlib) and subsamples them instead of averaging.
    """
    import tifffile

    path = Path(path)
    level = np.ascontiguousarray(image)
    with tifffile.TiffWriter(path) as tw:
        for i in range(levels):
            kwargs = {}
            if mpp is not None:
                px_per_cm = 1e4 / (mpp * 2**i)
                kwargs = {"resolution": (px_per_cm, px_per_cm), "resolutionunit": "CENTIMETER"}
            tw.write(
                level,
                tile=(tile, tile),
                compression="zlib" if label_mask else "jpeg",
                photometric="rgb",
                subfiletype=0 if i == 0 else 1,
                **kwargs,
            )
            if min(level.shape[:2]) < 2 * tile:
                break
            if label_mask:
                level = np.ascontiguousarray(level[::2, ::2])
            else:
                h, w = level.shape[0] // 2 * 2, level.shape[1] // 2 * 2
                level = level[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    return path
