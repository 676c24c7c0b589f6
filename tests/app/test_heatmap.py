"""Grad-CAM of patches and slide heatmaps (paper §4 visual checks), and ``sassl heatmap`` from a
run folder alone."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from sassl_core.app.api import heatmap
from sassl_core.app.heatmap import (
    CAM_SIDE,
    PatchScores,
    SlideScores,
    grad_cam,
    resolve_class,
    save_cam_panel,
    score_slide,
    tissue_polygons,
    write_slide_heatmap,
)
from sassl_core.app.inference import load_inference_model
from sassl_core.config import validate
from sassl_core.errors import UserError
from sassl_core.interfaces import PreparedData, TargetKind
from sassl_core.method.transfer import build_dual_encoder
from sassl_core.plugins import default_plugins
from sassl_core.train.checkpoint import save_checkpoint
from sassl_core.train.finetune import build_downstream
from sassl_core.train.inference_meta import FINETUNED, describe_run, finetuned_checkpoint, write_inference_record
from sassl_core.train.validation import BEST_FILE
from sassl_core.wsi.patches import PatchTable
from sassl_plugins.tasks import cls
from tests.fixtures.cli_runs import assert_user_error, cli
from tests.fixtures.he_images import shared_data_dir, synthetic_he
from tests.pipeline.tiny import TINY, sassl

SHARED_SLIDE = shared_data_dir() / "cmu_small_region.svs"


def linear_head(channels: int, weight: float) -> cls.ClassificationHead:
    """A one-layer head whose class-1 score is ``weight`` x the mean of channel 0."""
    head = cls.build(cls.ClassificationOptions(num_layers=1), [channels], 2)
    with torch.no_grad():
        head.mlp[0].weight.zero_()
        head.mlp[0].bias.zero_()
        head.mlp[0].weight[1, 0] = weight
    return head


def test_cam_peaks_where_the_class_evidence_is():
    image = torch.zeros(3, 32, 32)
    image[0, 4:12, 20:28] = 1.0  # evidence in the top-right corner
    features = lambda x: [x[:, :1, ::4, ::4]]  # deepest "level": channel 0 at stride 4
    cam = grad_cam(features, linear_head(1, 2.0), image, target_class=1)
    assert cam.shape == (32, 32) and cam.dtype == np.float32
    assert cam.max() == pytest.approx(1.0) and cam.min() >= 0.0
    peak_y, peak_x = np.unravel_index(cam.argmax(), cam.shape)
    assert 4 <= peak_y < 12 and 20 <= peak_x < 28
    assert cam[4:12, 20:28].mean() > 0.6 and cam[20:, :12].max() < 0.05
    # a class with negative evidence has no supporting location
    assert np.all(grad_cam(features, linear_head(1, -2.0), image, target_class=1) == 0)


def test_cam_with_dual_encoder_restores_modes(tmp_path):
    make = lambda: timm.create_model("resnet18", num_classes=0)
    enc = build_dual_encoder(make, make().state_dict()).train()
    head = cls.build(cls.ClassificationOptions(hidden_dim=8), enc.feature_channels, 3).train()
    cam = grad_cam(enc, head, torch.randn(3, 64, 64))
    assert cam.shape == (64, 64) and 0.0 <= cam.min() and cam.max() <= 1.0
    assert enc.special.training and head.training and not enc.generic.training
    assert all(p.grad is None for p in enc.parameters())


def test_cam_panel_shows_the_patch_enlarged_beside_its_map(tmp_path):
    patch = np.full((64, 64, 3), 200, np.uint8)
    cam = np.zeros((32, 32), np.float32)
    cam[:, 16:] = 1.0  # right half explained
    saved = np.asarray(Image.open(save_cam_panel(patch, cam, tmp_path / "cam.png")))
    gap = CAM_SIDE // 32
    assert saved.shape == (CAM_SIDE, 2 * CAM_SIDE + gap, 3)
    assert np.array_equal(saved[:, :CAM_SIDE], np.full((CAM_SIDE, CAM_SIDE, 3), 200, np.uint8))
    blended = saved[:, CAM_SIDE + gap :]
    assert not np.array_equal(blended[:, -10:], blended[:, :10])  # hot half differs from the cold one


def _pink_half_image(path: Path) -> None:
    rng = np.random.default_rng(0)
    img = np.full((256, 256, 3), 245, np.uint8)
    img[:, :128] = (np.array([200, 110, 170]) + rng.integers(-20, 20, (256, 128, 3))).clip(0, 255)
    Image.fromarray(img.astype(np.uint8)).save(path)


def _green(patches: np.ndarray) -> PatchScores:
    value = patches[..., 1].mean(axis=(1, 2)) / 255.0  # green: low on tissue
    return PatchScores(value, {"P(pale)": value, "P(dark)": 1 - value}, ["pale" if v > 0.5 else "dark" for v in value])


def _outline_and_tiles(collection: dict) -> tuple[dict, list[dict]]:
    """The tissue annotation (first) and the tiles of a heatmap's GeoJSON."""
    tissue, *tiles = collection["features"]
    props = tissue["properties"]
    assert props["objectType"] == "annotation" and props["classification"]["name"] == "Tissue"
    assert tissue["geometry"]["type"] == "MultiPolygon" and tissue["geometry"]["coordinates"]
    assert all(t["properties"]["objectType"] == "tile" for t in tiles)
    return tissue, tiles


