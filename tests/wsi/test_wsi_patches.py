"""The patch index on disk: CSV, Parquet (with pyarrow) and the legacy JSON lines, by suffix."""

import json
import sys

import numpy as np
import pytest

from sassl_core.errors import UserError
from sassl_core.wsi.patches import COLUMNS, PatchTable

ROWS = [
    {"slide": "/data/a.svs", "x": 0, "y": 448, "level": 1, "read_size": 112, "source": "a"},
    {"slide": "/data/b, c.svs", "x": 224, "y": 0, "level": 0, "read_size": 224, "source": "lab 2", "label": 3},
    {"slide": "/data/d.tiff", "x": 5, "y": 6, "level": 2, "read_size": 56, "source": "d", "target": 0.25},
]


def assert_same(a: PatchTable, b: PatchTable) -> None:
    assert a.patch_size == b.patch_size and len(a) == len(b)
    for name, kind in COLUMNS.items():
        if kind is np.float64:
            np.testing.assert_array_equal(a[name], b[name])  # NaN == NaN here
        else:
            assert a[name].tolist() == b[name].tolist(), name


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_round_trip(tmp_path, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    table = PatchTable.from_rows(ROWS, 224)
    table.save(tmp_path / f"p{suffix}")
    again = PatchTable.load(tmp_path / f"p{suffix}")
    assert_same(table, again)
    assert np.isnan(again["target"][0]) and again["target"][2] == 0.25 and again["label"].tolist() == [-1, 3, -1]
    assert [p.name for p in tmp_path.iterdir()] == [f"p{suffix}"]  # written atomically, no temporary left


def test_csv_is_one_row_a_patch_for_pandas(tmp_path):
    pandas = pytest.importorskip("pandas")
    PatchTable.from_rows(ROWS, 224).save(tmp_path / "p.csv")
    frame = pandas.read_csv(tmp_path / "p.csv", keep_default_na=False, na_values={"target": [""]})
    assert list(frame.columns) == [*COLUMNS, "patch_size"]
    assert frame["slide"].tolist() == [r["slide"] for r in ROWS] and (frame["patch_size"] == 224).all()
    assert frame["x"].tolist() == [0, 224, 5] and frame["target"].isna().tolist() == [True, True, False]


def test_a_hand_made_csv_takes_defaults_for_optional_columns(tmp_path):
    (tmp_path / "p.csv").write_text("slide,x,y,level,read_size,source,patch_size,notes\n/s.svs,1,2,0,64,lab,64,ok\n")
    table = PatchTable.load(tmp_path / "p.csv")
    assert table.patch_size == 64 and table["slide_id"].tolist() == ["lab"] and table["split"].tolist() == ["train"]
    assert table["label"].tolist() == [-1] and np.isnan(table["target"][0]) and table["mask"].tolist() == [""]


def test_legacy_json_lines_still_load(tmp_path):
    lines = [json.dumps({"patch_size": 32, "columns": list(COLUMNS)})]
    lines.append(json.dumps(["/s.svs", 1, 2, 0, 32, "a", "a", -1, None, "", "val"]))
    (tmp_path / "patches.jsonl").write_text("\n".join(lines) + "\n")
    table = PatchTable.load(tmp_path / "patches.jsonl")
    assert len(table) == 1 and table.patch_size == 32 and table["split"].tolist() == ["val"]
    assert np.isnan(table["target"][0])


def test_parquet_without_pyarrow_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    with pytest.raises(UserError, match=r"p.parquet: a .parquet patch index needs pyarrow \(pip install pyarrow\)"):
        PatchTable.from_rows(ROWS, 224).save(tmp_path / "p.parquet")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("p.txt", "", r"p.txt: expected a patch index named .csv or .parquet or .jsonl, found .txt"),
        ("p.csv", "slide,x\n/s.svs,1\n", r"p.csv: not a sassl patch index \(KeyError: .*missing columns"),
        ("p.csv", "slide,x,y,level,read_size,source,patch_size\n/s,one,2,0,64,a,64\n", r"p.csv: not a sassl patch"),
        ("p.csv", "slide,x,y,level,read_size,source,patch_size\n/s,1,2,0,64,a,64\n/t,1,2,0,64,a,32\n", "differs"),
        ("p.csv", "", r"p.csv: not a sassl patch index \(StopIteration"),
    ],
)
def test_bad_index_files_are_one_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(UserError, match=message):
        PatchTable.load(tmp_path / name)


def test_missing_index(tmp_path):
    with pytest.raises(UserError, match="nope.csv: patch index not found"):
        PatchTable.load(tmp_path / "nope.csv")
