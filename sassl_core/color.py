"""Colour maths for H&E images on torch tensors (batched, any device).

Conventions: RGB images are float tensors in ``[0, 1]`` with the channel axis third from the
end (``(..., 3, H, W)``). Optical density follows Beer-Lambert with the white level ``I0 = 1``:
``OD = -ln(max(I, eps))``, so ``I = exp(-OD)``.

Stain separation uses the H&E-DAB matrix of Ruifrok & Johnston (2001, "Quantification of
histochemical staining by color deconvolution"), whose rows are the OD vectors of haematoxylin,
eosin and DAB; ``OD = HED @ RGB_FROM_HED`` per pixel, so the concentrations are
``HED = OD @ inv(RGB_FROM_HED)``. The rows are the published values (the same numbers as
``skimage.color.rgb_from_hed``); skimage additionally divides OD by ``-ln(1e-6)``, which here is
not done, so ``rgb_to_hed(x) = 13.8155 * skimage.color.rgb2hed(x)`` where the latter is positive.

Also here: CIELAB conversion (sRGB, D65 — the same maths as ``skimage.color.rgb2lab``) for
Reinhard normalisation, per-channel statistics, masked percentiles, tissue masks and
least-squares stain concentrations. This module is public: the shipped stain plugins build their
normalisers from it (``sassl_plugins.stain``).
"""

from __future__ import annotations

import numpy as np
import torch

#: Default floor of the intensity before taking the logarithm (as skimage's ``rgb2hed``).
OD_EPS = 1e-6

#: Rows: OD vectors of haematoxylin, eosin, DAB (Ruifrok & Johnston 2001).
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64)
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)

# sRGB (D65) -> CIE XYZ and the D65 reference white, as in skimage.color.
_XYZ_FROM_RGB = torch.tensor(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]],
    dtype=torch.float64,
)
_RGB_FROM_XYZ = torch.linalg.inv(_XYZ_FROM_RGB)
_D65_WHITE = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)

#: Weights of the luma used for greyscale (ITU-R 601, as torchvision's ``rgb_to_grayscale``).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def _mix(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Per-pixel ``out_d = sum_c x_c * matrix[c, d]`` over the channel axis ``-3``."""
    return torch.einsum("...chw,cd->...dhw", x, matrix.to(device=x.device, dtype=x.dtype))


# --------------------------------------------------------------------------- optical density


def rgb_to_od(rgb: torch.Tensor, eps: float = OD_EPS) -> torch.Tensor:
    """Beer-Lambert optical density ``-ln(max(I, eps))`` of intensities in ``[0, 1]``.

    >>> float(rgb_to_od(torch.tensor([1.0])))
    -0.0
    """
    return -torch.log(rgb.clamp(min=eps))


def od_to_rgb(od: torch.Tensor) -> torch.Tensor:
    """Intensity ``exp(-OD)`` clipped to ``[0, 1]`` (negative OD would be brighter than white)."""
    return torch.exp(-od).clamp(0.0, 1.0)


