"""folder: a lab's own unlabelled slides — discovery, sources, no hold-out, reusing a tiling,
and the command line (pretrain and probe work, fine-tuning is refused)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sassl_core.errors import UserError
from sassl_core.wsi.patches import PatchTable
from tests.fixtures.cli_runs import assert_user_error
from tests.fixtures.he_images import shared_data_dir
from tests.fixtures.layouts import tissue, write_tiff_slide
from tests.pipeline.tiny import TINY_ANY_DATASET, sassl

SLIDES = ["centreA/s1.tif", "centreA/sub/s2.tif", "centreB/s3.tif", "centreB/s4.png"]


@pytest.fixture(scope="module")
def slides_root(tmp_path_factory) -> Path:
    """Two centres of two slides each (one a plain PNG without a resolution), and a hidden copy."""
    root = tmp_path_factory.mktemp("myslides")
    for i, name in enumerate(SLIDES):
        rgb = tissue(i, centre=int("centreB" in name)).rgb
        if name.endswith(".png"):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(root / name)
        else:
            write_tiff_slide(root / name, rgb)
    write_tiff_slide(root / ".trash" / "old.tif", tissue(9).rgb)
    return root


def _create(datasets, context, root, **options):
    return datasets.create("folder", {"fallback_mpp": 0.5, **options}, context=context(root, max_per_slide=8))


def test_every_slide_is_unlabelled_training_data(datasets, context, slides_root):
    data = _create(datasets, context, slides_root)
    table = data.patches
    assert data.target_kinds == () and data.class_names == [] and data.skipped == []
    assert sorted(set(table["slide_id"])) == SLIDES  # the hidden folder is left out
    assert set(table["split"]) == {"train"}  # nothing held out
    assert np.array_equal(table["source"], table["slide_id"])  # by default the slide is the source
    assert (table["label"] == -1).all() and np.isnan(table["target"].astype(float)).all()
    assert max(np.unique(table["slide_id"], return_counts=True)[1]) == 8


def test_tiling_options_override_the_run_settings(datasets, context, slides_root):
    data = _create(datasets, context, slides_root, patches_per_slide=3, tissue_threshold=0.2)
    assert set(np.unique(data.patches["slide_id"], return_counts=True)[1]) == {3}


def test_sources_from_subfolders_or_a_csv(datasets, context, slides_root, tmp_path):
    by_folder = _create(datasets, context, slides_root, source="subfolder").patches
    assert {(s, c) for s, c in zip(by_folder["slide_id"], by_folder["source"])} == {
        (name, name.split("/")[0]) for name in SLIDES
    }
    sources = tmp_path / "centres.csv"
    sources.write_text("slide,source\ns1.tif,lab1\ncentreA/sub/s2.tif,lab1\ns3.tif,lab2\ncentreB/s4.png,lab2\n")
    by_csv = _create(datasets, context, slides_root, sources_csv=str(sources)).patches
    assert dict(zip(by_csv["slide_id"], by_csv["source"])) == dict(zip(SLIDES, ["lab1", "lab1", "lab2", "lab2"]))


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "slide,source\ns1.tif,lab1\n",
            "centres.csv: expected a row for every slide, found none for centreA/sub/s2.tif",
        ),
        ("slide,source\nnope.tif,lab1\n", "centres.csv: row 2: slide: expected a slide's path under the data root"),
        ("slide,source\ns1.tif,lab1\ncentreA/s1.tif,lab2\n", "row 3: source: expected 'lab1' as in an earlier row"),
        ("slide,centre\ns1.tif,lab1\n", "centres.csv: expected columns source, found slide, centre"),
    ],
)
def test_bad_sources_csv_is_one_line_naming_the_row(datasets, context, slides_root, tmp_path, text, expected):
    sources = tmp_path / "centres.csv"
    sources.write_text(text)
    with pytest.raises(UserError, match="centres.csv") as err:
        _create(datasets, context, slides_root, sources_csv=str(sources))
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_refusals(datasets, context, slides_root, tmp_path):
    flat = tmp_path / "flat"
    write_tiff_slide(flat / "top.tif", tissue(0).rgb)
    with pytest.raises(UserError, match=r"top.tif: source subfolder: expected the slide inside a sub-folder"):
        _create(datasets, context, flat, source="subfolder")
    with pytest.raises(UserError, match=r"expected source 'subfolder' or a sources_csv, found both"):
        _create(datasets, context, flat, source="subfolder", sources_csv="x.csv")
    with pytest.raises(UserError, match=r"^data.root: expected a folder of slides or images, found the file"):
        _create(datasets, context, flat / "top.tif")


def test_reuses_a_tiling_written_by_sassl_tile(datasets, context, slides_root, tmp_path):
    tiles = tmp_path / "tiles"
    sassl(
        "tile",
        slides_root / "centreA",
        slides_root / "centreB",
        "--out",
        tiles,
        "--patch-size",
        64,
        "--fallback-mpp",
        0.5,
        "--quiet",
    )
    index = tiles / "patches.csv"
    tiled = PatchTable.load(index)
    data = _create(datasets, context, slides_root, patches=str(index), source="subfolder")
    table = data.patches
    tiled_at = set(zip(map(str, tiled["slide"]), tiled["x"], tiled["y"]))
    assert set(zip(map(str, table["slide"]), table["x"], table["y"])) <= tiled_at  # the tiling's own patches
    per_slide = np.unique(tiled["slide"].astype(str), return_counts=True)[1]
    assert len(table) == np.minimum(per_slide, 8).sum()  # at most max_per_slide of each slide
    assert sorted(set(table["slide_id"])) == SLIDES and set(table["source"]) == {"centreA", "centreB"}
    assert set(table["split"]) == {"train"} and data.target_kinds == ()

    with pytest.raises(UserError, match=r"expected patches of data.image_size 32 px, found 64 px"):
        datasets.create("folder", {"patches": str(index)}, context=context(slides_root, patch_size=32))
    with pytest.raises(UserError, match=r"expected a slide under the data root .*, found one outside"):
        _create(datasets, context, slides_root / "centreA", patches=str(index))


@pytest.mark.slow
def test_pretrain_and_probe_work_finetuning_is_refused(slides_root, tmp_path):
    common = ["--dataset", "folder", "--data-root", slides_root, *TINY_ANY_DATASET, "--set", "data.max_per_slide=6"]
    common += ["--set", "data.options={source: subfolder, fallback_mpp: 0.5}"]
    pre = tmp_path / "pre"
    sassl("pretrain", "--steps", 1, "--out", pre, *common)
    assert (pre / "encoder.safetensors").is_file()
    sassl("probe", "--out", pre, *common)
    probe = json.loads((pre / "centre_probe.json").read_text())
    assert probe["centres"] == 2 and 0.0 <= probe["accuracy"] <= 1.0
    refused = sassl("finetune", "--pretrained", pre, "--out", tmp_path / "ft", *common, check=False)
    assert_user_error(
        refused, "task.name: 'cls' learns from labels, but dataset 'folder' has none (it has: no targets)"
    )
    assert not (tmp_path / "ft").exists()


def test_run_with_a_task_needing_labels_is_refused_before_pretraining(slides_root, tmp_path):
    out = tmp_path / "run"
    refused = sassl(
        "run", "--dataset", "folder", "--data-root", slides_root, "--task", "cls", "--out", out,
        *TINY_ANY_DATASET, "--set", "data.options={fallback_mpp: 0.5}", check=False,
    )  # fmt: skip
    assert_user_error(refused, "task.name: 'cls' learns from labels, but dataset 'folder' has none")
    assert not out.exists()  # refused before the first stage wrote anything


@pytest.mark.slow
def test_a_labs_real_slides_pretrain_finetune_and_map_from_elsewhere(tmp_path, monkeypatch):
    """The lab's path end to end on three copies of a real Aperio slide in two centre folders:
    ``folder`` pretraining, ``table`` fine-tuning from that encoder, then a heatmap of a slide in
    another folder, run from a third working directory with the slide folder gone."""
    slide = shared_data_dir() / "cmu_small_region.svs"
    if not slide.is_file():
        pytest.skip("shared slide cmu_small_region.svs not present")
    root = tmp_path / "myslides"
    for name in ("centreA/a.svs", "centreA/b.svs", "centreB/c.svs"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(slide, root / name)
    pre, run = tmp_path / "pre", tmp_path / "run"
    small = [*TINY_ANY_DATASET, "--set", "data.max_per_slide=8"]
    sassl(
        "pretrain", "--dataset", "folder", "--data-root", root, "--ssl", "simsiam", "--steps", 2, "--out", pre,
        *small, "--set", "data.options={source: subfolder}",
    )  # fmt: skip
    assert (pre / "encoder.safetensors").is_file()
    assert "dataset: folder" in (pre / "config.yaml").read_text()
    assert not (pre / "skipped_slides.json").exists()  # every copy was read

    table = root / "labels.csv"
    table.write_text("slide,label,source\ncentreA/a.svs,benign,A\ncentreA/b.svs,tumour,A\ncentreB/c.svs,tumour,B\n")
    sassl(
        "finetune", "--dataset", "table", "--data-root", table, "--task", "cls", "--pretrained", pre,
        "--finetune-steps", 2, "--out", run, *small,
        "--set", "data.options={test_fraction: 0.34, val_fraction: 0.0}", "--set", "finetune.val_fraction=0",
    )  # fmt: skip
    elsewhere = tmp_path / "scans" / "new.svs"
    elsewhere.parent.mkdir()
    shutil.copyfile(slide, elsewhere)
    shutil.rmtree(root)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    printed = sassl("heatmap", "--checkpoint", run, "--slide", elsewhere, "--class", "tumour", "--cam-patches", 1)
    paths = [Path(p) for p in printed.out.split()]
    assert {p.name for p in paths} >= {"new_heatmap.png", "new_heatmap.npy", "new_tiles.geojson"}
    grid = np.load(next(p for p in paths if p.suffix == ".npy"))
    assert np.isfinite(grid).sum() > 0
    assert not list(cwd.iterdir())  # nothing written where the command ran
