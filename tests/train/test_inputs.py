"""Model inputs: one owner for stain normalisation and scaling, the same in every stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sassl_core.app import api
from sassl_core.config import InputConfig, deep_merge, validate
from sassl_core.errors import UserError
from sassl_core.plugins import default_plugins
from sassl_core.train import finetune as finetune_module
from sassl_core.train.inputs import ModelInput, build_model_input

TINY = {
    "data": {
        "image_size": 32,
        "max_per_slide": 8,
        "options": {"centres": 2, "slides_per_centre": 2, "slide_size": 384, "regions": 3, "seed": 0},
    },
    "task": {"name": "cls"},
    "finetune": {"steps": 2, "batch_size": 8},
    "trainer": {"device": "cpu"},
    "output": {"quiet": True, "tensorboard": False},
}
BLUE = (0.20, 0.25, 0.80)  # far from any H&E colour, so a stage that skips the normaliser shows


def _blue_target(path) -> str:
    rng = np.random.default_rng(0)
    image = np.clip(np.array(BLUE) + rng.normal(0, 0.05, (48, 48, 3)), 0, 1)
    Image.fromarray((image * 255).round().astype(np.uint8)).save(path)
    return str(path)


def test_model_input_scales_after_the_stain_transform():
    inputs = ModelInput(InputConfig(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)), torch.zeros_like)  # all black
    out = inputs(torch.full((2, 4, 4, 3), 255, dtype=torch.uint8))
    assert out.shape == (2, 3, 4, 4)
    assert torch.allclose(out, torch.full_like(out, -2.0))


def test_a_stain_norm_without_target_is_refused_naming_the_field():
    cfg = validate({"data": {"stain_norm": "reinhard"}})
    with pytest.raises(UserError, match="data.stain_target"):
        build_model_input(cfg, default_plugins())


def test_input_std_must_be_positive():
    with pytest.raises(UserError, match="inputs.std"):
        validate({"inputs": {"std": [0.2, 0.0, 0.2]}})


@pytest.mark.slow
def test_finetuning_and_evaluation_feed_the_encoder_the_same_stain_normalised_patches(tmp_path, monkeypatch):
    """With a Reinhard target of saturated blue, every patch reaching the encoder is blue in
    fine-tuning AND in evaluation (evaluation once skipped the normaliser: mean RGB 0.71/0.47/0.80)."""
    cfg = validate(
        deep_merge(
            TINY,
            {
                "data": {"stain_norm": "reinhard", "stain_target": _blue_target(tmp_path / "t.png")},
                "output": {"dir": str(tmp_path / "run")},
            },
        )
    )
    seen: list[torch.Tensor] = []
    stats = torch.tensor(cfg.inputs.std).view(1, 3, 1, 1), torch.tensor(cfg.inputs.mean).view(1, 3, 1, 1)

    def record(module, args):
        seen.append((args[0].detach() * stats[0] + stats[1]).mean(dim=(0, 2, 3)))

    def hooked(*args, **kwargs):
        model = build(*args, **kwargs)
        model.encoder.register_forward_pre_hook(record)
        return model

    build = finetune_module.build_downstream
    monkeypatch.setattr(finetune_module, "build_downstream", hooked)
    monkeypatch.setattr(api, "build_downstream", hooked)
    api.finetune(cfg)
    finetuning = torch.stack(seen).mean(0)
    seen.clear()
    api.evaluate(cfg)
    evaluation = torch.stack(seen).mean(0)
    assert torch.allclose(finetuning, torch.tensor(BLUE), atol=0.06), finetuning
    assert torch.allclose(evaluation, finetuning, atol=0.03), (evaluation, finetuning)
