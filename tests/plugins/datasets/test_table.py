"""table: slides listed in a CSV or Parquet table — labels, values, masks, sources, splits by
patient, and a one-line error for every bad cell naming the table, row and column."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from sassl_core.errors import UserError
from sassl_core.interfaces import TargetKind
from tests.fixtures.layouts import tissue, write_label_tiff, write_tiff_slide
from tests.pipeline.tiny import TINY_ANY_DATASET, sassl


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    """``slides/s0.tif .. s7.tif`` (copies of two drawn slides) with tumour masks ``masks/m<i>.tif``."""
    root = tmp_path_factory.mktemp("lab")
    for i in range(2):
        slide = tissue(i)
        write_tiff_slide(root / "slides" / f"s{i}.tif", slide.rgb)
        write_label_tiff(root / "masks" / f"m{i}.tif", (slide.tumour > 0).astype(np.uint8))
    for i in range(2, 8):
        shutil.copyfile(root / "slides" / f"s{i % 2}.tif", root / "slides" / f"s{i}.tif")
        shutil.copyfile(root / "masks" / f"m{i % 2}.tif", root / "masks" / f"m{i}.tif")
    return root


def _write(lab: Path, lines: list[str], name: str = "slides.csv") -> Path:
    path = lab / name
    path.write_text("\n".join(lines) + "\n")
    return path


def _create(datasets, context, root, **options):
    return datasets.create("table", options, context=context(root, max_per_slide=3))


def test_labels_targets_masks_and_sources(datasets, context, lab):
    absolute = lab / "slides" / "s3.tif"
    table = _write(
        lab,
        [
            "slide,label,target,mask,source",
            "slides/s0.tif,tumour,0.5,masks/m0.tif,lab1",
            "slides/s1.tif,normal,,masks/m1.tif,lab1",
            "slides/s2.tif,,0.25,masks/m2.tif,",
            f"{absolute},tumour,1,{lab / 'masks' / 'm3.tif'},lab2",
        ],
        "labelled.csv",
    )
    data = _create(datasets, context, table, test_fraction=0.0)
    patches = data.patches
    assert data.target_kinds == (TargetKind.LABEL, TargetKind.TARGET, TargetKind.MASK)
    assert data.class_names == ["normal", "tumour"] and data.seg_classes == 2  # sorted names from the data
    by_slide = {s: i for i, s in reversed(list(enumerate(patches["slide_id"])))}
    assert sorted(by_slide) == ["slides/s0.tif", "slides/s1.tif", "slides/s2.tif", "slides/s3.tif"]
    row = {s: {k: patches[k][i] for k in ("label", "target", "mask", "source")} for s, i in by_slide.items()}
    assert [row[s]["label"] for s in sorted(row)] == [1, 0, -1, 1]  # empty: unknown
    assert row["slides/s0.tif"]["target"] == 0.5 and np.isnan(row["slides/s1.tif"]["target"])
    assert row["slides/s3.tif"]["mask"] == str((lab / "masks" / "m3.tif").resolve())
    assert row["slides/s2.tif"]["source"] == "slides/s2.tif" and row["slides/s3.tif"]["source"] == "lab2"


def test_integer_labels_and_given_class_names(datasets, context, lab):
    table = _write(lab, ["slide,label", "slides/s0.tif,0", "slides/s1.tif,2"], "ints.csv")
    assert _create(datasets, context, table, test_fraction=0.0).class_names == ["0", "1", "2"]
    named = _create(datasets, context, table, test_fraction=0.0, class_names=["benign", "low", "high"])
    assert named.class_names == ["benign", "low", "high"]
    assert set(zip(named.patches["slide_id"], named.patches["label"])) == {("slides/s0.tif", 0), ("slides/s1.tif", 2)}


def test_a_patient_is_never_in_two_splits(datasets, context, lab):
    lines = ["slide,label,patient"] + [f"slides/s{i}.tif,{'ab'[i % 2]},p{i // 2}" for i in range(8)]
    table = _write(lab, lines, "pat.csv")  # two slides per patient, of both labels
    for seed in range(4):
        patches = datasets.create(
            "table", {"val_fraction": 0.25, "test_fraction": 0.25}, context=context(table, max_per_slide=2, seed=seed)
        ).patches
        patients = {f"slides/s{i}.tif": f"p{i // 2}" for i in range(8)}
        splits_of = {}
        for slide, split in zip(patches["slide_id"], patches["split"]):
            splits_of.setdefault(patients[slide], set()).add(split)
        assert all(len(s) == 1 for s in splits_of.values()), splits_of
        assert set().union(*splits_of.values()) == {"train", "val", "test"}


def test_split_by_slide_is_stratified_by_label(datasets, context, lab):
    lines = ["slide,label"] + [f"slides/s{i}.tif,{'ab'[i % 2]}" for i in range(8)]
    patches = _create(datasets, context, _write(lab, lines, "strat.csv"), test_fraction=0.25).patches
    tested = patches["label"][patches["split"] == "test"]
    assert sorted(set(tested)) == [0, 1]  # both classes tested
    assert len(set(patches["slide_id"][patches["split"] == "test"])) == 2


def test_identical_duplicate_rows_are_dropped(datasets, context, lab):
    table = _write(lab, ["slide,label", "slides/s0.tif,a", "slides/s1.tif,b", "slides/../slides/s0.tif,a"], "dup.csv")
    patches = _create(datasets, context, table, test_fraction=0.0).patches
    assert sorted(set(patches["slide_id"])) == ["slides/s0.tif", "slides/s1.tif"]


def test_parquet_reads_like_csv(datasets, context, lab, monkeypatch):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = lab / "slides.parquet"
    columns = {"slide": ["slides/s0.tif", "slides/s1.tif"], "label": [1, 0], "target": [0.5, None]}
    pq.write_table(pyarrow.table(columns), path)
    data = _create(datasets, context, path, test_fraction=0.0)
    assert data.class_names == ["0", "1"] and data.target_kinds == (TargetKind.LABEL, TargetKind.TARGET)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as if pyarrow were not installed
    with pytest.raises(UserError, match=r"slides.parquet: expected pyarrow installed to read Parquet"):
        _create(datasets, context, path)


def test_a_folder_root_reads_its_slides_csv(datasets, context, lab, tmp_path):
    _write(lab, ["slide", "slides/s0.tif", "slides/s1.tif"])
    data = _create(datasets, context, lab, test_fraction=0.0)
    assert data.target_kinds == () and sorted(set(data.patches["slide_id"])) == ["slides/s0.tif", "slides/s1.tif"]


@pytest.mark.parametrize(
    "lines, expected",
    [
        (
            ["slide,label", "slides/s0.tif,a", "slides/s1.tif,-1"],
            "row 3: label: expected a class name or an index >= 0, found '-1'",
        ),
        (
            ["slide,label", "slides/s0.tif,0", "slides/s1.tif,3"],
            "row 3: label: expected one of x, y or an index 0-1, found '3'",
        ),
        (
            ["slide,label", "slides/s0.tif,x", "slides/s1.tif,z"],
            "row 3: label: expected one of x, y or an index 0-1, found 'z'",
        ),
        (["slide,target", "slides/s0.tif,high"], "row 2: target: expected a finite number, found 'high'"),
        (["slide,target", "slides/s0.tif,inf"], "row 2: target: expected a finite number, found 'inf'"),
        (["slide,label", "slides/nope.tif,x"], "row 2: slide: expected a file, found "),
        (["slide,mask", "slides/s0.tif,masks/nope.tif"], "row 2: mask: expected a file, found "),
        (
            ["slide,mask", "slides/s0.tif,masks/m0.tif", "slides/s1.tif,"],
            "row 3: mask: expected a mask path (other slides have one), found an empty value",
        ),
        (["slide,patient", "slides/s0.tif,"], "row 2: patient: expected a patient id, found an empty value"),
        (
            ["slide,label", "slides/s0.tif,x", "slides/s0.tif,y"],
            "row 3: label: expected 'x' as for the same slide in row 2, found 'y'",
        ),
        (["slides,label", "slides/s0.tif,x"], "bad.csv: expected columns slide, found slides, label"),
        (["slide,label"], "bad.csv: expected a row per slide, found none"),
    ],
)
def test_bad_cells_are_one_line_naming_table_row_and_column(datasets, context, lab, lines, expected):
    table = _write(lab, lines, "bad.csv")
    options = {"class_names": ["x", "y"]} if "x, y" in expected else {}
    with pytest.raises(UserError) as err:
        _create(datasets, context, table, **options)
    message = str(err.value)
    assert message.startswith(str(table)) and expected in message and "\n" not in message, message


@pytest.mark.slow
def test_a_labelled_table_trains_and_maps_a_slide_by_class_name(lab, tmp_path):
    lines = ["slide,label,patient,source"]
    lines += [f"slides/s{i}.tif,{('normal', 'tumour')[i % 2]},p{i // 2},lab{i % 2}" for i in range(8)]
    table = _write(lab, lines, "run.csv")
    out = tmp_path / "run"
    sassl(
        "run", "--dataset", "table", "--data-root", table, "--task", "cls", "--steps", 1, "--finetune-steps", 1,
        "--out", out, *TINY_ANY_DATASET, "--set", "data.max_per_slide=4", "--set", "data.options={test_fraction: 0.25}",
    )  # fmt: skip
    assert json.loads((out / "metrics.json").read_text())["metrics"]
    maps = tmp_path / "maps"
    sassl("heatmap", "--checkpoint", out, "--slide", lab / "slides" / "s0.tif", "--class", "tumour", "--out", maps)
    assert (maps / "s0_heatmap.png").is_file()
