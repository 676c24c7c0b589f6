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
    table = PatchTable.load(out / "patches.jsonl")
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
    overlay = Image.open(out / "masks" / "cmu_small_region_tissue.png")
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
