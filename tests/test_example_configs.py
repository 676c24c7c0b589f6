"""The ready-made configs in examples/configs validate against the run config schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from sassl_core.config import load_config

CONFIGS = sorted((Path(__file__).parents[1] / "examples" / "configs").glob("*.yaml"))


def test_configs_are_shipped():
    names = {p.name for p in CONFIGS}
    assert {
        "quick_cpu.yaml",
        "panda_gpu.yaml",
        "camelyon16_seg_gpu.yaml",
        "breastpathq_reg_gpu.yaml",
        "tcga_cls_gpu.yaml",
    } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_validates(path):
    cfg = load_config([path])
    assert cfg.pretrain.batch_size % cfg.pretrain.sources_per_batch == 0  # k sources x m patches
    assert cfg.pretrain.batch_size // cfg.pretrain.sources_per_batch >= 2  # same-source pairs exist
    expected_device = "cpu" if path.stem.endswith("_cpu") else "cuda"
    assert cfg.trainer.device == expected_device


@pytest.fixture(scope="module")
def plugins():
    from sassl_core.plugins import load_plugins

    return load_plugins()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_components_are_registered(path, plugins):
    cfg = load_config([path])
    for kind, name in (
        ("dataset", cfg.data.dataset),
        ("backbone", cfg.backbone.name),
        ("ssl", cfg.ssl.method),
        ("task", cfg.task.name),
    ):
        if not plugins[kind].names():
            pytest.skip(f"no {kind} plugins in this tree yet")
        plugins[kind].get(name)  # raises UserError naming what exists
