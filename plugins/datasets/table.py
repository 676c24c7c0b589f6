"""``table``: a lab's own slides listed in a table, with labels, values and/or masks.

``--data-root`` is the table — a CSV, or Parquet when pyarrow is installed — or the folder
holding it (option ``file``, default ``slides.csv``). One row per slide; columns:

* ``slide`` (required) — the slide file, absolute or relative to the table's folder;
* ``label`` — a class, by name or by index; the classes are ``class_names`` when given, else the
  sorted names found (or ``0 .. max`` when every label is an index);
* ``target`` — a number (a cellularity, a score);
* ``mask`` — a label raster aligned with the slide (class in the red channel), absolute or
  relative to the table's folder; once the column holds one, every slide needs one;
* ``source`` — the centre (default: the slide); ``patient`` — the patient.

An empty ``label`` or ``target`` cell is unknown. A slide listed twice must be listed alike (the
copy is dropped). Splits are seeded, by patient when the table has a ``patient`` column (a
patient's slides share one split), else by slide, stratified by label where groups have one.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from pathlib import Path

from pydantic import Field

import sassl_core
from sassl_core.errors import UserError
from sassl_core.interfaces import DatasetContext, PreparedData, TargetKind
from sassl_plugins.datasets.common import (
    Row,
    TilingOptions,
    prepare,
    read_table,
    require_root,
    resolve,
    split_groups,
    tile_slides,
)

COLUMNS = ("slide", "label", "target", "mask", "source", "patient")


class TableOptions(TilingOptions):
    """Options of the table dataset (and the tiling settings of :class:`TilingOptions`)."""

    file: str = Field("slides.csv", description="the table inside the data root, when the root is a folder")
    class_names: list[str] | None = Field(None, min_length=1, description="classes in index order (default: found)")
    mask_classes: int = Field(2, ge=2, le=256, description="classes of the masks (0 = background)")
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="share of patients (slides) for validation")
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="share of patients (slides) for testing")


def read_rows(path: Path) -> list[Row]:
    """The table's rows as text cells (``''`` for empty), each with ``_line`` for messages."""
    if path.suffix.lower() != ".parquet":
        return read_table(path, ("slide",))
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        parquet = importlib.import_module("pyarrow.parquet")
    except ImportError:
        raise UserError(
            f"{path}: expected pyarrow installed to read Parquet (pip install pyarrow), found none"
        ) from None
    try:
        records = parquet.read_table(path).to_pylist()
    except Exception as err:  # any decoder's failure on a file that is not Parquet
        raise UserError(f"{path}: not readable as Parquet ({type(err).__name__}: {err})") from None
    if records and "slide" not in records[0]:
        raise UserError(f"{path}: expected columns slide, found {', '.join(records[0]) or 'none'}")
    return [
        {**{k: "" if v is None else str(v).strip() for k, v in record.items()}, "_line": str(i)}
        for i, record in enumerate(records, 1)
    ]


