"""Batched view generation: shapes, determinism, exact identities, and each operation's effect."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from sassl_core.color import hed_jitter
from sassl_core.config import InputConfig
from sassl_core.train.inputs import ModelInput
from sassl_core.train.views import N_UNIFORMS, ViewGenerator, ViewOptions, _columns, draw_uniforms

ALL_OFF = dict(crop_p=0, hflip_p=0, vflip_p=0, rot90_p=0, hed_p=0, color_p=0, blur_p=0)
IMAGENET = ModelInput(InputConfig())
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def patches(batch=4, size=32, seed=0, channels_last=True) -> torch.Tensor:
    x = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return x if channels_last else x.permute(0, 3, 1, 2).contiguous()


def make(seed: int | None = None, scaled: bool = False, **options) -> ViewGenerator:
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return ViewGenerator(ViewOptions(**options), generator=generator, scale=IMAGENET.scale if scaled else None)


def as_unit(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2).float() / 255


@pytest.mark.parametrize("channels_last", [True, False])
def test_shape_dtype_range_and_normalisation(channels_last):
    x = patches(channels_last=channels_last)
    out = make(seed=0, scaled=True)(x, 24)
    assert out.shape == (4, 3, 24, 24) and out.dtype == torch.float32
    raw = make(seed=0)(x, 24)
    assert raw.min() >= 0 and raw.max() <= 1 and raw.std() > 0.1
    mean, std = IMAGENET.mean[0], IMAGENET.std[0]
    assert torch.allclose(out, (raw - mean) / std, atol=1e-6)


def test_channel_layouts_give_the_same_views():
    x = patches()
    assert torch.equal(make(seed=2)(x, 24), make(seed=2)(x.permute(0, 3, 1, 2), 24))


def test_same_seed_same_views_other_seed_other_views():
    x = patches()
    a, b, c = make(seed=7)(x, 32), make(seed=7)(x, 32), make(seed=8)(x, 32)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_generator_argument_overrides_attribute():
    x = patches()
    views = make(seed=1)
    out = views(x, 32, generator=torch.Generator().manual_seed(7))
    assert torch.equal(out, make(seed=7)(x, 32))


def test_two_views_are_independent_draws():
    x = patches(batch=6)
    x1, x2 = make(seed=3).two_views(x, 24)
    assert x1.shape == x2.shape == (6, 3, 24, 24)
    assert all(not torch.allclose(x1[i], x2[i]) for i in range(6))


def test_identity_when_every_probability_is_zero():
    x = patches()
    out = make(**ALL_OFF)(x, 32)
    assert torch.equal(out, as_unit(x))
    normalised = make(scaled=True, **ALL_OFF)(x, 32)
    mean, std = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1), torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)
    assert torch.allclose(normalised, (as_unit(x) - mean) / std, atol=1e-6)


@pytest.mark.parametrize("option, flip", [("hflip_p", lambda t: t.flip(-1)), ("vflip_p", lambda t: t.flip(-2))])
def test_flips_are_exact_permutations_even_with_every_other_op_on(option, flip):
    """Same seed, everything else at its defaults: the flip is the only difference, bit for bit."""
    x = patches(batch=8)
    with_flip = make(seed=5, **{option: 1.0})(x, 24)
    without = make(seed=5, **{option: 0.0})(x, 24)
    assert torch.equal(with_flip, flip(without))


def test_rot90_is_an_exact_non_trivial_quarter_turn():
    x = patches(batch=24)
    base = make(**ALL_OFF)(x, 32)
    rotated = make(seed=2, **{**ALL_OFF, "rot90_p": 1.0})(x, 32)
    turns = []
    for i in range(24):
        matches = [k for k in range(4) if torch.equal(rotated[i], base[i].rot90(k, dims=(-2, -1)))]
        assert len(matches) == 1
        turns.append(matches[0])
    assert set(turns) == {1, 2, 3}


def test_crop_covers_the_drawn_area():
    """A quarter-area square crop of a horizontal ramp spans half of the ramp's range."""
    size = 64
    ramp = torch.linspace(0, 255, size).round().to(torch.uint8).view(1, 1, size, 1).expand(4, size, size, 3)
    out = make(seed=0, **{**ALL_OFF, "crop_p": 1.0, "crop_scale": (0.25, 0.25), "crop_ratio": (1, 1)})(ramp, 32)
    span = out[:, 0].amax(dim=(-2, -1)) - out[:, 0].amin(dim=(-2, -1))
    assert torch.allclose(span, torch.full_like(span, 0.5), atol=0.04)
    left = out[:, 0, 0, 0]
    assert left.unique().numel() > 1  # each image has its own position


