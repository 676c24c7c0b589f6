"""Grad-CAM of patches and slide heatmaps (paper §4 visual checks)."""

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from sassl_core.app.heatmap import grad_cam, save_cam_overlay, slide_heatmap
from sassl_core.method.transfer import build_dual_encoder
from sassl_plugins.tasks import cls
from tests.fixtures.he_images import shared_data_dir

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
    patch = np.full((64, 64, 3), 200, np.uint8)
    out = save_cam_overlay(patch, cam[::2, ::2], tmp_path / "cam.png")
    saved = np.asarray(Image.open(out))
    assert saved.shape == (64, 64, 3) and not np.array_equal(saved, patch)


def _pink_half_image(path: Path) -> None:
    rng = np.random.default_rng(0)
    img = np.full((256, 256, 3), 245, np.uint8)
    img[:, :128] = (np.array([200, 110, 170]) + rng.integers(-20, 20, (256, 128, 3))).clip(0, 255)
    Image.fromarray(img.astype(np.uint8)).save(path)


def test_slide_heatmap_paints_tissue_patches(tmp_path):
    slide = tmp_path / "half.png"
    _pink_half_image(slide)
    seen = []

    def predict(patches):
        seen.append(patches.shape)
        return patches[..., 1].mean(axis=(1, 2)) / 255.0  # green: low on tissue

    heat = slide_heatmap(predict, slide, 32, 0.5, tmp_path / "heat.png", fallback_mpp=0.5, max_side=256)
    assert heat.shape == (256, 256)
    assert all(s[1:] == (32, 32, 3) for s in seen)
    assert np.isfinite(heat[:, :100]).mean() > 0.9  # tissue half painted
    assert np.isnan(heat[:, 160:]).all()  # background half untouched
    assert np.nanmax(heat) < 0.6
    assert (tmp_path / "heat.png").is_file()


@pytest.mark.skipif(not SHARED_SLIDE.is_file(), reason="shared real slide not present")
def test_slide_heatmap_on_real_svs(tmp_path):
    heat = slide_heatmap(
        lambda p: 1.0 - p.mean(axis=(1, 2, 3)) / 255.0, SHARED_SLIDE, 64, 2.0, tmp_path / "svs.png", max_side=300
    )
    assert np.isfinite(heat).any() and np.nanmin(heat) >= 0 and np.nanmax(heat) <= 1
    assert Image.open(tmp_path / "svs.png").size == (heat.shape[1], heat.shape[0])
