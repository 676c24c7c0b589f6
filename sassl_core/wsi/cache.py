"""Patch extraction and the on-disk patch cache.

Decoding slide regions costs ~1-4 ms per patch on one CPU thread, far too slow to feed a GPU at
thousands of images per second (docs/benchmarks.md). :class:`PatchCache` extracts every row of a
:class:`PatchTable` once into one contiguous uint8 array on disk, ``(N, P, P, 3)``, plus an
optional ``(N, P, P)`` label-mask array, read back through memory maps at memory speed.

Folder layout: ``header.json`` (format, count, patch size, table fingerprint, and the size and
per-chunk digests of each array file), ``images.u8``, and ``masks.u8`` when built with masks.

Integrity: a cache is built in a ``<name>.tmp-<pid>`` sibling folder and renamed into place only
when complete (a build killed half-way leaves nothing a rerun trusts; the folders of dead
builds are removed before the next build). Opening checks every file's size before it is
memory-mapped (a truncated map would crash the reader with SIGBUS) and every chunk's digest;
a mismatch is :class:`CorruptCache`, rebuilt with a warning by :meth:`PatchCache.open_or_build`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from sassl_core.errors import UserError
from sassl_core.files import atomic_write_text, process_alive
from sassl_core.wsi.patches import PatchTable
from sassl_core.wsi.reader import get_reader
from sassl_core.wsi.tiling import MPP_TOLERANCE

FORMAT = "sassl-patch-cache/2"
CHUNK = 256  # rows extracted per task when building
DIGEST_CHUNK = 64 << 20  # bytes per digest of an array file
_BUILDING = re.compile(r"(.+)\.tmp-(\d+)")  # the folder of a build under way (or killed)


class CorruptCache(UserError):
    """A built cache whose files no longer have the size or content recorded when it was built."""


def file_digests(path: Path) -> list[str]:
    """SHA-256 digest of each :data:`DIGEST_CHUNK` bytes of ``path`` (hardware-accelerated on
    most CPUs: ~4x faster than BLAKE2b, benchmarks/cache_verify.py)."""
    digests = []
    with open(path, "rb") as fh:
        while block := fh.read(DIGEST_CHUNK):
            digests.append(hashlib.sha256(block).hexdigest()[:32])
    return digests


def write_header(folder: Path, table: PatchTable, with_masks: bool) -> None:
    """``folder/header.json`` for the pixel files already in ``folder``: format, size, the patch
    table's fingerprint and each file's chunk digests (checked by :meth:`PatchCache.open`)."""
    names = ["images.u8"] + (["masks.u8"] if with_masks else [])
    header = {
        "format": FORMAT,
        "count": len(table),
        "patch_size": table.patch_size,
        "with_masks": with_masks,
        "fingerprint": table_fingerprint(table),
        "digests": {name: file_digests(Path(folder) / name) for name in names},
    }
    atomic_write_text(Path(folder) / "header.json", json.dumps(header, indent=2))


def remove_dead_builds(folder: Path) -> None:
    """Delete the ``<name>.tmp-<pid>`` folders of builds whose process is gone."""
    for entry in Path(folder).glob("*.tmp-*"):
        match = _BUILDING.fullmatch(entry.name)
        if match and entry.is_dir() and not entry.is_symlink() and not process_alive(int(match.group(2))):
            shutil.rmtree(entry, ignore_errors=True)


def check_free_space(path: Path, needed: int) -> None:
    """Refuse a build that the disk holding ``path`` has no room for."""
    free = shutil.disk_usage(path).free
    if free < needed:
        raise UserError(
            f"{path}: the patch cache needs {needed} bytes, only {free} free; free space or set data.cache_dir"
        )


def table_row(table: PatchTable, i: int) -> dict:
    """Row ``i`` of a patch table as a dict of plain Python values."""
    return {k: v[i].item() if isinstance(v[i], np.generic) else v[i] for k, v in table.columns.items()}


def _resize(pixels: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    if pixels.shape[0] == size:
        return pixels
    if nearest:
        method = Image.Resampling.NEAREST
    else:  # area averaging when shrinking, bilinear when enlarging
        method = Image.Resampling.BOX if pixels.shape[0] > size else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(pixels).resize((size, size), method))


def read_patch(row: Mapping, patch_size: int) -> np.ndarray:
    """RGB uint8 ``(P, P, 3)``: ``read_size`` pixels at ``level`` from ``row['slide']``, resized to
    ``patch_size`` (area averaging when shrinking, bilinear when enlarging)."""
    reader = get_reader(row["slide"])
    return _resize(reader.read(row["x"], row["y"], row["level"], row["read_size"]), patch_size, nearest=False)


def read_mask(row: Mapping, patch_size: int) -> np.ndarray:
    """Label uint8 ``(P, P)`` from ``row['mask']`` (a slide-aligned image, label in channel 0 — red)
    over the same level-0 square as :func:`read_patch`; nearest-neighbour resize; 0 outside.

    The mask's own pyramid may differ from the slide's: the coarsest mask level not coarser than
    the slide level read is used.
    """
    if not row.get("mask"):
        raise UserError(f"{row['slide']}: patch has no label mask (column 'mask' is empty)")
    slide, mask = get_reader(row["slide"]), get_reader(row["mask"])
    size0 = row["read_size"] * slide.level_downsamples[row["level"]]
    if mask.dimensions != slide.dimensions:
        scale = mask.dimensions[0] / slide.dimensions[0]  # a mask stored at a lower resolution
    else:
        scale = 1.0
    wanted = slide.level_downsamples[row["level"]] * scale
    levels = [lv for lv, ds in enumerate(mask.level_downsamples) if ds <= wanted * MPP_TOLERANCE]
    level = max(levels, key=lambda lv: mask.level_downsamples[lv]) if levels else 0
    read_size = max(1, round(size0 * scale / mask.level_downsamples[level]))
    x, y = round(row["x"] * scale), round(row["y"] * scale)
    labels = mask.read(x, y, level, read_size, fill=0)[..., 0]
    return _resize(np.ascontiguousarray(labels), patch_size, nearest=True)


def _extract(
    table: PatchTable,
    folder: Path,
    with_masks: bool,
    progress: Callable[[int, int], None] | None,
    workers: int | None,
) -> None:
    """Write every row's patch (and mask) to ``images.u8`` (``masks.u8``) in ``folder``."""
    n, p = len(table), table.patch_size
    images = np.memmap(folder / "images.u8", np.uint8, "w+", shape=(n, p, p, 3))
    masks = np.memmap(folder / "masks.u8", np.uint8, "w+", shape=(n, p, p)) if with_masks else None
    # slide-major order keeps each slide's reads together (file cache, tile cache)
    order = np.lexsort((table["y"], table["x"], table["slide"].astype(str)))
    chunks = [order[i : i + CHUNK] for i in range(0, n, CHUNK)]

    def extract(rows: np.ndarray) -> int:
        for i in rows:
            row = table_row(table, i)
            images[i] = read_patch(row, p)
            if masks is not None:
                masks[i] = read_mask(row, p)
        return len(rows)

    done = 0
    with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
        for count in pool.map(extract, chunks):
            done += count
            if progress is not None:
                progress(done, n)
    images.flush()
    if masks is not None:
        masks.flush()


