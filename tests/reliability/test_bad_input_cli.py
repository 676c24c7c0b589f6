"""Bad input through the real command line: one ``error:`` line naming the file or field, what
was expected and what was found; exit status 2; no traceback; nothing written half-way.

Each case runs ``sassl_core.app.cli.main`` in this process (the same code path as the console
script, without the interpreter start-up); ``tests/pipeline/test_pretrain_cli.py`` runs the
console script itself in a subprocess.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
from PIL import Image
from safetensors.torch import save_file

from tests.fixtures.cli_runs import assert_user_error, cli
from tests.fixtures.he_images import shared_data_dir
from tests.fixtures.layouts import (
    PANDA_SLIDES,
    asap_xml,
    make_breastpathq,
    make_camelyon16,
    make_panda,
    tissue,
    write_label_tiff,
    write_tiff_slide,
)
from tests.pipeline.tiny import TINY, TINY_ANY_DATASET

CMU_SVS = shared_data_dir() / "cmu_small_region.svs"
TILE = ["--patch-size", 64, "--quiet"]


def _cmu_bytes() -> bytearray:
    if not CMU_SVS.is_file():
        pytest.skip(f"{CMU_SVS} not present")
    return bytearray(CMU_SVS.read_bytes())


@pytest.fixture(scope="module")
def good_slide(tmp_path_factory) -> Path:
    return write_tiff_slide(tmp_path_factory.mktemp("good") / "good.tiff", tissue(0).rgb)


# --- slides: `sassl tile` -----------------------------------------------------------------


def _truncated_tiff(folder: Path, good: Path) -> Path:
    data = good.read_bytes()
    path = folder / "cut.tiff"
    path.write_bytes(data[: len(data) // 3])
    return path


def _truncated_svs(folder: Path, good: Path) -> Path:
    path = folder / "cut.svs"
    data = _cmu_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _svs_with_corrupt_tiles(folder: Path, good: Path) -> Path:
    data = _cmu_bytes()
    a, b = int(len(data) * 0.2), int(len(data) * 0.6)  # tiles of level 0 and the thumbnail levels
    data[a:b] = b"\xff" * (b - a)
    path = folder / "zeroed.svs"
    path.write_bytes(data)
    return path


def _unknown_format(folder: Path, good: Path) -> Path:
    path = folder / "slide.gif"
    path.write_bytes(b"GIF89a" + bytes(200))
    return path


def _text_as_tiff(folder: Path, good: Path) -> Path:
    path = folder / "notes.tif"
    path.write_text("not an image\n")
    return path


def _no_tissue(folder: Path, good: Path) -> Path:
    return write_tiff_slide(folder / "glass.tiff", np.full((384, 384, 3), 240, np.uint8))


def _no_mpp(folder: Path, good: Path) -> Path:
    return write_tiff_slide(folder / "nompp.tiff", tissue(1).rgb, mpp=None)


def _too_small(folder: Path, good: Path) -> Path:
    return write_tiff_slide(folder / "small.tiff", tissue(2).rgb[:40, :40], levels=1, tile=16)


BAD_SLIDES = {
    "missing slide file": (lambda folder, good: folder / "missing.svs", "missing.svs: file not found"),
    "truncated TIFF": (_truncated_tiff, "cut.tiff: unreadable image"),
    "truncated SVS": (_truncated_svs, "cut.svs: unreadable slide (OpenSlide cannot read this .svs file"),
    "format OpenSlide cannot read": (_unknown_format, "slide.gif: unsupported format (not a slide OpenSlide reads"),
    "text file named .tif": (_text_as_tiff, "notes.tif: unreadable image (TiffFileError"),
    "slide with no tissue": (_no_tissue, "glass.tiff: no tissue found"),
    "slide with no MPP and no --fallback-mpp": (
        _no_mpp,
        "nompp.tiff: no resolution (openslide.mpp-x) in the file; pass --fallback-mpp",
    ),
    "image smaller than the patch": (_too_small, "small.tiff: image (40x40) is smaller than the patch (64 px"),
}


@pytest.mark.parametrize("case", list(BAD_SLIDES))
def test_bad_slide_is_one_error_line_and_writes_nothing(tmp_path, good_slide, case):
    make, message = BAD_SLIDES[case]
    slide = make(tmp_path, good_slide)
    out = tmp_path / "tiles"
    result = cli("tile", slide, "--out", out, "--strict", *TILE)
    assert_user_error(result, message)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_svs_with_corrupt_tiles_fails_where_its_patches_are_read(tmp_path):
    # tissue is found on the file's own thumbnail image, so level-0 tiles are first decoded
    # when patches are read: by --save-tiles here, by the patch cache in a training run
    slide = _svs_with_corrupt_tiles(tmp_path, None)
    out = tmp_path / "tiles"
    result = cli("tile", slide, "--out", out, "--strict", "--save-tiles", "--max-per-slide", 3, *TILE)
    assert_user_error(result, "zeroed.svs: unreadable region at (")
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_without_strict_a_lone_bad_slide_still_fails_and_names_it(tmp_path):
    slide = _no_tissue(tmp_path, None)
    result = cli("tile", slide, "--out", tmp_path / "tiles", *TILE)
    assert_user_error(result, "no patches from any of 1 slides (first problem:", "glass.tiff: no tissue found")
    assert not (tmp_path / "tiles").exists()


def test_no_mpp_is_fine_with_a_fallback(tmp_path):
    result = cli("tile", _no_mpp(tmp_path, None), "--out", tmp_path / "tiles", "--fallback-mpp", 0.5, *TILE)
    assert result.status == 0, result.err
    assert json.loads((tmp_path / "tiles" / "summary.json").read_text())["slides"] == 1


def test_bad_slides_among_many_are_skipped_and_listed(tmp_path, good_slide):
    folder = tmp_path / "slides"
    folder.mkdir()
    (folder / "good.tiff").write_bytes(good_slide.read_bytes())
    bad = [
        _truncated_tiff(folder, good_slide),
        _no_tissue(folder, None),
        _no_mpp(folder, None),
        _too_small(folder, None),
    ]
    out = tmp_path / "tiles"
    result = cli("tile", folder, "--out", out, "--patch-size", 64)
    assert result.status == 0, result.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["patches_per_slide"].keys() == {"good"}
    assert sorted(Path(s["file"]).name for s in summary["skipped"]) == sorted(p.name for p in bad)
    for item in summary["skipped"]:
        assert f"skipped {item['file']}: {item['reason']}" in result.err  # reported on the console too
    assert sorted(p.name for p in (out / "masks").iterdir()) == [
        "glass_mask.png",
        "glass_tiles.png",
        "good_mask.png",
        "good_tiles.png",
        "small_mask.png",
        "small_tiles.png",
    ]

    strict = cli("tile", folder, "--out", tmp_path / "strict", "--patch-size", 64, "--strict")
    assert_user_error(strict, "cut.tiff: unreadable image")
    assert not (tmp_path / "strict").exists()


TILE_FLAGS = {
    "--mpp inf": (["--mpp", "inf"], "argument --mpp: expected a number > 0, found 'inf'"),
    "--mpp nan": (["--mpp", "nan"], "argument --mpp: expected a number > 0, found 'nan'"),
    "--mpp 0": (["--mpp", "0"], "argument --mpp: expected a number > 0, found '0'"),
    "--mpp -0.5": (["--mpp=-0.5"], "argument --mpp: expected a number > 0, found '-0.5'"),
    "--mpp with --magnification": (["--mpp", "0.5", "--magnification", "20x"], "not allowed with argument"),
    "--magnification 20y": (["--magnification", "20y"], "expected a magnification such as 10x, 20x or 40x"),
    "--fallback-mpp inf": (["--fallback-mpp", "inf"], "argument --fallback-mpp: expected a number > 0"),
    "--max-per-slide -1": (["--max-per-slide", "-1"], "argument --max-per-slide: expected a whole number >= 0"),
    "--tissue-threshold 1.5": (["--tissue-threshold", "1.5"], "expected a number from 0 to 1, found '1.5'"),
    "--workers 0": (["--workers", "0"], "argument --workers: expected a whole number >= 1, found '0'"),
}


@pytest.mark.parametrize("case", list(TILE_FLAGS))
def test_bad_tile_option_is_one_line(tmp_path, good_slide, case):
    flags, message = TILE_FLAGS[case]
    result = cli("tile", good_slide, "--out", tmp_path / "tiles", *flags, *TILE)
    assert_user_error(result, message)
    assert list(tmp_path.iterdir()) == []


def test_tile_out_that_is_a_file_or_lies_under_one(tmp_path, good_slide):
    (tmp_path / "notes.txt").write_text("x")
    result = cli("tile", good_slide, "--out", tmp_path / "notes.txt", *TILE)
    assert_user_error(result, "notes.txt: expected a folder for the output, found one that is a file")
    result = cli("tile", good_slide, "--out", tmp_path / "notes.txt" / "tiles", *TILE)
    assert_user_error(result, "notes.txt/tiles: expected a folder for the output, found one that lies under the file")
    result = cli("tile", good_slide, "--out", "/proc/no-such-folder/tiles", *TILE)
    assert_user_error(result, "/proc/no-such-folder/tiles: the output folder cannot be created (")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_tiff_declaring_a_huge_image_is_refused_before_decoding(tmp_path):
    from tests.wsi.test_wsi_reader import tiff_declaring

    bomb = tiff_declaring(tmp_path / "bomb.tif", 20000, 20000)
    result = cli("tile", bomb, "--out", tmp_path / "tiles", "--fallback-mpp", 0.5, "--strict", *TILE)
    assert_user_error(result, "bomb.tif: image declares 20000x20000 = 400000000 pixels, more than the limit")
    assert not (tmp_path / "tiles").exists()


# --- dataset label files and annotations: `sassl pretrain --dataset ...` --------------------


def _pretrain(tmp_path: Path, dataset: str, root: Path, *extra):
    return cli(
        "pretrain",
        "--steps",
        1,
        "--dataset",
        dataset,
        "--data-root",
        root,
        "--out",
        tmp_path / "run",
        *TINY_ANY_DATASET,
        *extra,
    )


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(
    "old, new, message",
    [
        (
            "isup_grade",
            "isup",
            "train.csv: expected columns isup_grade, found image_id, data_provider, isup, gleason_score",
        ),
        (",radboud,4,", ",radboud,7,", "train.csv: row 3: isup_grade: expected an integer 0-5, found '7'"),
        (",radboud,4,", ",radboud,four,", "train.csv: row 3: isup_grade: expected an integer 0-5, found 'four'"),
        (
            ",karolinska,1,",
            ",sheffield,1,",
            "train.csv: row 4: data_provider: expected one of karolinska, radboud, found 'sheffield'",
        ),
    ],
    ids=["missing column", "ISUP 7", "ISUP not a number", "unknown provider"],
)
def test_panda_csv(tmp_path, old, new, message):
    root = make_panda(tmp_path / "panda")
    _edit(root / "train.csv", old, new)
    assert_user_error(_pretrain(tmp_path, "panda", root), message)


def test_panda_mask_of_another_size(tmp_path):
    root = make_panda(tmp_path / "panda")
    first = PANDA_SLIDES[0][0]
    write_label_tiff(root / "train_label_masks" / f"{first}_mask.tiff", np.zeros((200, 300), np.uint8))
    assert_user_error(
        _pretrain(tmp_path, "panda", root), f"{first}_mask.tiff: mask size 300x200 differs from its slide's 384x384"
    )


@pytest.mark.parametrize(
    "value",
    ["1.3", "-0.1", "high"],
)
def test_breastpathq_cellularity_out_of_range(tmp_path, value):
    root = make_breastpathq(tmp_path / "bpq")
    _edit(root / "datasets" / "train_labels.csv", "99188,2,0.35", f"99188,2,{value}")
    message = f"train_labels.csv: row 3: y: expected a cellularity in [0, 1], found {value!r}"
    assert_user_error(_pretrain(tmp_path, "breastpathq", root), message)


@pytest.mark.parametrize(
    "content, message",
    [
        ("<ASAP_Annotations><Annotations>", "malformed annotation XML (no element found"),
        ("\x00\x01garbage", "malformed annotation XML"),
        (asap_xml([("_0", [(1, 1), (5, 1)])]), "annotation 0: expected a polygon of at least 3 coordinates, found 2"),
        (asap_xml([("Stroma", [(1, 1), (5, 1), (5, 5)])]), "annotation 0: PartOfGroup: expected one of"),
        (
            asap_xml([("_0", [(1, 1), (5, 1), (5, 5)])]).replace('X="5"', 'X="five"', 1),
            "annotation 0: expected numeric X, Y and Order on every Coordinate",
        ),
    ],
    ids=["unclosed", "binary", "two points", "unknown group", "non-numeric X"],
)
def test_camelyon16_malformed_asap_xml(tmp_path, content, message):
    root = make_camelyon16(tmp_path / "c16")
    (root / "training" / "lesion_annotations" / "tumor_002.xml").write_text(content)
    assert_user_error(_pretrain(tmp_path, "camelyon16", root), "tumor_002.xml: " + message)


def test_missing_data_root(tmp_path):
    assert_user_error(
        _pretrain(tmp_path, "panda", tmp_path / "nowhere"), f"data.root: folder {tmp_path / 'nowhere'} does not exist"
    )


# --- config ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.foo=1", "config field trainer.foo: Extra inputs are not permitted (found 1)"),
        ("pretrain.steps=abc", "config field pretrain.steps: Input should be a valid integer"),
        ("sassl.lam=-1", "config field sassl.lam: Input should be greater than or equal to 0 (found -1)"),
        ("trainer.device=tpu", "config field trainer.device: expected auto, cpu, cuda, cuda:N or mps, found 'tpu'"),
        ("nosuchsection.x=1", "config field nosuchsection: Extra inputs are not permitted"),
        ("novalue", "--set 'novalue': expected KEY=VALUE"),
    ],
)
def test_config_override(tmp_path, override, message):
    out = tmp_path / "run"
    assert_user_error(cli("pretrain", "--out", out, *TINY, "--set", override), message)
    assert not out.exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("pretrain: {steps: [1, 2]}\n", "config field pretrain.steps: Input should be a valid integer"),
        ("pretrain: {steps: 1\n", "bad.yaml: not valid YAML"),
        ("- pretrain\n", "bad.yaml: expected a mapping of config sections, found list"),
    ],
)
def test_config_file(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    out = tmp_path / "run"
    assert_user_error(cli("pretrain", "--config", bad, "--out", out, *TINY), message)
    assert not out.exists()


def test_config_file_missing(tmp_path):
    assert_user_error(
        cli("pretrain", "--config", tmp_path / "none.yaml", "--out", tmp_path / "run", *TINY),
        "none.yaml: cannot read config",
    )


# --- component names, sizes -----------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--dataset", "pandas"],
            "unknown dataset 'pandas'; available: breastpathq, camelyon16, folder, panda, restained, synthetic, table, tcga",
        ),
        (["--backbone", "resnet19"], "unknown backbone 'resnet19'; available: "),
        (["--backbone", "timm:resnet19"], "unknown timm model 'resnet19'"),
        (["--ssl", "simsam"], "unknown ssl method 'simsam'; available: "),
        (
            ["--set", "ssl.options={dimension: 3}"],
            "options of ssl method 'simsiam': dimension: Extra inputs are not permitted",
        ),
    ],
)
def test_unknown_component_or_option(tmp_path, flags, message):
    assert_user_error(cli("pretrain", "--steps", 1, "--out", tmp_path / "run", *TINY, *flags), message)


def test_unknown_stain_transform(tmp_path):
    target = tmp_path / "target.png"
    Image.fromarray(tissue(0, size=96).rgb).save(target)
    result = cli(
        "pretrain",
        "--steps",
        1,
        "--out",
        tmp_path / "run",
        *TINY,
        "--stain-norm",
        "reinhardt",
        "--stain-target",
        target,
    )
    assert_user_error(result, "unknown stain transform 'reinhardt'; available: ", "reinhard")


def test_unknown_task(tmp_path):
    result = cli("finetune", "--finetune-steps", 1, "--out", tmp_path / "run", *TINY, "--task", "segm")
    assert_user_error(result, "unknown task 'segm'; available: cls, ")


def test_batch_larger_than_the_data_is_refused(tmp_path):
    result = cli("pretrain", "--steps", 1, "--out", tmp_path / "run", *TINY, "--batch-size", 4000)
    assert_user_error(result, "found")


def test_batch_larger_than_the_data_names_the_batch_size(tmp_path):
    result = cli("pretrain", "--steps", 1, "--out", tmp_path / "run", *TINY, "--batch-size", 4000)
    assert_user_error(result, "pretrain.batch_size", "4000")


def test_image_size_below_the_minimum(tmp_path):
    result = cli("pretrain", "--steps", 1, "--out", tmp_path / "run", *TINY, "--image-size", 8)
    assert_user_error(result, "config field data.image_size: Input should be greater than or equal to 16 (found 8)")


def test_image_size_a_backbone_cannot_take(tmp_path):
    result = cli("pretrain", "--steps", 1, "--out", tmp_path / "run", *TINY, "--backbone", "timm:inception_v3")
    assert_user_error(result, "data.image_size", "inception_v3", "32")


@pytest.mark.parametrize("flags", [["--dataset", "pandas"], ["--ssl", "simsam"], ["--batch-size", 4000]])
def test_refused_start_leaves_no_run_folder(tmp_path, flags):
    out = tmp_path / "run"
    assert cli("pretrain", "--steps", 1, "--out", out, *TINY, *flags).status == 2
    assert not out.exists()


# --- checkpoints and run folders ----------------------------------------------------------


def test_run_folder_already_holding_a_run(tiny_run):
    before = (tiny_run / "config.yaml").read_text()
    result = cli("pretrain", "--steps", 1, "--out", tiny_run, *TINY)
    assert_user_error(
        result, f"output.dir: {tiny_run} already holds a run; pass --resume to continue it or --overwrite to replace it"
    )
    assert (tiny_run / "config.yaml").read_text() == before


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A copy of the tiny run that a test may change."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


def test_resume_with_another_backbone(run_copy):
    result = cli("pretrain", "--steps", 2, "--out", run_copy, *TINY, "--resume", "--backbone", "efficientnet_b0")
    assert_user_error(result, "config.yaml: --resume with settings other than the run's: backbone.name")
    changed = ["--resume-with-changes", "--backbone", "efficientnet_b0"]
    result = cli("pretrain", "--steps", 2, "--out", run_copy, *TINY, *changed)
    assert_user_error(
        result, "checkpoints/pretrain_last.pt: does not fit this run's ssl (another backbone, method or task?)"
    )


@pytest.mark.parametrize("resume", ["--resume", "--resume-with-changes"])
def test_refused_resume_keeps_the_runs_config(run_copy, resume):
    before = (run_copy / "config.yaml").read_text()
    assert cli("pretrain", "--steps", 2, "--out", run_copy, *TINY, resume, "--backbone", "efficientnet_b0").status == 2
    assert (run_copy / "config.yaml").read_text() == before


def test_resume_finetuning_with_another_task(run_copy):
    result = cli("finetune", "--finetune-steps", 2, "--out", run_copy, *TINY, "--resume-with-changes", "--task", "reg")
    assert_user_error(result, "checkpoints/finetune_last.pt: does not fit this run's model")


def test_evaluate_with_another_task(tiny_run):
    result = cli("evaluate", "--out", tiny_run, *TINY, "--task", "reg")
    assert_user_error(result, "finetune_best.pt: does not fit backbone 'resnet18' / task 'reg'")


def test_pretrained_encoder_of_another_backbone(tmp_path):
    other = tmp_path / "efficientnet.safetensors"
    save_file(
        {k: v.contiguous() for k, v in timm.create_model("efficientnet_b0", num_classes=0).state_dict().items()},
        str(other),
    )
    result = cli("finetune", "--finetune-steps", 1, "--out", tmp_path / "run", *TINY, "--pretrained", other)
    assert_user_error(result, "efficientnet.safetensors", "resnet18")


def test_pretrained_path_missing(tmp_path):
    result = cli("finetune", "--finetune-steps", 1, "--out", tmp_path / "run", *TINY, "--pretrained", tmp_path / "nope")
    assert_user_error(result, f"finetune.pretrained: {tmp_path / 'nope'} does not exist")