def rgb_to_hed(rgb: torch.Tensor, eps: float = OD_EPS) -> torch.Tensor:
    """Colour deconvolution: RGB ``(..., 3, H, W)`` to H, E, DAB concentrations (OD units).

    Negative concentrations are kept, so that :func:`hed_to_rgb` inverts this exactly.
    """
    return _mix(rgb_to_od(rgb, eps), HED_FROM_RGB)


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hed`: concentrations ``(..., 3, H, W)`` to RGB in ``[0, 1]``."""
    return od_to_rgb(_mix(hed, RGB_FROM_HED))


def hed_jitter(rgb: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """HED stain augmentation (Tellez et al. 2018): ``hed' = hed * scale + shift`` per image.

    ``rgb`` is ``(B, 3, H, W)``; ``scale`` and ``shift`` are ``(B, 3)`` (H, E, DAB). Deconvolution,
    jitter and reconstruction are linear in OD, so they are folded into one per-image affine map
    ``OD' = OD @ (inv(M) diag(scale) M) + shift @ M`` with ``M = RGB_FROM_HED`` (one batched
    matrix product). With scale 1 and shift 0 the input comes back up to float rounding.
    """
    to_rgb = RGB_FROM_HED.to(device=rgb.device, dtype=rgb.dtype)
    mixing = HED_FROM_RGB.to(to_rgb)[None] @ (scale[:, :, None] * to_rgb)  # (B, 3, 3): OD -> OD'
    offset = shift @ to_rgb  # (B, 3)
    # exp(-OD') with -OD = log(rgb): one log, one batched product, one exp (in place, few buffers).
    log_rgb = rgb.clamp(min=OD_EPS).log_().flatten(2)
    minus_od = torch.baddbmm(-offset[:, :, None], mixing.transpose(1, 2), log_rgb)
    return minus_od.exp_().clamp_(0.0, 1.0).reshape(rgb.shape)


#: Default HED jitter ranges of the SSL views and the ``hed_jitter`` stain plugin (Tellez et al. 2018).
HED_SCALE = (0.8, 1.2)
HED_SHIFT = (-0.05, 0.05)


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
    scales = scale[0] + (scale[1] - scale[0]) * u[:, 1:4]
    shifts = shift[0] + (shift[1] - shift[0]) * u[:, 4:7]
    jittered = hed_jitter(x, scales, shifts)
    return torch.where(apply, jittered, x)


# --------------------------------------------------------------------------- CIELAB


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in ``[0, 1]`` ``(..., 3, H, W)`` to CIELAB (D65, 2 degrees), as skimage's ``rgb2lab``."""
    linear = torch.where(rgb > 0.04045, ((rgb.clamp(min=0) + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = _mix(linear, _XYZ_FROM_RGB.T) / _D65_WHITE.to(rgb)[:, None, None]
    f = torch.where(xyz > 0.008856, xyz.clamp(min=0) ** (1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = f.unbind(-3)
    return torch.stack((116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)), dim=-3)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_lab`, clipped to ``[0, 1]``."""
    lightness, a, b = lab.unbind(-3)
    fy = (lightness + 16.0) / 116.0
    f = torch.stack((fy + a / 500.0, fy, (fy - b / 200.0).clamp(min=0)), dim=-3)
    xyz = torch.where(f > 0.2068966, f**3, (f - 16.0 / 116.0) / 7.787)
    linear = _mix(xyz * _D65_WHITE.to(lab)[:, None, None], _RGB_FROM_XYZ.T)
    rgb = torch.where(linear > 0.0031308, 1.055 * linear.clamp(min=0) ** (1 / 2.4) - 0.055, 12.92 * linear)
    return rgb.clamp(0.0, 1.0)


def grayscale(rgb: torch.Tensor) -> torch.Tensor:
    """Luma ``(..., 1, H, W)`` of RGB ``(..., 3, H, W)``."""
    return _mix(rgb, torch.tensor(LUMA_WEIGHTS, dtype=torch.float64)[:, None])


# --------------------------------------------------------------------------- statistics


def as_float_images(images) -> torch.Tensor:
    """uint8 images ``(N, H, W, 3)`` (numpy or tensor) to float ``(N, 3, H, W)`` in ``[0, 1]``."""
    tensor = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if tensor.ndim == 3:
        tensor = tensor[None]
    if tensor.ndim != 4 or tensor.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (N, H, W, 3), found shape {tuple(tensor.shape)}")
    return tensor.permute(0, 3, 1, 2).float() / 255.0


def pool_pixels(images: torch.Tensor) -> torch.Tensor:
    """All pixels of ``(N, C, H, W)`` as one image ``(1, C, 1, N*H*W)`` (for fitting on targets)."""
    return images.permute(1, 0, 2, 3).reshape(1, images.shape[1], 1, -1)


def channel_stats(x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean and standard deviation ``(B, C)`` of ``(B, C, H, W)``.

    ``mask`` ``(B, H, W)`` (bool) restricts the statistics to the selected pixels.
    """
    flat = x.flatten(2)
    if mask is None:
        return flat.mean(-1), flat.std(-1, unbiased=False)
    weight = mask.flatten(1)[:, None, :].to(x.dtype)
    count = weight.sum(-1).clamp(min=1.0)
    mean = (flat * weight).sum(-1) / count
    var = (((flat - mean[..., None]) ** 2) * weight).sum(-1) / count
    return mean, var.sqrt()