def table_fingerprint(table: PatchTable) -> str:
    """Digest of what determines the cached pixels: patch size and each row's source region."""
    digest = hashlib.sha256(str(table.patch_size).encode())
    for key in ("slide", "mask"):
        digest.update("\0".join(map(str, table[key])).encode())
    for key in ("x", "y", "level", "read_size"):
        digest.update(np.ascontiguousarray(table[key], dtype=np.int64).tobytes())
    return digest.hexdigest()[:32]


class PatchCache:
    """Extracted patches on disk: ``images[i]`` ``(P, P, 3)`` and ``masks[i]`` ``(P, P)`` uint8 views.

    Pickles by path (DataLoader workers reopen the memory maps instead of copying the data).
    """

    def __init__(self, path: Path, header: dict):
        self.path = Path(path)
        self.header = header
        self.patch_size = int(header["patch_size"])
        n, p = int(header["count"]), self.patch_size
        self.images = np.memmap(self.path / "images.u8", np.uint8, "r", shape=(n, p, p, 3))
        self.masks = np.memmap(self.path / "masks.u8", np.uint8, "r", shape=(n, p, p)) if header["with_masks"] else None

    def __len__(self) -> int:
        return int(self.header["count"])

    def __reduce__(self):  # verified when the parent opened it
        return (PatchCache.open, (self.path, None, False))

    @property
    def with_masks(self) -> bool:
        return self.masks is not None

    @classmethod
    def open(cls, path: str | Path, table: PatchTable | None = None, verify: bool = True) -> PatchCache:
        """Open a built cache; with ``table``, check it was built from that table. Every file's
        size is always checked; with ``verify``, every chunk's digest too (:class:`CorruptCache`)."""
        path = Path(path)
        try:
            header = json.loads((path / "header.json").read_text())
            if header.get("format") != FORMAT:
                raise UserError(f"{path / 'header.json'}: expected format {FORMAT}, found {header.get('format')!r}")
            n, p = int(header["count"]), int(header["patch_size"])
            names = [("images.u8", n * p * p * 3)] + ([("masks.u8", n * p * p)] if header["with_masks"] else [])
        except FileNotFoundError:
            raise UserError(f"{path}: no patch cache here (header.json missing)") from None
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"{path / 'header.json'}: not a patch cache header ({err})") from None
        for name, expected in names:
            found = (path / name).stat().st_size if (path / name).exists() else None
            if found != expected:
                raise CorruptCache(f"{path / name}: expected {expected} bytes for {n} patches of {p} px, found {found}")
        if table is not None:
            if (len(table), table.patch_size) != (n, p):
                raise UserError(
                    f"{path}: cache holds {n} patches of {p} px, the patch table {len(table)} of {table.patch_size} px; rebuild it"
                )
            if header.get("fingerprint") != table_fingerprint(table):
                raise UserError(f"{path}: cache was built from a different patch table; rebuild it")
        if verify:
            for name, _ in names:
                recorded = header.get("digests", {}).get(name)
                found_digests = file_digests(path / name)
                if found_digests != recorded:
                    bad = next((i for i, (a, b) in enumerate(zip(found_digests, recorded or [])) if a != b), 0)
                    raise CorruptCache(
                        f"{path / name}: content changed since the cache was built (chunk {bad} of its digests differs)"
                    )
        return cls(path, header)

    @classmethod
    def build(
        cls,
        table: PatchTable,
        path: str | Path,
        with_masks: bool = False,
        progress: Callable[[int, int], None] | None = None,
        workers: int | None = None,
    ) -> PatchCache:
        """Extract every row of ``table`` into a new cache at ``path`` (replacing one there).

        Written into a temporary sibling folder and renamed at the end, so an interrupted build
        leaves nothing half-written under ``path``. ``workers`` threads read in parallel
        (OpenSlide decodes without holding the GIL). ``progress(done, total)`` after each chunk.
        """
        path = Path(path)
        n, p = len(table), table.patch_size
        if n == 0:
            raise UserError(f"{path}: the patch table is empty; nothing to cache")
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_builds(path.parent)
        check_free_space(path.parent, n * p * p * (4 if with_masks else 3))
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            _extract(table, tmp, with_masks, progress, workers)  # its memory maps are closed on return
            write_header(tmp, table, with_masks)
            if path.exists():
                shutil.rmtree(path)
            tmp.rename(path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls.open(path, verify=False)  # digests just computed from these files

    @classmethod
    def open_or_build(
        cls, table: PatchTable, path: str | Path, with_masks: bool = False, strict: bool = False, **build_kwargs
    ) -> PatchCache:
        """The cache at ``path`` when it matches ``table`` (and has masks if asked), else a new
        build. A corrupt cache is rebuilt with a warning, or refused when ``strict``."""
        try:
            cache = cls.open(path, table)
            if cache.with_masks or not with_masks:
                return cache
        except CorruptCache as err:
            if strict:
                raise CorruptCache(f"{err}; delete it to rebuild it (data.strict is set)") from None
            print(f"warning: {err}; rebuilding the patch cache", file=sys.stderr)
        except UserError:
            pass
        return cls.build(table, path, with_masks, **build_kwargs)