def _vertices(tissue: dict) -> np.ndarray:
    return np.array([xy for polygon in tissue["geometry"]["coordinates"] for ring in polygon for xy in ring])


def test_tissue_outline_keeps_holes_and_stays_within_the_slide():
    mask = np.zeros((40, 60), bool)
    mask[5:35, 5:60] = True  # up to the mask's right border, past the slide's (470 px)
    mask[15:25, 20:30] = False  # a hole
    mask[2:4, 1:3] = True  # a speck of its own
    slide = SlideScores([], PatchScores(np.zeros(0)), 16.0, (470, 320), np.zeros((40, 60, 3), np.uint8), mask, 0.125)
    polygons = sorted(tissue_polygons(slide), key=len)
    assert [len(p) for p in polygons] == [1, 2]  # the speck; the block with its hole
    block, hole = polygons[1]
    assert block[:, 0].min() == 40 and block[:, 0].max() == 470  # mask pixel edges x 8; clipped to the slide
    near = lambda value: pytest.approx(value, abs=4)  # within half a mask pixel (corners are cut)
    assert hole[:, 0].min() == near(160) and hole[:, 1].max() == near(200)
    assert all(len(ring) <= 10 for polygon in polygons for ring in polygon)  # straight edges: a few vertices


def test_slide_heatmap_writes_figure_grid_and_qupath_tiles(tmp_path):
    slide = tmp_path / "half.png"
    _pink_half_image(slide)
    scores = score_slide(_green, slide, 32, 0.5, fallback_mpp=0.5)
    grid = scores.grid()
    assert grid.shape == (8, 8)  # 256 px slide, 32 px patches at the slide's own resolution
    assert np.isfinite(grid[:, :3]).all() and np.isnan(grid[:, 5:]).all()  # tissue half only
    assert np.nanmax(grid) < 0.6
    png, npy, geojson = write_slide_heatmap(scores, tmp_path / "out", "half", "half: P(pale)", "P(pale)")
    assert png.name == "half_heatmap.png" and Image.open(png).size[0] >= 256
    np.testing.assert_array_equal(np.load(npy), grid)
    collection = json.loads(geojson.read_text())
    assert collection["type"] == "FeatureCollection"
    tissue, tiles = _outline_and_tiles(collection)
    assert len(tiles) == np.isfinite(grid).sum()
    [polygon] = tissue["geometry"]["coordinates"]  # one piece of tissue, no hole
    [ring] = np.array(polygon, dtype=object)
    ring = np.array(ring, np.float64)
    assert np.array_equal(ring[0], ring[-1]) and 5 <= len(ring) <= 20  # closed, simplified
    assert ring[:, 0].min() == 0 and 120 <= ring[:, 0].max() <= 136  # the pink left half (128 px)
    assert ring[:, 1].min() == 0 and ring[:, 1].max() == 256  # the full height, within the slide
    for feature in tiles:
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
        ring = np.array(feature["geometry"]["coordinates"][0])
        assert ring.shape == (5, 2) and np.array_equal(ring[0], ring[-1])
        assert np.ptp(ring[:, 0]) == 32 and ring[:, 0].max() <= 160  # level-0 pixels, on the tissue half
        props = feature["properties"]
        assert props["objectType"] == "tile" and props["classification"]["name"] == "dark"
        x, y = ring[0].astype(int) // 32
        assert props["measurements"]["score"] == pytest.approx(grid[y, x]) == props["measurements"]["P(pale)"]


