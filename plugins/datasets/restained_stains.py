"""Per-centre stain styles of the ``restained`` dataset, and re-staining stain concentrations
with them.

A source block's tissue is reduced once to its haematoxylin and eosin concentrations ``c``
(Macenko et al. 2009, see :mod:`sassl_plugins.datasets.restained`) against the source's own
unit stain vectors ``v_H``, ``v_E``, plus the optical density ``r`` they leave unexplained. A
centre recomposes it by Beer–Lambert with its own stain and scanner (:func:`render`)::

    I = (w · exp(-(s_H·c_H·R(a_H)v_H + s_E·c_E·R(a_E)v_E + r))) ** g

then optionally Gaussian blur (focus) and JPEG re-encoding (scanner compression). What a centre
draws, and the span of each draw at ``stain_shift = 1`` (:data:`RANGES`):

* **stain hue** ``a_H``, ``a_E``: each OD vector rotated about the grey axis ``(1, 1, 1)``
  (the achromatic direction of OD space) by up to ±12°. The span is chosen to cover the visible
  spread of Macenko or Vahadane stain-vector estimates between laboratories (haematoxylin from
  bluish to purple, eosin from orange-pink to magenta) while both stains stay recognisable: a
  visual calibration on real H&E, not a published figure.
* **stain amount** ``s_H``, ``s_E``: each stain's concentration scaled by a factor in
  ``[0.7, 1.43]`` (log-symmetric): staining time, dye batch, section thickness. Chosen to
  include, with margin, the per-stain concentration jitter of the "HED-strong" augmentation of
  Tellez et al. (2019, "Quantifying the effects of data augmentation and stain color
  normalization in convolutional neural networks for computational pathology", Med Image Anal).
* **white level** ``w`` per RGB channel in ``[0.94, 1]``: the tint of the scanner's
  illumination and white balance (background from white to faintly warm or cool).
* **gamma** ``g`` in ``[0.83, 1.2]`` (log-symmetric): the scanner's tone curve.
* optionally **blur** (σ up to ``max_blur`` px) and **JPEG quality** (down to ``jpeg_quality``).

Centre 0 keeps the source's own stain; centres 1.. take their draws from a Latin hypercube
(every parameter's span cut into equal strata, one per centre, shuffled), so no two centres
share a value of any parameter. Every slide adds a small jitter (a fraction ``slide_jitter`` of
each span) to its centre's draw. ``stain_shift`` scales all of it: 0 gives every slide the
source's stain.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

#: Half-spans at ``stain_shift = 1``: hue rotations in degrees, log-factors of the stain amounts
#: and of gamma, and the largest drop of the white level of a channel.
RANGES = {"h_angle": 12.0, "e_angle": 12.0, "h_log_scale": np.log(1.43), "e_log_scale": np.log(1.43)}
WHITE_DROP = 0.06
LOG_GAMMA = np.log(1.2)
BEST_JPEG = 95  # the JPEG quality of centre 0 when JPEG re-encoding is on
GREY_AXIS = np.ones(3) / np.sqrt(3.0)


@dataclass(frozen=True)
class CentreStain:
    """One slide's (or centre's) stain and scanner; zeros and ones are the source's own."""

    h_angle: float = 0.0  # degrees, rotation of the haematoxylin OD vector about the grey axis
    e_angle: float = 0.0
    h_scale: float = 1.0  # factor on the haematoxylin concentration
    e_scale: float = 1.0
    white: tuple[float, float, float] = (1.0, 1.0, 1.0)  # white level per RGB channel
    gamma: float = 1.0
    blur: float = 0.0  # Gaussian sigma in pixels
    jpeg_quality: int | None = None  # None: no JPEG re-encoding

    def vectors(self, base: np.ndarray) -> np.ndarray:
        """The stain OD vectors ``(2, 3)`` (rows H, E): ``base``'s rotated by this stain's hues."""
        return np.stack([rotate_about_grey(base[0], self.h_angle), rotate_about_grey(base[1], self.e_angle)])


def rotate_about_grey(vector: np.ndarray, degrees: float) -> np.ndarray:
    """``vector`` rotated by ``degrees`` about the grey axis (Rodrigues' formula), kept a unit
    vector with non-negative OD."""
    t = np.deg2rad(degrees)
    k = GREY_AXIS
    v = np.asarray(vector, np.float64)
    rotated = v * np.cos(t) + np.cross(k, v) * np.sin(t) + k * (k @ v) * (1 - np.cos(t))
    rotated = np.maximum(rotated, 1e-3)
    return rotated / np.linalg.norm(rotated)