def test_whole_patch_resize_when_no_crop():
    x = torch.full((2, 64, 64, 3), 100, dtype=torch.uint8)
    x[:, :32] = 200  # top half brighter
    out = make(**ALL_OFF)(x, 16)
    assert torch.allclose(out[:, :, :7], torch.full_like(out[:, :, :7], 200 / 255))
    assert torch.allclose(out[:, :, 9:], torch.full_like(out[:, :, 9:], 100 / 255))


def test_hed_jitter_uses_the_shared_jitter_with_the_drawn_factors():
    x = patches(batch=5)
    options = {**ALL_OFF, "hed_p": 1.0, "hed_scale": (0.6, 1.4), "hed_shift": (-0.1, 0.1)}
    out = make(seed=4, **options)(x, 32)
    u = _columns(draw_uniforms(5, N_UNIFORMS, torch.device("cpu"), torch.Generator().manual_seed(4)), "hed")
    expected = hed_jitter(as_unit(x), 0.6 + 0.8 * u[:, 1:4], -0.1 + 0.2 * u[:, 4:7])
    assert torch.allclose(out, expected, atol=1e-6)
    assert (out - as_unit(x)).abs().mean() > 0.01


def test_brightness_contrast_saturation_definitions():
    x = patches(batch=2)
    unit = as_unit(x)
    half = make(
        seed=0, **{**ALL_OFF, "color_p": 1.0, "brightness": (0.5, 0.5), "contrast": (1, 1), "saturation": (1, 1)}
    )
    assert torch.allclose(half(x, 32), unit * 0.5, atol=1e-6)
    grey = make(seed=0, **{**ALL_OFF, "color_p": 1.0, "brightness": (1, 1), "contrast": (1, 1), "saturation": (0, 0)})
    out = grey(x, 32)
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])
    flat = make(seed=0, **{**ALL_OFF, "color_p": 1.0, "brightness": (1, 1), "contrast": (0, 0), "saturation": (1, 1)})
    out = flat(x, 32)
    assert out.flatten(1).std(dim=1).max() < 1e-6  # zero contrast: every pixel at the mean luma


def test_blur_smooths_noise_and_keeps_constants():
    noise = patches(batch=3, size=48)
    blurred = make(seed=0, **{**ALL_OFF, "blur_p": 1.0, "blur_sigma": (1.0, 1.5)})(noise, 48)
    assert blurred.std() < 0.6 * as_unit(noise).std()
    assert torch.allclose(blurred.mean(dim=(-2, -1)), as_unit(noise).mean(dim=(-2, -1)), atol=0.01)
    constant = torch.full((2, 32, 32, 3), 77, dtype=torch.uint8)
    out = make(seed=0, **{**ALL_OFF, "blur_p": 1.0})(constant, 32)
    assert torch.allclose(out, torch.full_like(out, 77 / 255), atol=1e-6)


def test_each_op_applies_per_image_with_its_probability():
    x = patches(batch=64, size=16)
    out = make(seed=9, **{**ALL_OFF, "blur_p": 0.5})(x, 16)
    changed = (out - as_unit(x)).flatten(1).abs().amax(dim=1) > 0
    assert 16 < int(changed.sum()) < 48
    assert torch.equal(out[~changed], as_unit(x)[~changed])


def test_float_input_and_bad_shapes():
    x = patches()
    views = make(**ALL_OFF)
    assert torch.equal(views(as_unit(x), 32), as_unit(x))
    with pytest.raises(ValueError, match="expected a batch"):
        views(torch.zeros(2, 32, 32, dtype=torch.uint8), 16)
    with pytest.raises(TypeError, match="uint8 or float"):
        views(torch.zeros(2, 32, 32, 3, dtype=torch.int32), 16)