@pytest.mark.skipif(not SHARED_SLIDE.is_file(), reason="shared real slide not present")
def test_slide_heatmap_on_real_svs(tmp_path):
    darkness = lambda p: PatchScores(1.0 - p.mean(axis=(1, 2, 3)) / 255.0)
    scores = score_slide(darkness, SHARED_SLIDE, 64, 2.0)
    grid = scores.grid()
    assert np.isfinite(grid).any() and np.nanmin(grid) >= 0 and np.nanmax(grid) <= 1
    png, npy, geojson = write_slide_heatmap(scores, tmp_path, "svs", "svs", "darkness")
    assert np.load(npy).shape == grid.shape and Image.open(png).size[0] >= 256
    tissue, tiles = _outline_and_tiles(json.loads(geojson.read_text()))
    assert len(tiles) == np.isfinite(grid).sum() and "classification" not in tiles[0]["properties"]
    width, height = scores.dimensions
    xy = _vertices(tissue)
    assert (xy >= 0).all() and (xy[:, 0] <= width).all() and (xy[:, 1] <= height).all()


def test_class_is_an_index_or_a_name_of_the_run():
    names = ["low", "intermediate", "high"]
    assert resolve_class(None, names) == 2
    assert resolve_class("intermediate", names) == 1
    assert resolve_class("0", names) == 0
    assert resolve_class(1, names) == 1
    for bad in ("7", "-1", "medium"):
        with pytest.raises(
            UserError, match=r"--class: expected a class index or name of the run \(0 low, 1 intermediate, 2 high\)"
        ):
            resolve_class(bad, names)


def _regression_run(run: Path, seed: int, checkpoint: str = FINETUNED):
    """A tiny regression run folder: a model of seed ``seed`` saved as ``checkpoint``, its record."""
    cfg = validate({"data": {"image_size": 32}, "task": {"name": "reg"}})
    plugins = default_plugins()
    prepared = PreparedData(PatchTable.from_rows([], 32), (TargetKind.TARGET,))
    torch.manual_seed(seed)
    model = build_downstream(cfg, plugins, prepared, None).eval()
    save_checkpoint({"modules": {"model": model.state_dict()}}, run / checkpoint)
    write_inference_record(run, describe_run(cfg, plugins, run, model.encoder.special, prepared, TargetKind.TARGET))
    return model, plugins


def test_inference_loads_the_best_fine_tuned_weights_when_kept(tmp_path):
    run = tmp_path / "run"
    last, plugins = _regression_run(run, seed=0)
    assert finetuned_checkpoint(run) == run / FINETUNED  # no validation: the last step's
    best, _ = _regression_run(run, seed=1, checkpoint=f"checkpoints/{BEST_FILE}")
    assert finetuned_checkpoint(run) == run / "checkpoints" / BEST_FILE
    rebuilt, record = load_inference_model(run, plugins)
    assert record.paths.checkpoint == str((run / "checkpoints" / BEST_FILE).resolve())
    batch = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(batch), best(batch))
        assert not torch.allclose(rebuilt(batch), last(batch))


