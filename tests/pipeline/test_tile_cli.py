"""`sassl tile` on the real Aperio slide: tissue kept, white glass dropped."""

import json

import pytest
from PIL import Image

from sassl_core.wsi.cache import read_patch
from sassl_core.wsi.patches import PatchTable
from tests.fixtures.he_images import shared_data_dir
from tests.pipeline.tiny import sassl

SLIDE = shared_data_dir() / "cmu_small_region.svs"


@pytest.mark.skipif(not SLIDE.is_file(), reason="shared real slide not present")
def test_tile_real_slide_keeps_tissue_and_drops_glass(tmp_path):
    out = tmp_path / "tiles"
    proc = sassl("tile", SLIDE, "--out", out, "--patch-size", 224, "--mpp", 0.5)
    assert "1 slide(s)" in proc.out
    table = PatchTable.load(out / "patches.csv")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["patches_per_slide"] == {"cmu_small_region": len(table)} and summary["skipped"] == []
    # hand-made expectation: the slide is 2220 x 2967 px at 0.499 µm/px, so a 224 px patch at
    # 0.5 µm/px spans ~224 level-0 px; tissue covers about a third of the glass (checked by eye
    # on the overlay PNG), i.e. 40-60 of the 9 x 13 = 117 grid cells.
    assert 30 <= len(table) <= 70
    saturation = []
    for i in range(len(table)):
        patch = read_patch({k: table[k][i] for k in ("slide", "x", "y", "level", "read_size")}, 64).astype(float)
        saturation.append((patch.max(-1) - patch.min(-1)).mean())
    assert min(saturation) > 15, "a kept patch is nearly colourless glass"
    # the top-left corner of this slide is empty glass: no kept patch starts there
    assert not ((table["x"] < 200) & (table["y"] < 200)).any()
    overlay = Image.open(out / "masks" / "cmu_small_region_tiles.png")
    assert overlay.size[0] > 100


@pytest.mark.skipif(not SLIDE.is_file(), reason="shared real slide not present")
def test_tile_refuses_existing_output_and_reports_bad_slides(tmp_path):
    out = tmp_path / "tiles"
    broken = tmp_path / "broken.svs"
    broken.write_bytes(b"II*\x00garbage")
    proc = sassl("tile", SLIDE, broken, "--out", out, "--patch-size", 224)
    assert "skipped" in proc.err and "broken.svs" in proc.err
    again = sassl("tile", SLIDE, "--out", out, check=False)
    assert again.status == 2 and "Traceback" not in again.err


def _blob_tiff(folder):
    from tests.fixtures.layouts import tissue, write_tiff_slide

    return write_tiff_slide(folder / "slide.tiff", tissue(0).rgb, mpp=0.25)


def test_magnification_sets_the_target_resolution(tmp_path):
    slide = _blob_tiff(tmp_path)
    sassl("tile", slide, "--out", tmp_path / "mag", "--patch-size", 64, "--magnification", "20x", "--quiet")
    sassl("tile", slide, "--out", tmp_path / "mpp", "--patch-size", 64, "--mpp", 0.5, "--quiet")
    mag = json.loads((tmp_path / "mag" / "summary.json").read_text())
    mpp = json.loads((tmp_path / "mpp" / "summary.json").read_text())
    assert mag["parameters"]["target_mpp"] == 0.5 and mag["parameters"]["magnification"] == 20.0
    assert mag["patches_per_slide"] == mpp["patches_per_slide"]
    assert (tmp_path / "mag" / "patches.csv").read_text() == (tmp_path / "mpp" / "patches.csv").read_text()
    sassl("tile", slide, "--out", tmp_path / "m40", "--patch-size", 64, "--magnification", 40, "--quiet")
    table = PatchTable.load(tmp_path / "m40" / "patches.csv")
    assert set(table["level"]) == {0} and set(table["read_size"]) == {64}  # 40x = 0.25 µm/px = level 0


def test_max_per_slide_zero_keeps_every_patch(tmp_path):
    slide = _blob_tiff(tmp_path)
    sassl("tile", slide, "--out", tmp_path / "all", "--patch-size", 32, "--max-per-slide", 0, "--quiet")
    sassl("tile", slide, "--out", tmp_path / "five", "--patch-size", 32, "--max-per-slide", 5, "--quiet")
    every = len(PatchTable.load(tmp_path / "all" / "patches.csv"))
    assert every > 5 and len(PatchTable.load(tmp_path / "five" / "patches.csv")) == 5


def test_progress_lines_off_a_terminal_and_quiet(tmp_path):
    slide = _blob_tiff(tmp_path)
    loud = sassl("tile", slide, "--out", tmp_path / "loud", "--patch-size", 64)
    assert f"[1/1] {slide}" in loud.err and "tiled 1 slide(s)" in loud.out
    quiet = sassl("tile", slide, "--out", tmp_path / "quiet", "--patch-size", 64, "--quiet")
    assert quiet.out == "" and quiet.err == ""


def test_sigterm_exits_143_with_one_line_and_writes_nothing(tmp_path, monkeypatch):
    import os
    import signal

    import sassl_core.app.tile_cli as tile_cli

    def terminate(done, total, file):
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(tile_cli, "_progress", lambda quiet: (terminate, lambda: None))
    slide = _blob_tiff(tmp_path)
    result = sassl("tile", slide, "--out", tmp_path / "tiles", "--patch-size", 64, check=False)
    assert result.status == 143 and result.err.strip() == "tiling interrupted by signal 15; nothing written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slide.tiff"]


def test_progress_bar_on_a_terminal(monkeypatch):
    import io
    import sys

    from sassl_core.app.tile_cli import _progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    tick, close = _progress(quiet=False)
    for done in (1, 2, 3):
        tick(done, 3, f"/slides/s{done}.svs")
    close()
    assert "3/3" in terminal.getvalue() and "slide/s" in terminal.getvalue() and "s3.svs" in terminal.getvalue()
    assert _progress(quiet=True)[0] is None


def test_tile_format_option_and_shared_magnification_type(tmp_path):
    from sassl_core.app.cli import build_parser

    slide = _blob_tiff(tmp_path)
    sassl("tile", slide, "--out", tmp_path / "t", "--patch-size", 64, "--max-per-slide", 2, "--save-tiles")
    sassl("tile", slide, "--out", tmp_path / "j", "--patch-size", 64, "--max-per-slide", 2, "--save-tiles",
          "--tile-format", "jpg", "--quiet")  # fmt: skip
    assert [p.suffix for p in (tmp_path / "t" / "tiles" / "slide").iterdir()] == [".png", ".png"]
    assert [p.suffix for p in (tmp_path / "j" / "tiles" / "slide").iterdir()] == [".jpg", ".jpg"]
    parser = build_parser()
    for text in ("20x", "20", "20X"):
        args = ["heatmap", "--checkpoint", "run", "--slide", "s.svs", "--magnification", text]
        assert parser.parse_args(args).magnification == 20.0
    bad = sassl("heatmap", "--checkpoint", "run", "--slide", "s.svs", "--magnification", "20y", check=False)
    assert bad.status == 2 and "expected a magnification such as 10x, 20x or 40x, found '20y'" in bad.err