def _integer(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


def class_indices(rows: list[Row], given: list[str] | None, where: Callable[[Row], str]) -> tuple[list[int], list[str]]:
    """Class index per row (``-1``: none) and the class names: ``given``, or those found."""
    found = [r.get("label", "") for r in rows]
    for row, value in zip(rows, found):
        if (_integer(value) or 0) < 0 and not (given and value in given):
            raise UserError(f"{where(row)}: label: expected a class name or an index >= 0, found {value!r}")
    if given is None:
        known = [v for v in found if v]
        if known and all(_integer(v) is not None for v in known):
            given = [str(i) for i in range(max(map(int, known)) + 1)]
        else:
            given = sorted(set(known))
    indices = []
    for row, value in zip(rows, found):
        index = given.index(value) if value in given else _integer(value) if value else -1
        if index is None or index >= len(given):
            raise UserError(
                f"{where(row)}: label: expected one of {', '.join(given)} or an index 0-{len(given) - 1}, found {value!r}"
            )
        indices.append(index)
    return indices, list(given)


def check_row(row: Row, base: Path, where: str) -> Row:
    """The row with ``slide`` and ``mask`` as existing paths and ``target`` a finite number (or empty)."""
    checked = dict(row)
    for column in ("slide", "mask"):
        if row.get(column):
            path = resolve(row[column], base)
            if not path.is_file():
                raise UserError(f"{where}: {column}: expected a file, found {path} missing")
            checked[column] = str(path.resolve())
        elif column == "slide":
            raise UserError(f"{where}: slide: expected a slide path, found an empty value")
    if row.get("target"):
        try:
            value = float(row["target"])
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise UserError(f"{where}: target: expected a finite number, found {row['target']!r}")
    if "patient" in row and not row["patient"]:
        raise UserError(f"{where}: patient: expected a patient id, found an empty value")
    return checked


def unique_slides(rows: list[Row], where: Callable[[Row], str]) -> list[Row]:
    """Rows with a slide listed twice dropped when alike; a contradicting copy is an error."""
    first: dict[str, Row] = {}
    for row in rows:
        earlier = first.setdefault(row["slide"], row)
        for column in COLUMNS:
            if row.get(column, "") != earlier.get(column, ""):
                raise UserError(
                    f"{where(row)}: {column}: expected {earlier.get(column, '')!r} as for the same slide in "
                    f"row {earlier['_line']}, found {row.get(column, '')!r}"
                )
    return list(first.values())


def slide_name(slide: Path, base: Path) -> str:
    """A slide's id: its path under the table's folder, else its absolute path."""
    top = base.resolve()
    return slide.relative_to(top).as_posix() if slide.is_relative_to(top) else str(slide)


def build(options: TableOptions, context: DatasetContext) -> PreparedData:
    """Tile every slide of the table; every patch carries its slide's label, target and mask."""
    root = require_root(context, "table", "a CSV or Parquet table of slides (or the folder holding slides.csv)")
    path = root / options.file if root.is_dir() else root
    rows = read_rows(path)
    if not rows:
        raise UserError(f"{path}: expected a row per slide, found none")

    def where(row: Row) -> str:
        return f"{path}: row {row['_line']}"

    rows = unique_slides([check_row(r, path.parent, where(r)) for r in rows], where)
    labels, class_names = class_indices(rows, options.class_names, where)
    masks = [r.get("mask", "") for r in rows]
    if any(masks) and not all(masks):
        row = rows[masks.index("")]
        raise UserError(f"{where(row)}: mask: expected a mask path (other slides have one), found an empty value")
    present = {
        TargetKind.LABEL: max(labels) >= 0,
        TargetKind.TARGET: any(r.get("target") for r in rows),
        TargetKind.MASK: all(masks),
    }
    kinds = tuple(kind for kind, found in present.items() if found)
    slide_ids = [slide_name(Path(r["slide"]), path.parent) for r in rows]
    groups = {s: r.get("patient") or s for s, r in zip(slide_ids, rows)}
    group_labels: dict[str, set[int]] = {}
    for slide_id, label in zip(slide_ids, labels):
        group_labels.setdefault(groups[slide_id], set()).add(label)
    strata = {g: str(next(iter(ls))) for g, ls in group_labels.items() if len(ls) == 1}
    fractions = {"val": options.val_fraction, "test": options.test_fraction}
    splits = split_groups(groups.values(), fractions, context.seed, strata)
    items = []
    for row, slide_id, label in zip(rows, slide_ids, labels):
        fields = {
            "slide_id": slide_id,
            "source": row.get("source") or slide_id,
            "label": label,
            "target": float(row["target"]) if row.get("target") else math.nan,
            "mask": row.get("mask", ""),
            "split": splits[groups[slide_id]],
        }
        items.append((Path(row["slide"]), fields))
    context = options.tiling(context)
    patches, skipped = tile_slides(items, context)
    return prepare(
        patches, context, kinds, skipped, str(path), class_names=class_names, seg_classes=options.mask_classes
    )


@sassl_core.hookimpl
def sassl_register_datasets(register):
    register("table", build, TableOptions)
