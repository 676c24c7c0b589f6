"""The patch index: what every dataset plugin produces and every training stage reads.

One row per patch. Coordinates are level-0 pixels of the slide (OpenSlide's convention);
``level`` and ``read_size`` say which pyramid level to read and how many pixels of it, and
the patch is resized to ``patch_size`` (the model's input size) after reading.
"""

from __future__ import annotations

import csv
import importlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sassl_core.errors import UserError
from sassl_core.files import atomic_write

COLUMNS = {
    "slide": str,  # path of the slide or image file
    "x": np.int64,  # level-0 x of the patch's top-left corner
    "y": np.int64,
    "level": np.int64,  # pyramid level to read from
    "read_size": np.int64,  # side of the region read at ``level`` (pixels)
    "source": str,  # data provider / scanning centre (the slide id where there is none)
    "slide_id": str,  # slide the patch belongs to; ``sassl.source_key`` picks this or ``source``
    # as the stain source of the relation matrix R (paper §3.2)
    "label": np.int64,  # class label, -1 when unknown
    "target": np.float64,  # regression target, NaN when unknown
    "mask": str,  # path of a label mask aligned with ``slide`` ('' when none), class in channel 0
    "split": str,  # 'train', 'val' or 'test'
}
# Columns a saved index must hold (besides ``patch_size``); the others take their 'unknown' value.
REQUIRED = ("slide", "x", "y", "level", "read_size", "source")
DEFAULTS = {"label": -1, "target": float("nan"), "mask": "", "split": "train"}
FORMATS = (".csv", ".parquet", ".jsonl")


