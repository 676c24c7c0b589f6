"""Colour maths: optical density, HED deconvolution, CIELAB, statistics and percentiles."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.color
import torch

from sassl_core import color
from tests.fixtures.he_images import shared_rgb, synthetic_he

SKIMAGE_OD_SCALE = -np.log(1e-6)  # skimage's rgb2hed divides OD by this
REAL_IMAGES = ["target_image.png", "histo.jpg"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def as_batch(rgb_uint8: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    return color.as_float_images(rgb_uint8[None]).to(dtype)


def test_hed_round_trip_synthetic_within_1e5():
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.99 + 0.01
    back = color.hed_to_rgb(color.rgb_to_hed(x))
    assert (back - x).abs().max() < 1e-5


def test_hed_round_trip_float64_is_exact_to_1e12():
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64) * 0.99 + 0.01
    assert (color.hed_to_rgb(color.rgb_to_hed(x)) - x).abs().max() < 1e-12


@pytest.mark.parametrize("name", REAL_IMAGES)
def test_hed_round_trip_real_image_within_1e4(name):
    """No jitter gives the real image back within 1e-4 (0.03 of a grey level); black pixels
    only move to the OD floor ``1e-6``."""
    x = as_batch(shared_rgb(name))
    back = color.hed_to_rgb(color.rgb_to_hed(x))
    assert (back - x).abs().max() < 1e-4


@pytest.mark.parametrize("name", ["histo.jpg"])
def test_rgb_to_hed_agrees_with_skimage(name):
    rgb = shared_rgb(name)
    ours = color.rgb_to_hed(as_batch(rgb, torch.float64))[0].permute(1, 2, 0).numpy()
    reference = skimage.color.rgb2hed(rgb) * SKIMAGE_OD_SCALE  # skimage clips negatives to 0
    positive = reference > 0
    assert positive.mean() > 0.3
    np.testing.assert_allclose(ours[positive], reference[positive], atol=1e-6)
    assert (ours[~positive] <= 1e-9).all()


def test_hed_concentrations_of_pure_stains():
    """An image made of one Ruifrok vector deconvolves to that stain alone."""
    od = color.RGB_FROM_HED[0].view(1, 3, 1, 1).float() * torch.tensor([0.5, 1.0]).view(1, 1, 1, 2)
    hed = color.rgb_to_hed(color.od_to_rgb(od))
    np.testing.assert_allclose(hed[0, :, 0].numpy(), [[0.5, 1.0], [0, 0], [0, 0]], atol=1e-5)


def test_hed_jitter_equals_deconvolve_scale_shift_reconstruct():
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 0.9 + 0.05
    scale = torch.tensor([[1.3, 0.8, 1.0], [1.0, 1.0, 1.0], [0.7, 1.2, 0.9]])
    shift = torch.tensor([[0.05, -0.02, 0.0], [0.0, 0.0, 0.0], [-0.03, 0.04, 0.01]])
    expected = color.hed_to_rgb(color.rgb_to_hed(x) * scale[:, :, None, None] + shift[:, :, None, None])
    out = color.hed_jitter(x, scale, shift)
    assert (out - expected).abs().max() < 1e-5
    assert (out[1] - x[1]).abs().max() < 1e-5  # scale 1, shift 0: identity
    assert (out[0] - x[0]).abs().max() > 0.02


def test_hed_jitter_scales_haematoxylin_only():
    rgb = as_batch(synthetic_he(48, seed=3))
    out = color.hed_jitter(rgb, torch.tensor([[1.5, 1.0, 1.0]]), torch.zeros(1, 3))
    before, after = color.rgb_to_hed(rgb), color.rgb_to_hed(out)
    stained = before[0, 0] > 0.2
    ratio = after[0, 0][stained] / before[0, 0][stained]
    assert torch.allclose(ratio, torch.full_like(ratio, 1.5), atol=1e-3)
    assert (after[0, 1][stained] - before[0, 1][stained]).abs().max() < 1e-3  # (white clips elsewhere)


@pytest.mark.parametrize("source", ["random", "histo.jpg"])
def test_rgb_to_lab_agrees_with_skimage(source):
    if source == "random":
        rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    else:
        rgb = shared_rgb(source)
    ours = color.rgb_to_lab(as_batch(rgb, torch.float64))[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours, skimage.color.rgb2lab(rgb), atol=1e-4)  # L in 0..100


def test_lab_round_trip():
    x = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    assert (color.lab_to_rgb(color.rgb_to_lab(x)) - x).abs().max() < 1e-4


def test_grayscale_weights():
    x = torch.rand(2, 3, 4, 4)
    expected = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    assert torch.allclose(color.grayscale(x)[:, 0], expected, atol=1e-6)


def test_masked_quantile_matches_numpy_percentile():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(6, 50))
    mask = rng.random((6, 50)) < 0.6
    mask[4] = False  # a row with nothing selected gives 0
    mask[5] = False
    mask[5, 7] = True  # a single value is every quantile
    for q in (0.0, 0.01, 0.5, 0.99, 1.0):
        ours = color.masked_quantile(torch.from_numpy(values), q, torch.from_numpy(mask)).numpy()
        expected = [np.percentile(v[m], 100 * q) if m.any() else 0.0 for v, m in zip(values, mask)]
        np.testing.assert_allclose(ours, expected, atol=1e-12)


def test_channel_stats_with_and_without_mask():
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    mask = torch.rand(2, 8, 8) < 0.5
    mean, std = color.channel_stats(x)
    assert torch.allclose(mean, x.flatten(2).mean(-1)) and torch.allclose(std, x.flatten(2).std(-1, unbiased=False))
    mean, std = color.channel_stats(x, mask)
    for b in range(2):
        picked = x[b][:, mask[b]]
        assert torch.allclose(mean[b], picked.mean(-1))
        assert torch.allclose(std[b], picked.std(-1, unbiased=False))


def test_match_channel_stats_reaches_target():
    x = torch.rand(3, 3, 16, 16, dtype=torch.float64) * 0.5
    target_mean, target_std = torch.tensor([0.2, 0.5, 0.7]), torch.tensor([0.05, 0.1, 0.2])
    mean, std = color.channel_stats(color.match_channel_stats(x, target_mean, target_std))
    assert torch.allclose(mean, target_mean.double().expand(3, 3), atol=1e-9)
    assert torch.allclose(std, target_std.double().expand(3, 3), atol=1e-6)


def test_haematoxylin_first_orders_by_red_od():
    h, e = torch.tensor([0.65, 0.70, 0.29]), torch.tensor([0.07, 0.99, 0.11])
    stains = torch.stack((torch.stack((e, h)), torch.stack((h, e))))
    ordered = color.haematoxylin_first(stains)
    assert torch.equal(ordered[:, 0], torch.stack((h, h))) and torch.equal(ordered[:, 1], torch.stack((e, e)))


def test_as_float_images_checks_shape():
    assert color.as_float_images(np.zeros((5, 7, 3), np.uint8)).shape == (1, 3, 5, 7)
    with pytest.raises(ValueError, match="found shape"):
        color.as_float_images(np.zeros((2, 3, 5, 7), np.uint8))


@pytest.mark.parametrize("device", DEVICES)
def test_colour_maths_run_on_device(device):
    x = torch.rand(2, 3, 8, 8, device=device)
    for fn in (color.rgb_to_hed, color.rgb_to_lab):
        out = fn(x)
        assert out.device == x.device
        assert torch.allclose(out.cpu(), fn(x.cpu()), atol=1e-4)
