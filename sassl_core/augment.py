"""Batched view generation on the device (the two augmented views of paper §3.1, Fig. 1).

Patches travel to the device as uint8; :class:`ViewGenerator` makes the views there, every
operation batched over the whole batch (no per-image Python loop), in this order: random
resized crop, HED stain jitter, brightness/contrast/saturation jitter, Gaussian blur, a 90-degree
rotation, horizontal and vertical flips, then ImageNet normalisation. Each operation is applied
to each image with its own probability.

All random numbers of one call come from a single uniform table ``(n, N_UNIFORMS)`` drawn from
the generator, whatever the options, so two generators seeded alike draw the same crops and
factors even when their probabilities differ (an op that is off simply ignores its columns).
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torchvision.ops import roi_align

from sassl_core.stain.color import grayscale, hed_jitter

Probability = Annotated[float, Field(ge=0.0, le=1.0)]


def _ordered(bounds: tuple[float, float]) -> tuple[float, float]:
    if bounds[0] > bounds[1]:
        raise ValueError(f"expected (low, high) with low <= high, found {bounds}")
    return bounds


def _positive(bounds: tuple[float, float]) -> tuple[float, float]:
    if bounds[0] <= 0:
        raise ValueError(f"expected values > 0, found {bounds}")
    return bounds


def _non_negative(bounds: tuple[float, float]) -> tuple[float, float]:
    if bounds[0] < 0:
        raise ValueError(f"expected values >= 0, found {bounds}")
    return bounds


#: A ``(low, high)`` range to sample uniformly from; ``Factors`` >= 0, ``PositiveRange`` > 0.
Range = Annotated[tuple[float, float], AfterValidator(_ordered)]
Factors = Annotated[Range, AfterValidator(_non_negative)]
PositiveRange = Annotated[Range, AfterValidator(_positive)]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ViewOptions(BaseModel):
    """Probabilities and ranges of the view operations (defaults suit H&E patches).

    Ranges are ``(low, high)`` and sampled uniformly (the crop's aspect ratio log-uniformly).
    ``hed_scale``/``hed_shift`` act on H, E and DAB concentrations in natural-log OD units
    (see :mod:`sassl_core.stain.color`); ``blur_sigma`` is in output pixels.
    """

    model_config = ConfigDict(extra="forbid")

    crop_p: Probability = 1.0
    crop_scale: PositiveRange = (0.2, 1.0)
    crop_ratio: PositiveRange = (3 / 4, 4 / 3)
    hflip_p: Probability = 0.5
    vflip_p: Probability = 0.5
    rot90_p: Probability = 0.75
    hed_p: Probability = 0.8
    hed_scale: Factors = (0.8, 1.2)
    hed_shift: Range = (-0.05, 0.05)
    color_p: Probability = 0.8
    brightness: Factors = (0.8, 1.2)
    contrast: Factors = (0.8, 1.2)
    saturation: Factors = (0.8, 1.2)
    blur_p: Probability = 0.2
    blur_sigma: PositiveRange = (0.1, 1.5)
    normalize: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @model_validator(mode="after")
    def _check_bounds(self) -> "ViewOptions":
        if self.crop_scale[1] > 1:
            raise ValueError(f"crop_scale: expected fractions of the patch area <= 1, found {self.crop_scale}")
        if min(self.std) <= 0:
            raise ValueError(f"std: expected values > 0, found {self.std}")
        return self


# Columns of the uniform table: how many each operation reads, in table order.
_WIDTHS = {"crop": 5, "hflip": 1, "vflip": 1, "rot90": 2, "hed": 7, "color": 4, "blur": 2}
_STARTS = dict(zip(_WIDTHS, itertools.accumulate(_WIDTHS.values(), initial=0)))
N_UNIFORMS = sum(_WIDTHS.values())


def _columns(u: torch.Tensor, name: str) -> torch.Tensor:
    return u[:, _STARTS[name] : _STARTS[name] + _WIDTHS[name]]


def _lerp(bounds: tuple[float, float], u: torch.Tensor) -> torch.Tensor:
    return bounds[0] + (bounds[1] - bounds[0]) * u


def draw_uniforms(n: int, width: int, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """``(n, width)`` uniforms from ``generator`` (drawn on its device), moved to ``device``."""
    if generator is None:
        return torch.rand(n, width, device=device)
    return torch.rand(n, width, generator=generator, device=generator.device).to(device, non_blocking=True)


def apply_hed_jitter(
    x: torch.Tensor, u: torch.Tensor, p: float, scale: tuple[float, float], shift: tuple[float, float]
) -> torch.Tensor:
    """HED stain jitter of each image with probability ``p`` (Tellez et al. 2018).

    ``u`` ``(B, 7)`` uniforms: apply, three scales, three shifts (H, E, DAB). Images not drawn
    are returned bit-exact.
    """
    if p == 0:
        return x
    apply = (u[:, 0] < p)[:, None, None, None]
    jittered = hed_jitter(x, _lerp(scale, u[:, 1:4]), _lerp(shift, u[:, 4:7]))
    return torch.where(apply, jittered, x)


class ViewGenerator(nn.Module):
    """Random views of uint8 patch batches, made on the patches' device.

    ``forward(batch, out_size)`` takes ``(B, H, W, 3)`` or ``(B, 3, H, W)`` uint8 (float in
    ``[0, 1]`` is accepted too) and returns float32 ``(B, 3, out_size, out_size)``, normalised
    with ``options.mean``/``std`` unless :attr:`normalize` is False. ``generator`` (argument or
    attribute) makes the draws reproducible; a CPU generator works for CUDA batches too.

    >>> views = ViewGenerator(ViewOptions(), generator=torch.Generator().manual_seed(0))
    >>> views(torch.zeros(2, 64, 64, 3, dtype=torch.uint8), 32).shape
    torch.Size([2, 3, 32, 32])
    """

    def __init__(self, options: ViewOptions | None = None, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.options = options or ViewOptions()
        self.generator = generator
        self.normalize = self.options.normalize
        self.register_buffer("mean", torch.tensor(self.options.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.options.std).view(1, 3, 1, 1), persistent=False)

    def forward(
        self, batch: torch.Tensor, out_size: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """One random view of every image of ``batch``."""
        images = self.to_float(batch)
        return self.views(images, out_size, copies=1, generator=generator)

    def two_views(
        self, batch: torch.Tensor, out_size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Two independently drawn views ``(x1, x2)`` of every image (made in one pass)."""
        images = self.to_float(batch)
        return tuple(self.views(images, out_size, copies=2, generator=generator).chunk(2))  # type: ignore[return-value]

    @staticmethod
    def to_float(batch: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, 3)`` or ``(B, 3, H, W)`` uint8 to contiguous float32 ``(B, 3, H, W)`` in ``[0, 1]``."""
        if batch.ndim != 4 or 3 not in (batch.shape[1], batch.shape[-1]):
            raise ValueError(f"expected a batch (B, H, W, 3) or (B, 3, H, W), found shape {tuple(batch.shape)}")
        if batch.shape[1] != 3:
            batch = batch.permute(0, 3, 1, 2)
        if batch.dtype == torch.uint8:
            return batch.float().div_(255.0).contiguous()
        if not batch.is_floating_point():
            raise TypeError(f"expected uint8 or float images, found {batch.dtype}")
        return batch.float().contiguous()

    def views(
        self, images: torch.Tensor, out_size: int, copies: int = 1, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``copies`` independent views of float ``images`` ``(B, 3, H, W)``, stacked copy-major."""
        opt = self.options
        n = images.shape[0] * copies
        u = draw_uniforms(n, N_UNIFORMS, images.device, generator or self.generator)
        x = self._crop(images, out_size, copies, _columns(u, "crop"))
        x = apply_hed_jitter(x, _columns(u, "hed"), opt.hed_p, opt.hed_scale, opt.hed_shift)
        x = self._color(x, _columns(u, "color"))
        x = self._blur(x, _columns(u, "blur"))
        x = self._flip_rotate(x, u)
        if self.normalize:
            x = (x - self.mean.to(x)) / self.std.to(x)
        return x

    def _crop(self, images: torch.Tensor, out_size: int, copies: int, u: torch.Tensor) -> torch.Tensor:
        """Random resized crop of each image by ``roi_align`` (anti-aliased when shrinking).

        Area fraction and log aspect ratio are drawn as torchvision's ``RandomResizedCrop``;
        instead of its rejection loop, a box larger than the patch is clamped to the patch
        side. Images without a crop are resized whole.
        """
        opt = self.options
        height, width = images.shape[-2:]
        area = _lerp(opt.crop_scale, u[:, 1]) * (height * width)
        ratio = torch.exp(_lerp((math.log(opt.crop_ratio[0]), math.log(opt.crop_ratio[1])), u[:, 2]))
        apply = u[:, 0] < opt.crop_p
        box_w = torch.where(apply, (area * ratio).sqrt().clamp(max=width), torch.full_like(area, width))
        box_h = torch.where(apply, (area / ratio).sqrt().clamp(max=height), torch.full_like(area, height))
        x0 = u[:, 3] * (width - box_w)
        y0 = u[:, 4] * (height - box_h)
        index = torch.arange(images.shape[0], device=images.device, dtype=images.dtype).repeat(copies)
        boxes = torch.stack((index, x0, y0, x0 + box_w, y0 + box_h), dim=1)
        return roi_align(images, boxes, (out_size, out_size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)

    def _color(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast, saturation jitter (torchvision's definitions, in that order)."""
        opt = self.options
        if opt.color_p == 0:
            return x
        apply = u[:, 0] < opt.color_p
        one = torch.ones_like(u[:, 0])

        def factor(bounds: tuple[float, float], column: torch.Tensor) -> torch.Tensor:
            return torch.where(apply, _lerp(bounds, column), one)[:, None, None, None]

        brightness, contrast, saturation = (
            factor(opt.brightness, u[:, 1]),
            factor(opt.contrast, u[:, 2]),
            factor(opt.saturation, u[:, 3]),
        )
        x = (x * brightness).clamp(0.0, 1.0)
        mean_luma = grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
        x = (contrast * x + (1 - contrast) * mean_luma).clamp(0.0, 1.0)
        return (saturation * x + (1 - saturation) * grayscale(x)).clamp(0.0, 1.0)

    def _blur(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian blur with a per-image sigma (a unit impulse where not drawn)."""
        opt = self.options
        if opt.blur_p == 0:
            return x
        batch, channels, height, width = x.shape
        radius = min(math.ceil(3 * opt.blur_sigma[1]), min(height, width) - 1)
        offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        sigma = _lerp(opt.blur_sigma, u[:, 1])[:, None]
        kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
        kernel = kernel / kernel.sum(dim=1, keepdim=True)
        impulse = (offsets == 0).to(x.dtype).expand_as(kernel)
        kernel = torch.where((u[:, 0] < opt.blur_p)[:, None], kernel, impulse)
        weight = kernel.repeat_interleave(channels, dim=0)  # (B*C, K)
        planes = x.reshape(1, batch * channels, height, width)
        planes = F.conv2d(F.pad(planes, (radius, radius, 0, 0), mode="reflect"), weight[:, None, None, :], groups=batch * channels)
        planes = F.conv2d(F.pad(planes, (0, 0, radius, radius), mode="reflect"), weight[:, None, :, None], groups=batch * channels)
        return planes.reshape(batch, channels, height, width)

    def _flip_rotate(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Rotation by k*90 degrees (k = 1..3), then horizontal flip, then vertical flip, per image.

        The composite of the three is one of 16 pixel permutations; all images are permuted in
        a single ``gather`` (exact: values are moved, never mixed).
        """
        opt = self.options
        hflip = _columns(u, "hflip")[:, 0] < opt.hflip_p
        vflip = _columns(u, "vflip")[:, 0] < opt.vflip_p
        rot = _columns(u, "rot90")
        quarter_turns = torch.where(rot[:, 0] < opt.rot90_p, 1 + (rot[:, 1] * 3).long().clamp(max=2), 0)
        choice = hflip.long() + 2 * vflip.long() + 4 * quarter_turns
        batch, channels, height, width = x.shape
        index = _dihedral_permutations(height, x.device)[choice]  # (B, H*W)
        flat = x.reshape(batch, channels, height * width)
        return flat.gather(2, index[:, None, :].expand(-1, channels, -1)).reshape(x.shape)


@functools.lru_cache(maxsize=8)
def _dihedral_permutations(size: int, device: torch.device) -> torch.Tensor:
    """``(16, size*size)`` source index of every output pixel, for index ``h + 2v + 4k``."""
    base = torch.arange(size * size, device=device).view(size, size)
    tables = []
    for k in range(4):
        for v in (False, True):
            for h in (False, True):
                table = base.rot90(k, dims=(-2, -1))
                table = table.flip(-1) if h else table
                tables.append((table.flip(-2) if v else table).reshape(-1))
    return torch.stack(tables)
