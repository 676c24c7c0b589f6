"""The plugin samples in CONTRIBUTING.md register, build and work as the guide says."""

from __future__ import annotations

import re
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sassl_core.errors import UserError
from sassl_core.interfaces import DatasetContext, TargetKind
from sassl_core.plugins import load_plugins

GUIDE = Path(__file__).parents[1] / "CONTRIBUTING.md"


def guide_samples() -> list[types.ModuleType]:
    """Every ```python block of the guide that implements a hook, executed as a module."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    modules = []
    for i, code in enumerate(b for b in blocks if "@sassl_core.hookimpl" in b):
        module = types.ModuleType(f"contributing_sample_{i}")
        exec(compile(code, f"CONTRIBUTING.md sample {i}", "exec"), module.__dict__)
        modules.append(module)
    return modules


@pytest.fixture(scope="module")
def samples() -> list[types.ModuleType]:
    return guide_samples()


@pytest.fixture
def plugins(samples, monkeypatch):
    monkeypatch.setenv("SASSL_DISABLE_PLUGIN_AUTOLOAD", "1")
    return load_plugins(extra=[(m.__name__, m) for m in samples])


def test_every_extension_point_has_a_sample(plugins):
    assert not [f.message() for f in plugins.failures]
    assert {kind: plugins[kind].names() for kind in ("ssl", "backbone", "task", "dataset", "stain")} == {
        "ssl": ["vicreg"],
        "backbone": ["convnext_atto"],
        "task": ["multiscale_cls"],
        "dataset": ["labelled_images"],
        "stain": ["channel_gain"],
    }


def _tiny_encoder() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())


def test_ssl_sample_trains(plugins):
    encoder = _tiny_encoder()
    method = plugins["ssl"].create("vicreg", {"proj_dim": 16}, encoder=encoder, feature_dim=8)
    out = method(torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32))
    assert out.s1.shape == out.s2.shape == (4, 16)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert encoder[0].weight.grad.abs().sum() > 0


def test_ssl_sample_rejects_unknown_options(plugins):
    with pytest.raises(UserError, match="vicreg.*proj_size"):
        plugins["ssl"].create("vicreg", {"proj_size": 16}, encoder=_tiny_encoder(), feature_dim=8)


def test_backbone_sample_is_timm_style(plugins):
    from sassl_core.method.features import feature_levels

    model = plugins["backbone"].create("convnext_atto", {}, image_size=32)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, model.num_features)
    assert [level.channels for level in feature_levels(model)][-1] == model.num_features


def test_task_sample_reads_every_level(plugins):
    head = plugins["task"].create("multiscale_cls", {}, feature_channels=[4, 8], num_outputs=3)
    assert plugins["task"].get("multiscale_cls").target_kind is head.target_kind is TargetKind.LABEL
    levels = [torch.randn(5, 4, 8, 8), torch.randn(5, 8, 2, 2)]
    probs = head.predict(head(levels, 32))
    assert probs.shape == (5, 3)
    assert torch.allclose(probs.sum(1), torch.ones(5))
    assert head.linear.in_features == 12
    metrics = head.metrics(probs.detach().numpy(), np.array([0, 1, 2, 0, 1]), np.array(["a"] * 5))
    assert 0.0 <= metrics["accuracy"] <= 1.0
    with pytest.raises(UserError, match="multiscale_cls"):
        plugins["task"].create("multiscale_cls", {}, feature_channels=[4, 8], num_outputs=None)


def _half_tissue_image(path: Path, seed: int) -> None:
    """128 px: glass (white) on the left, purple-stained noise on the right."""
    rng = np.random.default_rng(seed)
    pixels = np.full((128, 128, 3), 250, np.uint8)
    pixels[:, 64:] = np.clip(rng.normal((150, 80, 170), 20, (128, 64, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def test_dataset_sample_indexes_labelled_images(plugins, tmp_path):
    for i in range(3):
        _half_tissue_image(tmp_path / f"img{i}.png", i)
    (tmp_path / "labels.csv").write_text(
        "file,label,source,split\nimg0.png,tumour,centre_a,train\nimg1.png,normal,centre_b,train\n"
        "img2.png,tumour,centre_b,test\n"
    )
    context = DatasetContext(root=tmp_path, cache_dir=tmp_path / "cache", patch_size=32, fallback_mpp=0.5)
    prepared = plugins["dataset"].create("labelled_images", {}, context=context)
    table = prepared.patches
    assert prepared.class_names == ["normal", "tumour"]
    assert prepared.target_kinds == (TargetKind.LABEL,)
    assert len(table) == 3 * 8  # the 4 x 2 tissue patches of the right half of each image
    assert (table["x"] >= 64).all()
    assert sorted(set(table["split"])) == ["test", "train"]
    assert set(table["label"][table["slide_id"] == "img1.png"]) == {0}


def test_dataset_sample_names_the_missing_column(plugins, tmp_path):
    (tmp_path / "labels.csv").write_text("file,label\nimg0.png,tumour\n")
    context = DatasetContext(root=tmp_path, cache_dir=tmp_path, patch_size=32)
    with pytest.raises(UserError, match=r"labels\.csv: .*missing source, split"):
        plugins["dataset"].create("labelled_images", {}, context=context)


def test_stain_sample_matches_the_target_mean(plugins):
    target = np.zeros((1, 16, 16, 3), np.uint8)
    target[..., :] = (200, 100, 150)
    transform = plugins["stain"].create("channel_gain", {}).fit(target)
    batch = torch.full((2, 3, 16, 16), 0.5)
    out = transform(batch)
    assert out.shape == batch.shape and out.device == batch.device
    assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.tensor([200, 100, 150]) / 255, atol=1e-4)
