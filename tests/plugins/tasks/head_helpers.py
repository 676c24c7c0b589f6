"""Helpers for head tests: fixed multi-level features shaped like resnet18's fused levels at 32 px."""

import torch

CHANNELS = [8, 8, 16, 16, 32]
REDUCTIONS = [2, 4, 8, 16, 32]


def make_levels(batch: int, image_size: int = 32, channels=CHANNELS, reductions=REDUCTIONS, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, c, max(image_size // r, 1), max(image_size // r, 1), generator=g)
        for c, r in zip(channels, reductions)
    ]


def fit(head, levels, target, image_size=32, steps=15, lr=1e-2):
    """Train ``head`` on a fixed batch; return (first loss, last loss)."""
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    head.train()
    losses = []
    for _ in range(steps):
        loss = head.loss(head(levels, image_size), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses[0], losses[-1]
