"""Segmentation head (paper §3.3): every decoder outputs the input size and learns."""

import numpy as np
import pytest
import torch
from head_helpers import CHANNELS, fit, make_levels

from sassl_core.errors import UserError
from sassl_core.interfaces import TargetKind
from sassl_core.plugins import default_plugins
from sassl_plugins.tasks import seg

DECODERS = ["unet", "unetpp", "deeplabv3plus"]


def square_masks(batch=4, size=32):
    masks = torch.zeros(batch, size, size, dtype=torch.long)
    masks[:, 8:24, 8:24] = 1
    return masks


@pytest.mark.parametrize("decoder", DECODERS)
def test_output_at_input_size_and_learning(decoder):
    options = {"decoder": decoder, "decoder_channels": 8}
    head = default_plugins()["task"].create("seg", options, feature_channels=CHANNELS, num_outputs=2)
    assert head.target_kind is TargetKind.MASK
    levels = make_levels(4)
    logits = head(levels, 32)
    assert logits.shape == (4, 2, 32, 32)
    assert head.predict(logits).shape == (4, 32, 32)
    first, last = fit(head, levels, square_masks(), steps=12)
    assert last < 0.8 * first


@pytest.mark.parametrize("decoder", DECODERS)
def test_single_stride_levels_like_vit(decoder):
    head = seg.build(seg.SegmentationOptions(decoder=decoder, decoder_channels=8), [12] * 4, 3)
    levels = make_levels(2, 64, channels=[12] * 4, reductions=[16] * 4)
    assert head(levels, 64).shape == (2, 3, 64, 64)


def test_metrics_and_bad_options():
    head = seg.build(seg.SegmentationOptions(), CHANNELS, 2)
    m = head.metrics(np.array([[[1, 0]]]), np.array([[[1, 1]]]), None)
    assert m["pixel_accuracy"] == 0.5 and np.isclose(m["dice"], 2 / 3)
    with pytest.raises(UserError, match="low_level_index"):
        seg.build(seg.SegmentationOptions(decoder="deeplabv3plus", low_level_index=7), CHANNELS, 2)
    with pytest.raises(UserError, match="at least 2 mask classes"):
        seg.build(seg.SegmentationOptions(), CHANNELS, 1)
