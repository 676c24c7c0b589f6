"""Cost of residual learning (paper §3.3) against standard fine-tuning, measured in one process.

    python benchmarks/transfer_overhead.py [--backbone resnet18] [--image-size 64] [--batch 16]
                                           [--steps 5] [--device cpu|cuda]

1. Hooks: the backbone's ``forward_features`` alone vs. the same call with the level hooks that
   capture every feature level (``sassl_core.method.features.extract_levels``).
2. Fine-tuning step (forward, backward, optimiser step of a classification head): "w/o RL"
   (``residual=False``, E_s alone) vs. the dual encoder (frozen E_g under no_grad + E_s with
   residual hooks + fusion, Eq. 7-9).
"""

from __future__ import annotations

import argparse
import time

import timm
import torch

from sassl_core.method.features import extract_levels
from sassl_core.method.transfer import build_dual_encoder
from sassl_plugins.tasks.cls import ClassificationOptions
from sassl_plugins.tasks.cls import build as build_cls


def timed(fn, steps: int, device: torch.device) -> float:
    """Fastest of ``steps`` calls of ``fn`` after one warm-up call, in seconds.

    The minimum, not the mean, so that other work on a shared machine inflates the figures less.
    """
    fn()
    best = float("inf")
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    make = lambda: timm.create_model(args.backbone, num_classes=0)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    labels = torch.randint(0, 6, (args.batch,), device=device)

    model = make().to(device).eval()
    with torch.no_grad():
        plain = timed(lambda: model.forward_features(x), args.steps, device)
        hooked = timed(lambda: extract_levels(model, x), args.steps, device)
    print(f"forward_features      {plain * 1e3:8.1f} ms")
    print(f"+ level hooks         {hooked * 1e3:8.1f} ms   ratio {hooked / plain:.2f}")

    state = make().state_dict()
    results = {}
    for residual in (False, True):
        encoder = build_dual_encoder(make, state, residual=residual).to(device).train()
        head = build_cls(ClassificationOptions(), encoder.feature_channels, 6).to(device)
        params = [p for p in [*encoder.parameters(), *head.parameters()] if p.requires_grad]
        opt = torch.optim.SGD(params, lr=0.01)

        def step() -> None:
            loss = head.loss(head(encoder(x), args.image_size), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        results[residual] = timed(step, args.steps, device)
    base, dual = results[False], results[True]
    print(f"fine-tune step w/o RL {base * 1e3:8.1f} ms   {args.batch / base:8.1f} img/s")
    print(f"fine-tune step RL     {dual * 1e3:8.1f} ms   {args.batch / dual:8.1f} img/s   ratio {dual / base:.2f}")
    print(f"({args.backbone}, {args.image_size} px, batch {args.batch}, best of {args.steps} steps, {device})")


if __name__ == "__main__":
    main()