@dataclass
class PatchTable:
    """Column-oriented patch index (numpy arrays of equal length)."""

    columns: dict[str, np.ndarray]
    patch_size: int

    def __post_init__(self) -> None:
        missing = set(COLUMNS) - set(self.columns)
        if missing:
            raise ValueError(f"patch table lacks columns {sorted(missing)}")
        lengths = {len(v) for v in self.columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"patch table columns differ in length: {sorted(lengths)}")
        self.columns = {k: np.asarray(self.columns[k], dtype=object if t is str else t) for k, t in COLUMNS.items()}

    @classmethod
    def from_rows(cls, rows: list[dict], patch_size: int) -> PatchTable:
        """Build from dicts; missing optional fields take their 'unknown' value."""
        cols = {k: _objects([r.get(k, DEFAULTS.get(k)) for r in rows]) for k in COLUMNS}
        cols["slide_id"] = _objects([r.get("slide_id", r.get("source")) for r in rows])
        return cls(cols, patch_size)

    def __len__(self) -> int:
        return len(self.columns["x"])

    def __getitem__(self, column: str) -> np.ndarray:
        return self.columns[column]

    def select(self, keep: np.ndarray) -> PatchTable:
        """Rows where the boolean mask ``keep`` holds (or at the given integer indices)."""
        return PatchTable({k: v[keep] for k, v in self.columns.items()}, self.patch_size)

    def split(self, name: str) -> PatchTable:
        return self.select(self.columns["split"] == name)

    def hold_out(self, source: str) -> PatchTable:
        """The table with every patch of ``source`` (a centre) as the test split and the other
        sources' test patches moved to training: a stain-shift split for any dataset."""
        sources = self.columns["source"].astype(str)
        split = self.columns["split"].astype(str)
        split = np.where(sources == source, "test", np.where(split == "test", "train", split))
        return PatchTable({**self.columns, "split": split.astype(object)}, self.patch_size)

    def source_ids(self, column: str = "source") -> np.ndarray:
        """Integer id per row of its ``column`` value (stable: sorted names)."""
        _, ids = np.unique(self.columns[column].astype(str), return_inverse=True)
        return ids.astype(np.int64)

    def save(self, path: Path) -> None:
        """Write by suffix: ``.csv`` (one row a patch; header = the :data:`COLUMNS` then
        ``patch_size``; NaN targets as empty cells) or ``.parquet`` (the same columns; needs
        pyarrow). Atomic: a kill leaves the previous file."""
        path = Path(path)
        suffix = _suffix(path, FORMATS[:2])
        names = [*COLUMNS, "patch_size"]
        cols = [[_plain(v) for v in self.columns[k]] for k in COLUMNS] + [[self.patch_size] * len(self)]
        if suffix == ".csv":

            def write(tmp: Path) -> None:
                with open(tmp, "w", newline="") as fh:
                    out = csv.writer(fh)
                    out.writerow(names)
                    out.writerows(zip(*cols, strict=True))

            atomic_write(path, write)
        else:
            pa, pq = _pyarrow(path)
            atomic_write(path, lambda tmp: pq.write_table(pa.table(dict(zip(names, cols, strict=True))), tmp))

    @classmethod
    def load(cls, path: Path) -> PatchTable:
        """The one reader of a patch index, by suffix: ``.csv`` or ``.parquet`` as written by
        :meth:`save`, or the legacy ``.jsonl`` (a header line ``{patch_size, columns}`` then one
        JSON list per row).

        Columns (see :data:`COLUMNS`): ``slide`` (path), ``x``, ``y`` (level-0 top-left),
        ``level``, ``read_size``, ``source`` and ``patch_size`` (one value for every row) are
        required; ``slide_id`` defaults to ``source``, ``label`` to -1, ``target`` to NaN,
        ``mask`` to '' and ``split`` to 'train'. Unknown columns are ignored.
        """
        path = Path(path)
        suffix = _suffix(path, FORMATS)
        try:
            if suffix == ".csv":
                with open(path, newline="") as fh:
                    reader = csv.reader(fh)
                    names = next(reader)
                    rows = list(reader)
                cols = {k: [r[i] for r in rows] for i, k in enumerate(names)}
                if "target" in cols:
                    cols["target"] = [v if v != "" else "nan" for v in cols["target"]]
            elif suffix == ".parquet":
                _, pq = _pyarrow(path)
                cols = pq.read_table(path).to_pydict()
            else:
                with open(path) as fh:
                    header = json.loads(fh.readline())
                    rows = [json.loads(line) for line in fh if line.strip()]
                cols = {k: [r[i] for r in rows] for i, k in enumerate(header["columns"])}
                cols["patch_size"] = [header["patch_size"]] * len(rows)
            return cls._from_columns(cols)
        except FileNotFoundError:
            raise UserError(f"{path}: patch index not found") from None
        except PermissionError:
            raise UserError(f"{path}: permission denied") from None
        except (ValueError, KeyError, IndexError, TypeError, StopIteration, OSError) as err:
            raise UserError(f"{path}: not a sassl patch index ({type(err).__name__}: {err})") from None

    @classmethod
    def _from_columns(cls, cols: dict[str, list]) -> PatchTable:
        missing = [k for k in (*REQUIRED, "patch_size") if k not in cols]
        if missing:
            raise KeyError(f"missing columns {missing}")
        sizes = {int(v) for v in cols["patch_size"]}
        if len(sizes) > 1:
            raise ValueError(f"patch_size differs between rows: {sorted(sizes)}")
        n = len(cols["slide"])
        full = {k: cols.get(k, [DEFAULTS.get(k)] * n) for k in COLUMNS}
        if "slide_id" not in cols:
            full["slide_id"] = cols["source"]
        full["target"] = [float("nan") if v is None else v for v in full["target"]]
        return cls({k: _objects(v) for k, v in full.items()}, sizes.pop() if sizes else 0)


def _suffix(path: Path, allowed: tuple[str, ...]) -> str:
    suffix = path.suffix.lower()
    if suffix not in allowed:
        raise UserError(f"{path}: expected a patch index named {' or '.join(allowed)}, found {suffix or 'no suffix'}")
    return suffix


def _pyarrow(path: Path):
    """``(pyarrow, pyarrow.parquet)``, or the one-line error when pyarrow is not installed."""
    try:
        return importlib.import_module("pyarrow"), importlib.import_module("pyarrow.parquet")
    except ImportError:
        raise UserError(f"{path}: a .parquet patch index needs pyarrow (pip install pyarrow); use .csv") from None


def _plain(value):
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def _objects(values: list) -> np.ndarray:
    """``values`` as an object array; :class:`PatchTable` gives each column its type."""
    return np.asarray(values, dtype=object)
