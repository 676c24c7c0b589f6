"""The patch index: what every dataset plugin produces and every training stage reads.

One row per patch. Coordinates are level-0 pixels of the slide (OpenSlide's convention);
``level`` and ``read_size`` say which pyramid level to read and how many pixels of it, and
the patch is resized to ``patch_size`` (the model's input size) after reading.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sassl_core.errors import UserError

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
        defaults = {"label": -1, "target": float("nan"), "mask": "", "split": "train"}
        cols = {k: _objects([r.get(k, defaults.get(k)) for r in rows]) for k in COLUMNS}
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
        """Write as JSON lines plus a header line (human-readable, diff-able)."""
        tmp = Path(str(path) + ".tmp")
        with open(tmp, "w") as fh:
            fh.write(json.dumps({"patch_size": self.patch_size, "columns": list(COLUMNS)}) + "\n")
            for i in range(len(self)):
                row = [_plain(self.columns[k][i]) for k in COLUMNS]
                fh.write(json.dumps(row) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> PatchTable:
        try:
            with open(path) as fh:
                header = json.loads(fh.readline())
                rows = [json.loads(line) for line in fh if line.strip()]
            names = header["columns"]
            cols = {k: _objects([r[i] for r in rows]) for i, k in enumerate(names)}
            return cls(cols, int(header["patch_size"]))
        except FileNotFoundError:
            raise UserError(f"{path}: patch index not found") from None
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise UserError(f"{path}: not a sassl patch index ({err})") from None


def _plain(value):
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def _objects(values: list) -> np.ndarray:
    """``values`` as an object array; :class:`PatchTable` gives each column its type."""
    return np.asarray(values, dtype=object)
