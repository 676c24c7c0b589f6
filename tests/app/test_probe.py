"""The centre probe: slide-level split, a probe that fits, and a probe that really sees stain."""

import numpy as np
import pytest
import torch

from sassl_core.app.probe import centre_probe, fit_linear_probe, probe_split
from sassl_core.config import RunConfig
from sassl_core.plugins import default_plugins
from sassl_core.train.backbone import create_backbone
from sassl_core.train.checkpoint import export_encoder
from sassl_core.train.data import prepare_dataset
from sassl_core.train.runtime import Runtime


def test_split_takes_half_the_slides_of_every_centre_and_keeps_slides_whole():
    slides = np.array(["a1", "a1", "a2", "a3", "a4", "b1", "b2", "b2", "b3"])
    centres = np.array(["a"] * 5 + ["b"] * 4)
    fit = probe_split(slides, centres, seed=0)
    for slide in set(slides):
        assert len(set(fit[slides == slide])) == 1  # a slide is never on both sides
    assert len(set(slides[fit & (centres == "a")])) == 2 and len(set(slides[fit & (centres == "b")])) == 1
    assert len(set(slides[~fit & (centres == "b")])) == 2


@pytest.mark.parametrize(
    "slides, centres",
    [
        (["a1", "a2", "b1"], ["a", "a", "b"]),  # centre b has one slide: nothing to hold out
        (["a1", "a2", "a3"], ["a", "a", "a"]),  # one centre: nothing to tell apart
    ],
)
def test_split_refuses_too_few_slides_or_centres(slides, centres):
    assert probe_split(np.array(slides), np.array(centres), seed=0) is None


def test_probe_separates_separable_features_and_not_noise():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat(40)
    separable = torch.randn(120, 16, generator=gen) + 3 * torch.nn.functional.one_hot(labels, 16)
    probe = fit_linear_probe(separable[:60], labels[:60], 3)
    assert (probe(separable[60:]).argmax(1) == labels[60:]).float().mean() >= 0.95
    noise = torch.randn(120, 16, generator=gen)
    held_out = (fit_linear_probe(noise[:60], labels[:60], 3)(noise[60:]).argmax(1) == labels[60:]).float().mean()
    assert held_out < 0.6


def _probe_accuracy(tmp_path, stain_shift: float) -> dict:
    cfg = RunConfig.model_validate(
        {
            "data": {
                "image_size": 32,
                "max_per_slide": 24,
                "options": {
                    "centres": 3,
                    "slides_per_centre": 2,
                    "slide_size": 384,
                    "regions": 3,
                    "seed": 0,
                    "stain_shift": stain_shift,
                },
            },
            "trainer": {"device": "cpu"},
        }
    )
    plugins = default_plugins()
    torch.manual_seed(0)
    encoder = create_backbone(plugins, cfg.backbone.name, cfg.backbone.options, cfg.data.image_size)
    export_encoder(encoder, tmp_path / "encoder.safetensors", cfg.backbone.name)  # untrained: it keeps every colour
    table = prepare_dataset(cfg, plugins).patches
    result = centre_probe(cfg, plugins, table, tmp_path / "encoder.safetensors", Runtime(torch.device("cpu")))
    assert result["fit_patches"] + result["test_patches"] == len(table) and result["centres"] == 3
    return result


def test_probe_reads_the_centre_off_stained_patches_and_not_off_unstained_ones(tmp_path):
    stained = _probe_accuracy(tmp_path, stain_shift=2.0)
    same = _probe_accuracy(tmp_path, stain_shift=0.0)
    assert stained["majority"] == pytest.approx(1 / 3) and same["majority"] == pytest.approx(1 / 3)
    assert stained["accuracy"] >= 0.6  # an untrained ResNet-18 at 32 px still passes colour through
    assert same["accuracy"] <= 0.45 < stained["accuracy"] - 0.2
    assert stained["colour_accuracy"] >= 0.8 and same["colour_accuracy"] <= 0.55  # colour alone tells stained centres
    # per-centre BatchNorm statistics take the global cast away from an untrained encoder
    assert stained["adabn_accuracy"] < stained["accuracy"]
