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


def test_ignored_pixels_count_in_neither_loss_nor_metrics():
    head = seg.build(seg.SegmentationOptions(decoder_channels=8), CHANNELS, 2)
    logits = head(make_levels(2), 32).detach().requires_grad_(True)
    masks = square_masks(2)
    masks[:, :4] = 255  # unannotated rows
    loss = head.loss(logits, masks)
    loss.backward()
    assert torch.isfinite(loss)
    assert logits.grad[:, :, :4].abs().max() == 0 and logits.grad[:, :, 4:].abs().max() > 0
    pred = head.predict(logits.detach()).numpy()
    truth = masks.numpy()
    assert head.metrics(pred, truth, None) == head.metrics(pred[:, 4:], truth[:, 4:], None)
    assert head.loss(logits, torch.full_like(masks, 255)) == 0  # nothing annotated: no signal


def test_ignore_value_is_configurable_and_out_of_range_values_refused():
    head = seg.build(seg.SegmentationOptions(ignore_index=9), CHANNELS, 2)
    logits = head(make_levels(1), 32).detach()
    masks = square_masks(1)
    masks[0, 0, 0] = 9
    assert torch.isfinite(head.loss(logits, masks))
    masks[0, 0, 0] = 255
    with pytest.raises(UserError, match=r"mask: expected class values 0..1 or the ignore value 9 .*found 255"):
        head.loss(logits, masks)
    with pytest.raises(UserError, match="found 255"):
        head.metrics(head.predict(logits).numpy(), masks.numpy(), None)


def test_headline_is_the_mean_patch_dice():
    head = seg.build(seg.SegmentationOptions(), CHANNELS, 2)
    pred, truth = np.array([[[1, 0]], [[0, 0]]]), np.array([[[1, 1]], [[0, 0]]])
    assert head.headline == "dice"
    assert head.headline_score(pred, truth) == head.metrics(pred, truth, None)["dice"] == (2 / 3 + 1.0) / 2
    dice, iou = head.patch_scores(pred, truth)
    assert dice.tolist() == [2 / 3, 1.0] and iou.tolist() == [(0.0 + 0.5) / 2, 1.0]
