"""Tiling many slides into a folder: outputs, own outputs never re-tiled, output folder checks,
interruption, stale staging and parallel workers."""

import errno
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from sassl_core.errors import UserError
from sassl_core.wsi import tiling
from sassl_core.wsi.patches import PatchTable
from sassl_core.wsi.reader import open_slide
from sassl_core.wsi.tiling import TileOptions, TilingInterrupted, tile_slide, tile_to_folder


def test_masks_overlay_tiles_and_every_parameter(tmp_path, blob_slide):
    out = tmp_path / "out"
    options = TileOptions(patch_size=32, target_mpp=0.5, magnification=20.0, max_per_slide=0, save_tiles=True)
    summary = tile_to_folder([blob_slide.path], out, options)
    with open_slide(blob_slide.path) as reader:
        every = tile_slide(reader, 32, 0.5)  # no limit
    assert summary["patches"] == len(every) > 20  # --max-per-slide 0: all tissue patches
    table = PatchTable.load(out / "patches.csv")
    assert sorted(zip(table["x"], table["y"])) == sorted((r["x"], r["y"]) for r in every)

    mask = Image.open(out / "masks" / "blob_mask.png")
    overlay = np.asarray(Image.open(out / "masks" / "blob_tiles.png"))
    pixels = np.asarray(mask)
    assert mask.mode == "L" and set(np.unique(pixels)) == {0, 255} and pixels.shape == overlay.shape[:2]
    # the mask matches the drawn tissue blob, scaled to the mask
    truth = np.asarray(Image.fromarray(blob_slide.tissue).resize(mask.size, Image.Resampling.NEAREST))
    assert ((pixels == 255) == truth).mean() > 0.95
    blue = (overlay[..., 2] > 200) & (overlay[..., 0] < 60) & (overlay[..., 1] < 60)
    assert blue.sum() > 10 * len(every)  # kept patches outlined (a few pixels of outline each)
    assert not blue[~truth].any() or blue[truth].sum() > 5 * blue[~truth].sum()  # outlines lie on tissue

    tiles = sorted((out / "tiles" / "blob").iterdir())
    assert len(tiles) == len(every) and {p.name for p in tiles} == {
        f"{x}_{y}.png" for x, y in zip(table["x"], table["y"])
    }
    first = np.asarray(Image.open(tiles[0]))
    assert first.shape == (32, 32, 3) and first.std() > 5  # tissue, not blank

    assert set(summary["parameters"]) == {
        "patch_size", "target_mpp", "magnification", "fallback_mpp", "max_per_slide", "tissue_threshold",
        "overlap", "seed", "save_tiles", "tile_format", "workers",
    }  # fmt: skip
    assert summary["parameters"]["magnification"] == 20.0 and summary["sassl_version"]


def test_tiling_a_folder_into_itself_again_skips_its_own_outputs(tmp_path, blob_slide):
    folder = tmp_path / "slides"
    folder.mkdir()
    shutil.copy(blob_slide.path, folder / "blob.tiff")
    options = TileOptions(patch_size=32, max_per_slide=5, save_tiles=True)  # tiles are .png: slide suffixes
    first = tile_to_folder([folder], folder / "tiles", options)
    again = tile_to_folder([folder], folder / "tiles", options, overwrite=True)
    other = tile_to_folder([folder], folder / "other", options)
    for summary in (first, again, other):
        assert summary["patches_per_slide"] == {"blob": 5} and summary["skipped"] == []
    assert len(list((folder / "tiles" / "tiles" / "blob").iterdir())) == 5  # the old tiles were replaced


def test_output_folder_that_cannot_be_one(tmp_path, blob_slide):
    (tmp_path / "file").write_text("x")
    options = TileOptions(patch_size=32)
    cases = {
        tmp_path / "file": "file: expected a folder for the output, found one that is a file",
        tmp_path
        / "file"
        / "out": f"file/out: expected a folder for the output, found one that lies under the file {tmp_path / 'file'}",
        "/proc/no-such/out": "/proc/no-such/out: the output folder cannot be created (",
    }
    for out, message in cases.items():
        with pytest.raises(UserError, match=message.replace("(", r"\(")):
            tile_to_folder([blob_slide.path], out, options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_removes_the_staging_folder(tmp_path, blob_slide, workers):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b", "c"):
        os.symlink(blob_slide.path, folder / f"{name}.tiff")
    before = signal.getsignal(signal.SIGTERM)

    def terminate(done, total, file):  # SIGTERM arrives while the first slides are done
        os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TilingInterrupted) as caught:
        tile_to_folder([folder], tmp_path / "out", TileOptions(patch_size=32), workers=workers, progress=terminate)
    assert caught.value.signum == signal.SIGTERM
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no output, no .out.partial-PID
    assert signal.getsignal(signal.SIGTERM) is before


def test_stale_staging_of_a_dead_run_is_removed(tmp_path, blob_slide):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.partial-{dead.pid}"
    live = tmp_path / f".out.partial-{os.getppid()}"  # another run still going
    for folder in (stale, live):
        (folder / "masks").mkdir(parents=True)
    tile_to_folder([blob_slide.path], tmp_path / "out", TileOptions(patch_size=32))
    assert not stale.exists() and live.exists()