def match_channel_stats(
    x: torch.Tensor, target_mean: torch.Tensor, target_std: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Shift and scale each channel of each image to ``target_mean`` / ``target_std`` ``(C,)``.

    The transfer of Reinhard et al. (2001, "Color transfer between images") in any colour space.
    """
    mean, std = channel_stats(x)
    scale = target_std.to(x) / (std + eps)
    return (x - mean[..., None, None]) * scale[..., None, None] + target_mean.to(x)[:, None, None]


def masked_quantile(values: torch.Tensor, q: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The ``q``-quantile (``0..1``) of each row of ``values`` ``(B, N)`` over ``mask`` ``(B, N)``.

    Linear interpolation between order statistics, as ``numpy.percentile``'s default. Rows with
    no selected value give 0. Batched (rows may select different numbers of values), no sync.

    >>> float(masked_quantile(torch.tensor([[1.0, 2.0, 3.0, 100.0]]), 0.5, torch.tensor([[1, 1, 1, 0]]).bool()))
    2.0
    """
    if mask is None:
        mask = torch.ones_like(values, dtype=torch.bool)
    ordered = torch.where(mask, values, torch.full_like(values, float("inf"))).sort(dim=-1).values
    count = mask.sum(-1)
    position = q * (count - 1).clamp(min=0).to(values.dtype)
    low = position.floor().long()
    high = torch.minimum(low + 1, (count - 1).clamp(min=0))
    frac = position - low.to(values.dtype)
    lo_val = ordered.gather(-1, low[:, None])[:, 0]
    hi_val = ordered.gather(-1, high[:, None])[:, 0]
    result = lo_val + (hi_val - lo_val) * frac
    return torch.where(count > 0, result, torch.zeros_like(result))


# --------------------------------------------------------------------------- tissue masks


def od_tissue_mask(od: torch.Tensor, beta: float) -> torch.Tensor:
    """Pixels whose OD is at least ``beta`` in every channel (Macenko et al. 2009): ``(B, H, W)``."""
    return (od >= beta).all(dim=-3)


def luminosity_tissue_mask(rgb: torch.Tensor, threshold: float) -> torch.Tensor:
    """Pixels with CIELAB lightness ``L/100`` below ``threshold`` (Vahadane et al. 2016)."""
    return rgb_to_lab(rgb)[..., 0, :, :] / 100.0 < threshold


# --------------------------------------------------------------------------- stain matrices


def unit_rows(vectors: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rows scaled to unit Euclidean length."""
    return vectors / vectors.norm(dim=-1, keepdim=True).clamp(min=eps)


def haematoxylin_first(stains: torch.Tensor) -> torch.Tensor:
    """Order two stain vectors ``(B, 2, 3)`` so haematoxylin (larger red OD) comes first."""
    swap = (stains[:, 1, 0] > stains[:, 0, 0])[:, None, None]
    return torch.where(swap, stains.flip(1), stains)


def least_squares_concentrations(od: torch.Tensor, stains: torch.Tensor) -> torch.Tensor:
    """Concentrations ``(B, S, N)`` minimising ``||od - stains^T C||`` for ``od`` ``(B, 3, N)``."""
    return torch.linalg.pinv(stains.transpose(1, 2)) @ od