def test_a_regression_run_is_rebuilt_from_its_record_and_paints_its_values(tmp_path):
    run = tmp_path / "run"
    model, plugins = _regression_run(run, seed=0)

    rebuilt, record = load_inference_model(run, plugins)
    batch = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(batch), model(batch))
    assert record.task is not None and record.task.target_kind is TargetKind.TARGET

    slide = tmp_path / "half.png"
    _pink_half_image(slide)
    written = heatmap(run, slide, tmp_path / "out", fallback_mpp=0.5, device="cpu")
    assert [p.name for p in written] == ["half_heatmap.png", "half_heatmap.npy", "half_tiles.geojson"]  # no CAM
    props = _outline_and_tiles(json.loads(written[2].read_text()))[1][0]["properties"]
    assert set(props["measurements"]) == {"score", "predicted value"} and "classification" not in props
    with pytest.raises(UserError, match="--class: task 'reg' predicts targets, not classes"):
        heatmap(run, slide, tmp_path / "out", target_class="1", fallback_mpp=0.5)


def _stain_target(path: Path) -> Path:
    Image.fromarray(synthetic_he(64, seed=3)).save(path)
    return path


@pytest.mark.slow
def test_heatmap_needs_only_the_run_folder_and_the_slide(tmp_path, monkeypatch):
    """Fine-tune a tiny stain-normalised cls run, delete its training data and stain target, then
    map a slide copied elsewhere from a third folder."""
    data, run = tmp_path / "data", tmp_path / "train" / "run"
    target = _stain_target(tmp_path / "target.png")
    monkeypatch.chdir(tmp_path)
    settings = [*TINY, "--set", f"data.cache_dir={data}", "--stain-norm", "reinhard", "--stain-target", target]
    sassl("run", "--task", "cls", "--steps", 1, "--finetune-steps", 2, "--out", "train/run", *settings)
    slide = shutil.copy(sorted(data.glob("synthetic/*/centre0_slide0.tif"))[0], tmp_path / "slide.tif")
    shutil.rmtree(data)
    target.unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    printed = sassl("heatmap", "--checkpoint", run, "--slide", slide, "--cam-patches", 2, "--class", "high").out.split()
    assert [Path(p).name for p in printed] == [
        "slide_heatmap.png",
        "slide_heatmap.npy",
        "slide_tiles.geojson",
        "slide_cam0.png",
        "slide_cam1.png",
    ]
    assert all(Path(p).parent == run / "heatmaps" for p in printed)
    grid = np.load(printed[1])
    assert grid.shape == (12, 12)  # 384 px slide, 32 px patches, both at 0.5 µm/px
    tissue, features = _outline_and_tiles(json.loads(Path(printed[2]).read_text()))
    assert len(features) == np.isfinite(grid).sum() > 0
    xy = _vertices(tissue)
    assert (xy >= 0).all() and (xy <= 384).all()  # within the 384 px slide
    props = features[0]["properties"]
    assert set(props["measurements"]) == {"score", "P(low)", "P(intermediate)", "P(high)"}
    assert props["classification"]["name"] in {"low", "intermediate", "high"}
    assert props["measurements"]["score"] == pytest.approx(props["measurements"]["P(high)"])
    assert Image.open(printed[3]).size == (2 * CAM_SIDE + CAM_SIDE // 32, CAM_SIDE)

    if SHARED_SLIDE.is_file():  # a real Aperio slide, at a coarser resolution than the run's
        real = sassl(
            "heatmap", "--checkpoint", run, "--slide", SHARED_SLIDE, "--mpp", 4, "--cam-patches", 1
        ).out.split()
        _, real_tiles = _outline_and_tiles(json.loads(Path(real[2]).read_text()))
        assert np.isfinite(np.load(real[1])).sum() == len(real_tiles) > 0
        assert Path(real[3]).is_file()

    assert_user_error(
        cli("heatmap", "--checkpoint", run, "--slide", slide, "--class", 7),
        "--class: expected a class index or name of the run (0 low, 1 intermediate, 2 high), found '7'",
    )
    (run / "inference.json").unlink()
    assert_user_error(
        cli("heatmap", "--checkpoint", run, "--slide", slide), "inference.json: not found", "re-run fine-tuning"
    )
