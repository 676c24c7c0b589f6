"""The MLP heads of self-supervised methods (projectors and predictors).

SimSiam, MoCo v2, BYOL and SimCLR all put a small MLP on top of the pooled encoder features;
they differ only in depth, widths and where batch norm sits, so one builder serves them all.
"""

from __future__ import annotations

from torch import nn


def build_mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    num_layers: int = 2,
    batch_norm: bool = True,
    last_batch_norm: bool = False,
) -> nn.Sequential:
    """``num_layers`` Linear layers; all but the last are followed by (BatchNorm1d +) ReLU.

    ``last_batch_norm`` adds a BatchNorm1d without affine parameters after the output layer
    (SimSiam's projector). Hidden Linear layers drop their bias when a batch norm follows.

    >>> mlp = build_mlp(512, 256, 128, num_layers=3, last_batch_norm=True)
    >>> [type(m).__name__ for m in mlp][-2:]
    ['Linear', 'BatchNorm1d']
    """
    if num_layers < 1:
        raise ValueError(f"num_layers: expected at least 1, found {num_layers}")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.ReLU(inplace=True))
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=not last_batch_norm))
    if last_batch_norm:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)
