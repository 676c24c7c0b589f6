"""Every registered stain transform (the paper's Table 1 baselines): ``fit`` on uint8 tissue
images returns the transform, and a call keeps the batch's shape, dtype and device with values
in ``[0, 1]``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sassl_core.color import as_float_images
from sassl_core.interfaces import StainTransform
from tests.contract.common import PLUGINS, names
from tests.fixtures.he_images import synthetic_he

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
#: a bluer, darker stain than the targets', so the transform has something to change
SOURCE_STAINS = np.array([[0.75, 0.60, 0.25], [0.25, 0.80, 0.45]])


@pytest.mark.parametrize("name", names("stain"))
@pytest.mark.parametrize("device", DEVICES)
def test_fit_then_transform_keeps_shape_device_and_range(name, device):
    torch.manual_seed(0)
    transform = PLUGINS["stain"].create(name, {})
    assert isinstance(transform, StainTransform)
    targets = np.stack([synthetic_he(32, seed=s) for s in (1, 2)])
    sources = np.stack([synthetic_he(32, seed=s, stains=SOURCE_STAINS, strength=(1.6, 0.9)) for s in (3, 4)])
    batch = as_float_images(sources).to(device)
    for fitted_on in (targets, torch.from_numpy(targets)):  # a numpy array or a tensor
        assert transform.fit(fitted_on) is transform
        out = transform(batch)
        assert out.shape == batch.shape and out.dtype == batch.dtype and out.device == batch.device
        assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
