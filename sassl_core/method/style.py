"""Stain style of an encoder's feature maps: per-channel mean and standard deviation.

A stain or scanner shift is, to a CNN, mostly a change of the first- and second-order
statistics of every channel of its early feature maps — the "style" of an image in the sense of
instance normalisation and AdaIN (Huang & Belongie, ICCV 2017), which transfer a style by
swapping exactly these statistics. The encoder's pooled output, by contrast, keeps only a
per-channel mean of the last level after several BatchNorm layers, where a colour cast that is
constant over a batch of mixed centres is not removed.

:class:`StyleTap` records every feature level of an encoder during the SSL forward pass (each
call, in order, so methods that encode the two views separately or together both work), and
:func:`style_statistics` turns the levels of each view into one vector ``(B, 2·ΣC_l)`` that the
stain discriminator can read instead of the projector outputs (``sassl.embedding = 'style'``).
The adversarial gradient then reaches the early layers directly, where the stain is encoded.
"""

from __future__ import annotations

import torch
from torch import nn

from sassl_core.method.features import LevelHooks, LevelSpec, feature_levels, model_layout, to_map


def style_statistics(maps: list[torch.Tensor]) -> torch.Tensor:
    """Per image, the mean and standard deviation of every channel of every ``(B, C, h, w)`` map.

    The standard deviation is the population one, so a ``1 × 1`` map (a deep level of a small
    patch) gives 0, not NaN.

    >>> x = torch.arange(8.0).view(1, 2, 2, 2)
    >>> [round(v, 4) for v in style_statistics([x])[0].tolist()]
    [1.5, 5.5, 1.118, 1.118]
    """
    flat = [m.flatten(2).float() for m in maps]
    return torch.cat([f.mean(-1) for f in flat] + [f.std(-1, correction=0) for f in flat], dim=1)


class StyleTap:
    """Records every call of an encoder's feature levels (a context manager over
    :class:`~sassl_core.method.features.LevelHooks`).

    ``views(n)`` splits the recorded batches into ``n`` equal parts (the views, in the order the
    method encoded them) and returns the style statistics of each.
    """

    def __init__(self, encoder: nn.Module, image_size: int) -> None:
        self.levels: list[LevelSpec] = feature_levels(encoder)
        self.layout = model_layout(encoder)
        self.prefix = int(getattr(encoder, "num_prefix_tokens", 0))
        self.image_hw = (image_size, image_size)
        self.calls: list[list[torch.Tensor]] = [[] for _ in self.levels]
        self.hooks = LevelHooks(encoder, self.levels, on_output=self._record)

    def __enter__(self) -> StyleTap:
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.hooks.__exit__(*exc)

    def _record(self, index: int, output: torch.Tensor) -> None:
        self.calls[index].append(to_map(output, self.levels[index], self.image_hw, self.layout, self.prefix))

    def views(self, n: int = 2) -> list[torch.Tensor]:
        """Style statistics ``(B, 2·ΣC_l)`` of each of the ``n`` views, then forget the record."""
        if not all(self.calls):
            raise RuntimeError("StyleTap: the encoder did not run inside the tap")
        levels = [torch.cat(calls).chunk(n) for calls in self.calls]
        self.calls = [[] for _ in self.levels]
        return [style_statistics([level[v] for level in levels]) for v in range(n)]