def test_options_are_validated():
    with pytest.raises(ValidationError, match="low <= high"):
        ViewOptions(crop_scale=(0.9, 0.2))
    with pytest.raises(ValidationError, match="Extra inputs"):
        ViewOptions(hue=0.1)
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        ViewOptions(hflip_p=1.5)
    with pytest.raises(ValidationError, match="area <= 1"):
        ViewOptions(crop_scale=(0.5, 1.5))


@pytest.mark.parametrize("device", DEVICES)
def test_cpu_generator_gives_the_same_views_on_any_device(device):
    x = patches(batch=4)
    views = make(seed=11).to(device)
    out = views(x.to(device), 24)
    assert out.device.type == device
    assert torch.allclose(out.cpu(), make(seed=11)(x, 24), atol=1e-4)


@pytest.mark.parametrize("size, out_size, scale", [(64, 24, (1.0, 1.0)), (48, 40, (0.5, 0.9)), (40, 56, (0.2, 0.6))])
def test_crop_equals_roi_align_with_the_drawn_boxes(size, out_size, scale):
    """The separable crop is torchvision's roi_align (aligned, adaptive sampling: anti-aliased)."""
    from torchvision.ops import roi_align

    x = patches(batch=6, size=size)
    options = {**ALL_OFF, "crop_p": 0.7, "crop_scale": scale}
    out = make(seed=3, **options)(x, out_size)
    u = _columns(draw_uniforms(6, N_UNIFORMS, torch.device("cpu"), torch.Generator().manual_seed(3)), "crop")
    area = (scale[0] + (scale[1] - scale[0]) * u[:, 1]) * size * size
    ratio = torch.exp(torch.log(torch.tensor(3 / 4)) + torch.log(torch.tensor(16 / 9)) * u[:, 2])
    crop = u[:, 0] < 0.7
    box_w = torch.where(crop, (area * ratio).sqrt().clamp(max=size), torch.tensor(float(size)))
    box_h = torch.where(crop, (area / ratio).sqrt().clamp(max=size), torch.tensor(float(size)))
    x0, y0 = u[:, 3] * (size - box_w), u[:, 4] * (size - box_h)
    boxes = torch.stack((torch.arange(6.0), x0, y0, x0 + box_w, y0 + box_h), dim=1)
    expected = roi_align(as_unit(x), boxes, (out_size, out_size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    assert 0 < int(crop.sum()) < 6
    assert torch.allclose(out, expected, atol=1e-5)


def test_colour_jitter_equals_torchvision_adjustments_with_the_drawn_factors():
    import torchvision.transforms.functional as TF

    x = patches(batch=6)
    options = {**ALL_OFF, "color_p": 0.6, "brightness": (0.5, 1.5), "contrast": (0.5, 1.5), "saturation": (0.2, 1.8)}
    out = make(seed=6, **options)(x, 32)
    u = _columns(draw_uniforms(6, N_UNIFORMS, torch.device("cpu"), torch.Generator().manual_seed(6)), "color")
    for i, image in enumerate(as_unit(x)):
        expected = image
        if u[i, 0] < 0.6:
            expected = TF.adjust_brightness(expected, float(0.5 + u[i, 1]))
            expected = TF.adjust_contrast(expected, float(0.5 + u[i, 2]))
            expected = TF.adjust_saturation(expected, float(0.2 + 1.6 * u[i, 3]))
            assert not torch.allclose(expected, image, atol=1e-3)
        assert torch.allclose(out[i], expected, atol=1e-3)  # torchvision's luma weighs red 0.2989, not 0.299


def test_views_do_not_depend_on_the_cpu_chunk():
    x = patches(batch=5)
    reference = make(seed=12).two_views(x, 24)
    for chunk in (1, 3, 1000):
        views = make(seed=12)
        views.cpu_chunk = chunk
        assert all(torch.equal(a, b) for a, b in zip(views.two_views(x, 24), reference))
