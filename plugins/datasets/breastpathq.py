"""``breastpathq``: SPIE-AAPM-NCI BreastPathQ — tumour cellularity regression (0-1).

Layout (``root``, the challenge's ``datasets`` folder or its parent)::

    train/{slide}_{rid}.tif          train_labels.csv   slide, rid, y
    validation/{slide}_{rid}.tif     val_labels.csv
    test/ or test_patches/           test_labels.csv    (optional: labelled test patches)

``y`` (also accepted as ``cellularity``) is the tumour cellularity in [0, 1]. Every patch image
is one row read whole (x = y = 0, level 0, ``read_size`` = its shorter side; the challenge's
patches are square, 512 px cut at 20x) and resized to the model's patch size — the field of
view is fixed by the challenge, so no target resolution applies. ``source`` is the slide.
The paper (§4.1) trains on train + validation (2579 patches) and tests on the test patches;
``validation_as`` chooses whether the validation folder is the ``val`` split or joins ``train``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

import sassl_core
from sassl_core.errors import UserError
from sassl_core.interfaces import DatasetContext, PreparedData, TargetKind
from sassl_core.wsi.reader import open_slide
from sassl_plugins.datasets.common import prepare, read_table, require_root

TARGET_COLUMNS = ("y", "cellularity")
FOLDERS = {  # split -> (patch folders, label files), first existing wins
    "train": (("train",), ("train_labels.csv",)),
    "val": (("validation", "val"), ("val_labels.csv", "validation_labels.csv")),
    "test": (("test", "test_patches"), ("test_labels.csv",)),
}


class BreastPathQOptions(BaseModel):
    """Options of the BreastPathQ dataset."""

    model_config = ConfigDict(extra="forbid")

    validation_as: Literal["val", "train"] = Field("val", description="split of the validation folder")


def _first(base: Path, names: tuple[str, ...]) -> Path | None:
    return next((base / n for n in names if (base / n).exists()), None)


def _dataset_folder(root: Path) -> Path:
    for base in (root, root / "datasets"):
        if (base / "train_labels.csv").is_file():
            return base
    raise UserError(f"{root}: expected train_labels.csv (or datasets/train_labels.csv), found none")


def _rows(labels: Path, patches: Path | None, split: str) -> list[dict]:
    """One row per labelled patch, validated (cellularity range, patch file present)."""
    table = read_table(labels, ("slide", "rid"))
    if table and not any(c in table[0] for c in TARGET_COLUMNS):
        raise UserError(f"{labels}: expected a cellularity column ({' or '.join(TARGET_COLUMNS)}), found none")
    column = next((c for c in TARGET_COLUMNS if table and c in table[0]), TARGET_COLUMNS[0])
    rows = []
    for entry in table:
        where = f"{labels}: row {entry['_line']}"
        try:
            value = float(entry[column])
        except ValueError:
            value = float("nan")
        if not 0.0 <= value <= 1.0:
            raise UserError(f"{where}: {column}: expected a cellularity in [0, 1], found {entry[column]!r}")
        name = f"{entry['slide']}_{entry['rid']}.tif"
        image = patches / name if patches is not None else labels.parent / name
        if not image.is_file():
            raise UserError(f"{where}: patch {image} not found")
        with open_slide(image, require_mpp=False) as reader:
            side = min(reader.dimensions)
        rows.append(
            {
                "slide": str(image), "x": 0, "y": 0, "level": 0, "read_size": side,
                "source": entry["slide"], "slide_id": entry["slide"], "target": value, "split": split,
            }
        )  # fmt: skip
    return rows


def build(options: BreastPathQOptions, context: DatasetContext) -> PreparedData:
    """Index every labelled patch of the train, validation and (when labelled) test folders."""
    base = _dataset_folder(require_root(context, "breastpathq", "the folder holding train_labels.csv"))
    rows: list[dict] = []
    for split, (folders, label_files) in FOLDERS.items():
        labels = _first(base, label_files)
        if labels is None:
            continue
        target_split = options.validation_as if split == "val" else split
        rows += _rows(labels, _first(base, folders), target_split)
    return prepare(rows, context, (TargetKind.TARGET,), [], str(base))


@sassl_core.hookimpl
def sassl_register_datasets(register):
    register("breastpathq", build, BreastPathQOptions)
