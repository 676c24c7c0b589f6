"""``folder``: a lab's own slides, unlabelled — to pretrain a stain-invariant encoder on them.

Every slide (any format OpenSlide reads) or plain image under ``--data-root`` is tiled into
tissue patches (hidden folders and the cache are left out). Every patch is for training
(``split`` = ``train``: nothing is held out). There are no labels, so the data can be pretrained
on, tiled and probed for its centres (``sassl probe``), not fine-tuned on.

``slide_id`` is the slide's path under the root. Its stain source (``source``, the centre, paper
§3.2) is, by option ``source``: the slide itself (``slide``, the default), or the first-level
sub-folder holding it (``subfolder``: ``<root>/<centre>/.../<slide>``); or it is read from
``sources_csv`` (columns ``slide``, ``source``; ``slide`` is the slide's path under the root, or
its file name when no other slide has it). ``patches`` reuses the patch index ``sassl tile``
wrote for these slides, at the run's patch size, instead of tiling again (its resolution and
tissue threshold are kept; ``patches_per_slide`` still caps it). Paths in options are absolute
or relative to the working folder.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import Field, model_validator

import sassl_core
from sassl_core.errors import UserError
from sassl_core.interfaces import DatasetContext, PreparedData
from sassl_core.wsi.patches import PatchTable
from sassl_core.wsi.tiling import SLIDE_SUFFIXES, find_slides
from sassl_plugins.datasets.common import TilingOptions, prepare, read_table, require_root, subsample, tile_slides


class FolderOptions(TilingOptions):
    """Options of the folder dataset (and the tiling settings of :class:`TilingOptions`)."""

    source: Literal["slide", "subfolder"] = Field("slide", description="stain source: the slide or its sub-folder")
    sources_csv: str | None = Field(None, description="CSV of slide, source (the source of every slide)")
    patches: str | None = Field(None, description="patch index written by sassl tile, reused instead of tiling")

    @model_validator(mode="after")
    def _one_source(self) -> FolderOptions:
        if self.sources_csv is not None and self.source != "slide":
            raise ValueError(f"expected source 'subfolder' or a sources_csv, found both ({self.sources_csv})")
        return self


def slide_files(root: Path, cache_dir: Path) -> dict[str, Path]:
    """Slide id (path under ``root``) -> file, for every slide under ``root`` outside hidden
    folders and ``cache_dir``."""
    if not root.is_dir():
        raise UserError(f"data.root: expected a folder of slides or images, found the file {root}")
    cache = Path(cache_dir).resolve()
    slides = {}
    for path in find_slides([root]):
        rel = path.relative_to(root)
        if not any(part.startswith(".") for part in rel.parts) and not path.resolve().is_relative_to(cache):
            slides[rel.as_posix()] = path
    if not slides:
        raise UserError(
            f"{root}: expected slides or images (extensions {' '.join(sorted(SLIDE_SUFFIXES))}), found none"
        )
    return slides


def csv_sources(path: Path, slides: dict[str, Path]) -> dict[str, str]:
    """Slide id -> source from ``sources_csv``; every slide needs exactly one source."""
    by_name: dict[str, list[str]] = {}
    for slide_id in slides:
        by_name.setdefault(PurePosixPath(slide_id).name, []).append(slide_id)
    sources: dict[str, str] = {}
    for row in read_table(path, ("slide", "source")):
        where = f"{path}: row {row['_line']}"
        key = row["slide"].replace("\\", "/")
        matches = [key] if key in slides else by_name.get(key, [])
        if len(matches) != 1:
            found = "no such slide" if not matches else f"{len(matches)} slides of that name"
            raise UserError(f"{where}: slide: expected a slide's path under the data root, found {key!r} ({found})")
        if not row["source"]:
            raise UserError(f"{where}: source: expected a source name, found an empty value")
        if sources.setdefault(matches[0], row["source"]) != row["source"]:
            raise UserError(
                f"{where}: source: expected {sources[matches[0]]!r} as in an earlier row, found {row['source']!r}"
            )
    missing = sorted(set(slides) - set(sources))
    if missing:
        raise UserError(f"{path}: expected a row for every slide, found none for {', '.join(missing[:3])}")
    return sources


def slide_sources(options: FolderOptions, slides: dict[str, Path]) -> dict[str, str]:
    """Slide id -> stain source, as ``options`` ask."""
    if options.sources_csv is not None:
        return csv_sources(Path(options.sources_csv), slides)
    if options.source == "slide":
        return {slide_id: slide_id for slide_id in slides}
    sources = {}
    for slide_id, path in slides.items():
        parts = PurePosixPath(slide_id).parts
        if len(parts) < 2:
            raise UserError(
                f"{path}: source subfolder: expected the slide inside a sub-folder (its centre), found it at the top"
            )
        sources[slide_id] = parts[0]
    return sources


def indexed_slides(index: Path, table: PatchTable, root: Path) -> dict[str, Path]:
    """Slide id -> file of every slide in a ``sassl tile`` patch index; each must lie under ``root``."""
    top = root.resolve()
    slides = {}
    for name in sorted(set(map(str, table["slide"]))):
        path = Path(name).resolve()
        if not path.is_file():
            raise UserError(f"{index}: slide {name} not found")
        if not path.is_relative_to(top):
            raise UserError(f"{index}: slide {name}: expected a slide under the data root {root}, found one outside")
        slides[path.relative_to(top).as_posix()] = path
    return slides


def from_index(options: FolderOptions, context: DatasetContext, root: Path) -> PreparedData:
    """The patches of a ``sassl tile`` index (at most ``max_per_slide`` a slide, seeded), with
    this dataset's slide ids and sources."""
    index = Path(str(options.patches))
    table = PatchTable.load(index)
    if table.patch_size != context.patch_size:
        raise UserError(
            f"{index}: expected patches of data.image_size {context.patch_size} px, found {table.patch_size} px "
            f"(tile again with --patch-size {context.patch_size}, or train with --image-size {table.patch_size})"
        )
    slides = indexed_slides(index, table, root)
    ids = {str(path): slide_id for slide_id, path in slides.items()}
    sources = slide_sources(options, slides)
    per_slide: dict[str, list[dict]] = {}
    for i in range(len(table)):
        slide_id = ids[str(Path(str(table["slide"][i])).resolve())]
        position = {k: int(table[k][i]) for k in ("x", "y", "level", "read_size")}
        row = {"slide": str(slides[slide_id]), **position, "slide_id": slide_id, "source": sources[slide_id]}
        per_slide.setdefault(slide_id, []).append(row)
    rows = [
        row
        for k, slide_id in enumerate(sorted(per_slide))
        for row in subsample(per_slide[slide_id], context.max_per_slide, context.seed + k)
    ]
    return prepare(rows, context, (), [], str(index))


def build(options: FolderOptions, context: DatasetContext) -> PreparedData:
    """Tile every slide under the root (or reuse a tiling); unlabelled, all for training."""
    root = require_root(context, "folder", "a folder of slides or images")
    context = options.tiling(context)
    if options.patches is not None:
        return from_index(options, context, root)
    slides = slide_files(root, context.cache_dir)
    sources = slide_sources(options, slides)
    items = [(path, {"slide_id": slide_id, "source": sources[slide_id]}) for slide_id, path in slides.items()]
    rows, skipped = tile_slides(items, context)
    return prepare(rows, context, (), skipped, str(root))


@sassl_core.hookimpl
def sassl_register_datasets(register):
    register("folder", build, FolderOptions)
