"""BreastPathQ: one row per patch with its cellularity; validation of the label files."""

from __future__ import annotations

import pytest

from sassl_core.errors import UserError
from sassl_core.interfaces import TargetKind
from sassl_core.wsi.cache import read_patch, table_row
from tests.fixtures.layouts import BREASTPATHQ, make_breastpathq


def test_patches_targets_sources_splits(datasets, context, tmp_path):
    root = make_breastpathq(tmp_path / "bpq")
    data = datasets.create("breastpathq", {}, context=context(root))
    table = data.patches
    assert data.target_kinds == (TargetKind.TARGET,)
    expected = {f"{s}_{r}.tif": y for _, items in BREASTPATHQ.values() for s, r, y in items}
    names = [p.rsplit("/", 1)[-1] for p in table["slide"]]
    assert dict(zip(names, table["target"])) == expected
    assert list(table["source"]) == [n.split("_")[0] for n in names]
    assert set(table["split"][table["source"] == "104012"]) == {"val"}
    assert (table["x"] == 0).all() and (table["read_size"] == 96).all()
    assert read_patch(table_row(table, 0), 64).shape == (64, 64, 3)  # whole patch, resized
    merged = datasets.create("breastpathq", {"validation_as": "train"}, context=context(root)).patches
    assert set(merged["split"]) == {"train"}


def test_cellularity_out_of_range_and_missing_patch(datasets, context, tmp_path):
    root = make_breastpathq(tmp_path / "bpq")
    labels = root / "datasets" / "train_labels.csv"
    labels.write_text(labels.read_text().replace(",0.35", ",1.3"))
    with pytest.raises(UserError, match=r"train_labels.csv: row 3: y: expected a cellularity in \[0, 1\], found '1.3'"):
        datasets.create("breastpathq", {}, context=context(root))
    labels.write_text("slide,rid,y\n99188,9,0.5\n")
    with pytest.raises(UserError, match="row 2: patch .*99188_9.tif not found"):
        datasets.create("breastpathq", {}, context=context(root))
    labels.write_text("slide,y\n99188,0.5\n")
    with pytest.raises(UserError, match="train_labels.csv: expected columns rid"):
        datasets.create("breastpathq", {}, context=context(root))