#: Columns of a draw: signed ones in ``[-1, 1]`` (0: the source's), then unsigned ones in ``[0, 1]``.
SIGNED = ("h_angle", "e_angle", "h_log_scale", "e_log_scale", "log_gamma")
UNSIGNED = ("white_r", "white_g", "white_b", "blur", "jpeg")
N_DRAWS = len(SIGNED) + len(UNSIGNED)
SCANNER = slice(N_DRAWS - 2, N_DRAWS)  # blur and JPEG: the same for every slide of a centre


def _draw(u: np.ndarray, blur: float, jpeg_quality: int | None) -> CentreStain:
    """The stain of a draw ``u`` (columns :data:`SIGNED`, :data:`UNSIGNED`), already scaled by
    the stain shift; zeros give the source's own stain."""
    return CentreStain(
        h_angle=float(RANGES["h_angle"] * u[0]),
        e_angle=float(RANGES["e_angle"] * u[1]),
        h_scale=float(np.exp(RANGES["h_log_scale"] * u[2])),
        e_scale=float(np.exp(RANGES["e_log_scale"] * u[3])),
        gamma=float(np.exp(LOG_GAMMA * u[4])),
        white=(float(1.0 - WHITE_DROP * u[5]), float(1.0 - WHITE_DROP * u[6]), float(1.0 - WHITE_DROP * u[7])),
        blur=float(blur * u[8]),
        jpeg_quality=None if jpeg_quality is None else max(5, round(BEST_JPEG - (BEST_JPEG - jpeg_quality) * u[9])),
    )


def centre_draws(centres: int, seed: int, shift: float = 1.0) -> np.ndarray:
    """``(centres, N_DRAWS)`` draws: centre 0 at the source (zeros); the others a Latin hypercube
    (each column's span cut into one stratum per centre, shuffled), times ``shift``."""
    rng = np.random.default_rng([seed, 2])
    others = centres - 1
    draws = np.zeros((centres, N_DRAWS))
    if others > 0:
        strata = (np.arange(others)[:, None] + rng.random((others, N_DRAWS))) / others  # in [0, 1)
        for j in range(N_DRAWS):
            strata[:, j] = strata[rng.permutation(others), j]
        draws[1:] = strata
        draws[1:, : len(SIGNED)] = 2 * strata[:, : len(SIGNED)] - 1
    return _clip(draws * shift)


def _clip(draws: np.ndarray) -> np.ndarray:
    """Unsigned columns kept non-negative (a shift above 1 reaches beyond every span)."""
    out = draws.copy()
    out[..., len(SIGNED) :] = np.maximum(out[..., len(SIGNED) :], 0.0)
    return out


def slide_stain(
    centre_draw: np.ndarray,
    rng: np.random.Generator,
    jitter: float,
    shift: float,
    blur: float = 0.0,
    jpeg_quality: int | None = None,
) -> CentreStain:
    """A slide's stain: its centre's draw plus a jitter of ``jitter * shift`` of every span
    (none on the scanner's blur and JPEG)."""
    noise = rng.uniform(-1, 1, N_DRAWS) * jitter * shift
    noise[SCANNER] = 0.0
    return _draw(_clip(centre_draw + noise), blur, jpeg_quality)


def render(
    concentrations: np.ndarray, base: np.ndarray, stain: CentreStain, residual: np.ndarray | None = None
) -> np.ndarray:
    """RGB uint8 ``(h, w, 3)`` of H and E concentrations ``(2, h, w)`` under ``stain``, the
    source's unit stain vectors ``base`` ``(2, 3)`` rotated and scaled by it (see module doc);
    ``residual`` ``(3, h, w)``, optical density outside the two stains, is added unchanged."""
    vectors = stain.vectors(base) * np.array([[stain.h_scale], [stain.e_scale]])
    od = np.einsum("shw,sc->hwc", concentrations.astype(np.float32), vectors.astype(np.float32))
    if residual is not None:
        od += np.moveaxis(residual.astype(np.float32), 0, -1)
    rgb = np.exp(-od) * np.asarray(stain.white, np.float32)
    rgb = np.clip(rgb, 0.0, 1.0) ** np.float32(stain.gamma)
    if stain.blur > 0:
        rgb = ndimage.gaussian_filter(rgb, sigma=(stain.blur, stain.blur, 0))
    out = np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)
    if stain.jpeg_quality is not None:
        buffer = io.BytesIO()
        Image.fromarray(out).save(buffer, format="JPEG", quality=int(stain.jpeg_quality))
        out = np.asarray(Image.open(buffer).convert("RGB"))
    return out
