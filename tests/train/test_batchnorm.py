"""AdaBN: BatchNorm statistics re-estimated on one domain, the original model untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sassl_core.train.batchnorm import adapted_copy


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    model.train()
    for _ in range(3):  # some training statistics to keep
        model(torch.rand(8, 3, 16, 16))
    return model.eval()


def test_a_per_channel_colour_cast_is_removed_exactly_and_the_model_is_untouched():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.rand(16, 3, 16, 16)
    cast = images * torch.tensor([0.6, 1.0, 1.4]).view(1, 3, 1, 1) + torch.tensor([0.1, 0.0, -0.2]).view(1, 3, 1, 1)
    on_images = adapted_copy(model, images.split(4))
    on_cast = adapted_copy(model, cast.split(4))
    with torch.no_grad():
        assert torch.allclose(on_images(images), on_cast(cast), atol=1e-4)  # affine per-channel cast: gone
        assert not torch.allclose(model(images), model(cast), atol=1e-2)  # the training statistics keep it
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not on_cast.training and not model.training


@pytest.mark.slow
def test_evaluation_with_adapt_bn_adapts_one_copy_per_source_on_that_source_alone(tmp_path, monkeypatch):
    from sassl_core.app import api
    from sassl_core.config import deep_merge, validate
    from sassl_core.train import evaluate as evaluate_module
    from tests.train.test_inputs import TINY

    seen: list[int] = []

    def spy(model, batches):
        batches = list(batches)
        seen.append(sum(len(b) for b in batches))
        return adapted_copy(model, batches)

    monkeypatch.setattr(evaluate_module, "adapted_copy", spy)
    graded = {"task": {"options": {"ordinal": True}}}  # QWK per source names the evaluated sources
    cfg = validate(deep_merge(TINY, {"output": {"dir": str(tmp_path / "run")}} | graded))
    api.finetune(cfg)
    plain = api.evaluate(cfg).metrics
    assert seen == []
    adapted = api.evaluate(validate(deep_merge(cfg.model_dump(mode="json"), {"task": {"adapt_bn": True}}))).metrics
    assert len(seen) == len(plain["metrics"]["qwk_by_source"]) == 2  # one copy per evaluated source
    assert sum(seen) == adapted["n_patches"] == plain["n_patches"]  # every patch, each in its source
