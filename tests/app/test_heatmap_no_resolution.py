"""A slide without a resolution: the heatmap's error advises the heatmap's own option."""

import numpy as np
import pytest
from PIL import Image

from sassl_core.app.heatmap import score_slide
from sassl_core.errors import UserError


def test_slide_without_resolution_names_fallback_mpp(tmp_path):
    slide = tmp_path / "plain.png"  # a PNG carries no µm/px
    Image.fromarray(np.full((128, 128, 3), (200, 120, 180), np.uint8)).save(slide)

    def never(patches):
        raise AssertionError("no patch is scored without a resolution")

    with pytest.raises(UserError, match=r"plain\.png: no resolution .*; pass --fallback-mpp$"):
        score_slide(never, slide, 32, 0.5)