def test_workers_fork_unless_threads_or_torch_are_there(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    if threading.active_count() == 1:
        assert tiling._start_method().get_start_method() == "fork"
    monkeypatch.setitem(sys.modules, "torch", sys)  # torch loaded: its OpenMP pool does not survive a fork
    assert tiling._start_method().get_start_method() == "spawn"


@pytest.mark.slow  # pools of worker processes (spawned ones import the slide stack)
@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_workers_give_the_same_tiling_in_slide_order(tmp_path, blob_slide, monkeypatch, start):
    monkeypatch.setattr(tiling, "_start_method", lambda: multiprocessing.get_context(start))
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("c", "a", "b"):
        shutil.copy(blob_slide.path, folder / f"{name}.tiff")
    (folder / "bad.svs").write_bytes(b"not a slide")
    (folder / "sub").mkdir()
    shutil.copy(blob_slide.path, folder / "sub" / "a.tiff")  # a second slide with the stem 'a'
    options = TileOptions(patch_size=32, max_per_slide=7)
    one = tile_to_folder([folder], tmp_path / "one", options, workers=1)
    two = tile_to_folder([folder], tmp_path / "two", options, workers=2)
    assert (tmp_path / "one" / "patches.csv").read_text() == (tmp_path / "two" / "patches.csv").read_text()
    for summary in (one, two):
        del summary["seconds"], summary["parameters"]["workers"]
    assert one == two and list(one["patches_per_slide"]) == ["a", "b", "c", "sub/a"]
    assert [s["file"].split("/")[-1] for s in one["skipped"]] == ["bad.svs"]
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["parameters"]["workers"] == 2
    with pytest.raises(UserError, match="bad.svs: unreadable slide"):
        tile_to_folder([folder], tmp_path / "strict", options, workers=2, strict=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "one", "two"]


def test_slides_sharing_a_stem_in_sub_folders_are_all_tiled(tmp_path, blob_slide):
    root = tmp_path / "myslides"
    for centre in ("centreA", "centreB"):
        (root / centre).mkdir(parents=True)
        shutil.copy(blob_slide.path, root / centre / "s1.tiff")
    shutil.copy(blob_slide.path, root / "centreA" / "s2.tiff")
    options = TileOptions(patch_size=32, max_per_slide=3, save_tiles=True)
    summary = tile_to_folder([root, root / "centreA" / "s2.tiff"], tmp_path / "out", options)
    assert summary["patches_per_slide"] == {"centreA/s1": 3, "s2": 3, "centreB/s1": 3}
    assert [s["reason"] for s in summary["skipped"]] == [
        f"{root / 'centreA' / 's2.tiff'}: expected each slide once, found this file again"
    ]
    table = PatchTable.load(tmp_path / "out" / "patches.csv")
    assert list(table["slide_id"]) == list(table["source"])
    assert sorted(set(table["slide_id"])) == ["centreA/s1", "centreB/s1", "s2"]
    masks = sorted(p.name for p in (tmp_path / "out" / "masks").iterdir())
    assert masks == [f"{n}_{k}.png" for n in ("centreA__s1", "centreB__s1", "s2") for k in ("mask", "tiles")]
    assert sorted(p.name for p in (tmp_path / "out" / "tiles").iterdir()) == ["centreA__s1", "centreB__s1", "s2"]


def test_slide_ids_keep_the_suffix_only_where_the_stem_path_is_shared(tmp_path):
    paths = [
        tmp_path / "a" / "s1.svs",
        tmp_path / "a" / "s1.tiff",
        tmp_path / "b" / "s1.svs",
        tmp_path / "b" / "s2.svs",
    ]
    assert tiling.slide_ids([*paths, paths[3]]) == ["a/s1.svs", "a/s1.tiff", "b/s1", "s2", None]
    assert tiling.output_name("a/s1.svs") == "a__s1.svs"


def test_tiles_as_jpeg_synced_once_and_an_unknown_format(tmp_path, blob_slide, monkeypatch):
    syncs = []
    monkeypatch.setattr(tiling.os, "sync", lambda: syncs.append(sorted(tmp_path.glob(".out.partial-*/tiles/*/*"))))
    options = TileOptions(patch_size=32, max_per_slide=4, save_tiles=True, tile_format="jpg")
    summary = tile_to_folder([blob_slide.path], tmp_path / "out", options)
    assert len(syncs) == 1 and len(syncs[0]) == 4  # one sync, of the staged tiles, before the move
    tiles = sorted((tmp_path / "out" / "tiles" / "blob").iterdir())
    assert summary["parameters"]["tile_format"] == "jpg" and len(tiles) == 4
    assert all(p.suffix == ".jpg" for p in tiles)  # no temporary files left beside them
    with Image.open(tiles[0]) as first:
        assert first.format == "JPEG" and first.size == (32, 32)
    with pytest.raises(UserError, match="tile format: expected png or jpg, found 'tif'"):
        TileOptions(tile_format="tif")


def test_a_full_disk_while_writing_tiles_is_one_line_and_writes_nothing(tmp_path, blob_slide, monkeypatch):
    def full(image, fh):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setitem(tiling.TILE_FORMATS, "png", full)
    options = TileOptions(patch_size=32, max_per_slide=2, save_tiles=True)
    with pytest.raises(UserError, match="blob: expected free disk space to write the tiles, found the disk full"):
        tile_to_folder([blob_slide.path], tmp_path / "out", options, strict=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
