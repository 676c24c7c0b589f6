"""Batched view generation on the device (the two augmented views of paper §3.1, Fig. 1).

Patches travel to the device as uint8; :class:`ViewGenerator` makes the views there, every
operation batched over many images (no per-image Python loop), in this order: random resized
crop, HED stain jitter, brightness/contrast/saturation jitter, Gaussian blur, a 90-degree
rotation, horizontal and vertical flips, then ImageNet normalisation. Each operation is applied
to each image with its own probability, and computed only for the images drawn for it.

All random numbers of one call come from a single uniform table ``(n, N_UNIFORMS)`` drawn from
the generator, whatever the options, so two generators seeded alike draw the same crops and
factors even when their probabilities differ (an op that is off simply ignores its columns).
The table is read on the host, so choosing the images of each operation never waits for the
device.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, model_validator
from torch import nn

from sassl_core.color import HED_SCALE, HED_SHIFT, LUMA_WEIGHTS, apply_hed_jitter, grayscale
from sassl_core.config import Factors, PositiveRange, Probability, Range


class ViewOptions(BaseModel):
    """Probabilities and ranges of the view operations (defaults suit H&E patches).

    Ranges are ``(low, high)`` and sampled uniformly (the crop's aspect ratio log-uniformly).
    ``hed_scale``/``hed_shift`` act on H, E and DAB concentrations in natural-log OD units
    (see :mod:`sassl_core.color`); ``blur_sigma`` is in output pixels.
    """

    model_config = ConfigDict(extra="forbid")

    crop_p: Probability = 1.0
    crop_scale: PositiveRange = (0.2, 1.0)
    crop_ratio: PositiveRange = (3 / 4, 4 / 3)
    hflip_p: Probability = 0.5
    vflip_p: Probability = 0.5
    rot90_p: Probability = 0.75
    hed_p: Probability = 0.8
    hed_scale: Factors = HED_SCALE
    hed_shift: Range = HED_SHIFT
    color_p: Probability = 0.8
    brightness: Factors = (0.8, 1.2)
    contrast: Factors = (0.8, 1.2)
    saturation: Factors = (0.8, 1.2)
    blur_p: Probability = 0.2
    blur_sigma: PositiveRange = (0.1, 1.5)

    @model_validator(mode="after")
    def _check_bounds(self) -> ViewOptions:
        if self.crop_scale[1] > 1:
            raise ValueError(f"crop_scale: expected fractions of the patch area <= 1, found {self.crop_scale}")
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


class ViewGenerator(nn.Module):
    """Random views of uint8 patch batches, made on the patches' device.

    ``forward(batch, out_size)`` takes ``(B, H, W, 3)`` or ``(B, 3, H, W)`` uint8 (float in
    ``[0, 1]`` is accepted too) and returns float32 ``(B, 3, out_size, out_size)`` in ``[0, 1]``,
    or, with ``scale`` (the run's :meth:`sassl_core.train.inputs.ModelInput.scale`), scaled in
    place as every encoder input is. ``generator`` (argument or
    attribute) makes the draws reproducible; a CPU generator works for CUDA batches too.

    On the CPU the views are made :attr:`cpu_chunk` at a time (working buffers that stay in
    cache and are reused); elsewhere the whole batch at once. Views do not depend on the chunk.

    >>> views = ViewGenerator(ViewOptions(), generator=torch.Generator().manual_seed(0))
    >>> views(torch.zeros(2, 64, 64, 3, dtype=torch.uint8), 32).shape
    torch.Size([2, 3, 32, 32])
    """

    #: Views made at once on the CPU.
    cpu_chunk = 32

    def __init__(
        self,
        options: ViewOptions | None = None,
        generator: torch.Generator | None = None,
        scale: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.options = options or ViewOptions()
        self.generator = generator
        self.scale = scale

    def forward(self, batch: torch.Tensor, out_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """One random view of every image of ``batch``."""
        images = self.to_float(batch)
        return self.views(images, out_size, copies=1, generator=generator)

    def two_views(
        self, batch: torch.Tensor, out_size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Two independently drawn views ``(x1, x2)`` of every image (made in one pass)."""
        images = self.to_float(batch)
        x1, x2 = self.views(images, out_size, copies=2, generator=generator).chunk(2)
        return x1, x2

    @staticmethod
    def to_float(batch: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, 3)`` or ``(B, 3, H, W)`` uint8 to contiguous float32 ``(B, 3, H, W)`` in ``[0, 1]``."""
        if batch.ndim != 4 or 3 not in (batch.shape[1], batch.shape[-1]):
            raise ValueError(f"expected a batch (B, H, W, 3) or (B, 3, H, W), found shape {tuple(batch.shape)}")
        if batch.shape[1] != 3:
            batch = batch.permute(0, 3, 1, 2)
        if batch.dtype == torch.uint8:
            # One pass: permute and convert into a contiguous buffer, then scale in place.
            return torch.empty(batch.shape, device=batch.device).copy_(batch).div_(255.0)
        if not batch.is_floating_point():
            raise TypeError(f"expected uint8 or float images, found {batch.dtype}")
        return batch.float().contiguous()

    def views(
        self, images: torch.Tensor, out_size: int, copies: int = 1, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``copies`` independent views of float ``images`` ``(B, 3, H, W)``, stacked copy-major."""
        n = images.shape[0] * copies
        images = images.contiguous()
        u_host = draw_uniforms(n, N_UNIFORMS, torch.device("cpu"), generator or self.generator)
        u = u_host.to(images.device, non_blocking=True)
        step = self.cpu_chunk if images.device.type == "cpu" else n
        plan = [t.to(images.device, non_blocking=True) for t in self._crop_plan(u_host, images.shape, out_size, step)]
        out = images.new_empty(n, 3, out_size, out_size)
        for start in range(0, n, step):
            views = slice(start, min(start + step, n))
            bins = slice(views.start * 3 * out_size, views.stop * 3 * out_size)
            x = self._crop(images, [t[bins] for t in plan], out_size)
            self._finish(x, u_host[views], u[views], out[views])
        return out

    def _finish(self, x: torch.Tensor, u_host: torch.Tensor, u: torch.Tensor, out: torch.Tensor) -> None:
        """Colour ops and blur on the cropped ``x``, then flips/rotation and normalisation into ``out``."""
        opt = self.options
        hed = _columns(u_host, "hed")[:, 0] < opt.hed_p
        x = _update_drawn(
            x, hed, u, lambda s, v: apply_hed_jitter(s, _columns(v, "hed"), 1.0, opt.hed_scale, opt.hed_shift)
        )
        x = _update_drawn(x, _columns(u_host, "color")[:, 0] < opt.color_p, u, self._color)
        x = _update_drawn(x, _columns(u_host, "blur")[:, 0] < opt.blur_p, u, self._blur)
        self._flip_rotate(x, u, out)
        if self.scale is not None:
            self.scale(out)

    def _crop_plan(
        self, u: torch.Tensor, shape: torch.Size, out_size: int, step: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Taps of every view's random resized crop, from the host table ``u`` (see :meth:`_crop`).

        Area fraction and log aspect ratio are drawn as torchvision's ``RandomResizedCrop``;
        instead of its rejection loop, a box larger than the patch is clamped to the patch
        side. Images without a crop are resized whole. Returns the row taps (index into the
        images' rows, weights) and the column taps (index into a chunk of ``step`` views'
        transposed rows, weights), each ``(n*C*S, K)``.
        """
        opt = self.options
        u = _columns(u, "crop")
        batch, channels, height, width = shape
        area = _lerp(opt.crop_scale, u[:, 1]) * (height * width)
        ratio = torch.exp(_lerp((math.log(opt.crop_ratio[0]), math.log(opt.crop_ratio[1])), u[:, 2]))
        apply = u[:, 0] < opt.crop_p
        box_w = torch.where(apply, (area * ratio).sqrt().clamp(max=width), torch.full_like(area, width))
        box_h = torch.where(apply, (area / ratio).sqrt().clamp(max=height), torch.full_like(area, height))
        x0 = u[:, 3] * (width - box_w)
        y0 = u[:, 4] * (height - box_h)
        views = torch.arange(u.shape[0])[:, None]
        source_planes = (views % batch) * channels + torch.arange(channels)  # (n, C): view k shows image k % batch
        chunk_planes = (views % step) * channels + torch.arange(channels)
        return (
            *_tap_table(source_planes * height, *_roi_taps(y0, y0 + box_h, height, out_size), height),
            *_tap_table(chunk_planes * width, *_roi_taps(x0, x0 + box_w, width, out_size), width),
        )

    def _crop(self, images: torch.Tensor, plan: list[torch.Tensor], out_size: int) -> torch.Tensor:
        """Random resized crop of a chunk of views by its ``plan`` rows (:meth:`_crop_plan`).

        As ``roi_align(aligned=True, sampling_ratio=-1)`` computes it: each output pixel is the
        mean of bilinear samples on a regular grid over its bin (anti-aliased when shrinking).
        That sampling is separable, so it runs as two weighted sums of a few rows (vertical,
        then horizontal on the transposed result). The views come back transposed,
        ``(n, 3, x, y)``; :meth:`_flip_rotate` undoes it.
        """
        row_index, row_weights, column_index, column_weights = plan
        width = images.shape[-1]
        rows = F.embedding_bag(row_index, images.reshape(-1, width), per_sample_weights=row_weights, mode="sum")
        columns = rows.view(-1, out_size, width).transpose(1, 2).contiguous()  # (n*C, W, S)
        transposed = F.embedding_bag(
            column_index, columns.view(-1, out_size), per_sample_weights=column_weights, mode="sum"
        )
        return transposed.view(-1, 3, out_size, out_size)

    def _color(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast, saturation jitter of every image of ``x`` (torchvision's
        definitions, in that order), in place."""
        opt = self.options
        u = _columns(u, "color")
        brightness, contrast, saturation = (
            _lerp(bounds, u[:, i]).view(-1, 1, 1, 1)
            for i, bounds in enumerate((opt.brightness, opt.contrast, opt.saturation), start=1)
        )
        x.mul_(brightness).clamp_(0.0, 1.0)
        luma = torch.tensor(LUMA_WEIGHTS, device=x.device, dtype=x.dtype)
        mean_luma = (x.mean(dim=(-2, -1)) @ luma).view(-1, 1, 1, 1)  # mean of the luma, channel by channel
        x.mul_(contrast).add_((1 - contrast) * mean_luma).clamp_(0.0, 1.0)
        grey = grayscale(x).mul_(1 - saturation)
        return x.mul_(saturation).add_(grey).clamp_(0.0, 1.0)

    def _blur(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian blur of every image of ``x`` with its own sigma (reflected borders)."""
        opt = self.options
        batch, channels, height, width = x.shape
        radius = min(math.ceil(3 * opt.blur_sigma[1]), min(height, width) - 1)
        offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        sigma = _lerp(opt.blur_sigma, _columns(u, "blur")[:, 1])[:, None]
        kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
        weight = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)  # (B*C, K)
        planes = x.reshape(1, batch * channels, height, width)
        planes = F.conv2d(
            F.pad(planes, (radius, radius, 0, 0), mode="reflect"), weight[:, None, None, :], groups=batch * channels
        )
        planes = F.conv2d(
            F.pad(planes, (0, 0, radius, radius), mode="reflect"), weight[:, None, :, None], groups=batch * channels
        )
        return planes.reshape(batch, channels, height, width)

    def _flip_rotate(self, x: torch.Tensor, u: torch.Tensor, out: torch.Tensor) -> None:
        """Rotation by k*90 degrees (k = 1..3), then horizontal flip, then vertical flip, per image,
        of the transposed ``x`` (see :meth:`_crop`), written to ``out``.

        The composite of the transposition and the three is one of 16 pixel permutations; all
        images are permuted in a single ``gather`` (exact: values are moved, never mixed).
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
        torch.gather(flat, 2, index[:, None, :].expand(-1, channels, -1), out=out.view(batch, channels, height * width))


def _update_drawn(x: torch.Tensor, drawn: torch.Tensor, u: torch.Tensor, op) -> torch.Tensor:
    """``x`` (updated in place) with ``op(images, their u rows)`` applied to the images ``drawn``.

    ``drawn`` is a host bool ``(B,)``, so picking the images never waits for the device; the
    other images are untouched (bit-exact).
    """
    index = drawn.nonzero()[:, 0]
    if index.numel() == 0:
        return x
    if index.numel() == drawn.numel():
        return op(x, u)
    index = index.to(x.device, non_blocking=True)
    x[index] = op(x[index], u[index])  # advanced indexing: much faster than index_select on multi-threaded CPUs
    return x


def _roi_taps(start: torch.Tensor, end: torch.Tensor, size: int, out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (or columns) read by ``roi_align(aligned=True, sampling_ratio=-1)`` along one axis.

    For boxes ``[start, end)`` ``(n,)`` on an axis of ``size`` pixels cut into ``out`` bins, each
    bin averages ``ceil(bin length)`` bilinear samples (with the same arithmetic as
    torchvision's kernel). Returns the first pixel ``(n, out)`` of each bin's taps and the tap
    weights ``(n, out, K)`` of pixels ``first .. first + K - 1`` (zero beyond the last one read).
    """
    roi_start = start - 0.5
    bin_size = ((end - 0.5) - roi_start) / out
    grid = torch.ceil(bin_size).clamp(min=1)
    samples = torch.arange(int(grid.max()), dtype=start.dtype)
    pos = (
        roi_start[:, None, None]
        + torch.arange(out, dtype=start.dtype)[None, :, None] * bin_size[:, None, None]
        + (samples + 0.5) * (bin_size / grid)[:, None, None]
    ).clamp(min=0.0)  # (n, out, samples)
    low = pos.floor().clamp(max=size - 1)
    frac = torch.where(low >= size - 1, torch.zeros_like(pos), pos - low)
    low = low.long()
    high = (low + 1).clamp(max=size - 1)
    weight = (samples < grid[:, None, None]).to(pos.dtype) / grid[:, None, None]
    first = low[..., 0]  # samples are increasing: the first one's low pixel is the lowest read
    taps = int((high - first[..., None]).max()) + 1
    weights = torch.zeros(*first.shape, taps, dtype=pos.dtype)
    weights.scatter_add_(2, low - first[..., None], weight * (1 - frac))
    weights.scatter_add_(2, high - first[..., None], weight * frac)
    return first, weights


def _tap_table(
    base: torch.Tensor, first: torch.Tensor, weights: torch.Tensor, plane_rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row index and weight of every tap of every (view, plane, bin): two ``(n*C*S, K)`` tables.

    ``base`` ``(n, C)`` is the first row of each output plane's source plane of ``plane_rows``
    rows; ``first`` ``(n, S)`` and ``weights`` ``(n, S, K)`` are the taps of :func:`_roi_taps`,
    shared by a view's planes. Output row ``(v, c, i)`` is then
    ``sum_t weights[v, i, t] * rows[base[v, c] + first[v, i] + t]`` (``F.embedding_bag``); taps
    past the plane's end carry zero weight and read its last row.
    """
    channels, taps = base.shape[1], weights.shape[-1]
    offsets = (first[..., None] + torch.arange(taps)).clamp(max=plane_rows - 1)  # (n, S, K)
    index = (base[:, :, None, None] + offsets[:, None]).reshape(-1, taps)
    return index, weights[:, None].expand(-1, channels, -1, -1).reshape(-1, taps)


@functools.lru_cache(maxsize=8)
def _dihedral_permutations(size: int, device: torch.device) -> torch.Tensor:
    """``(16, size*size)`` source index, in a transposed image, of every output pixel.

    Row ``h + 2v + 4k``: ``k`` quarter turns, then a horizontal flip if ``h``, then a vertical
    one if ``v``, of the image whose pixel ``(y, x)`` is stored at ``x * size + y``.
    """
    base = torch.arange(size * size, device=device).view(size, size).T
    tables = []
    for k in range(4):
        for v in (False, True):
            for h in (False, True):
                table = base.rot90(k, dims=(-2, -1))
                table = table.flip(-1) if h else table
                tables.append((table.flip(-2) if v else table).reshape(-1))
    return torch.stack(tables)
