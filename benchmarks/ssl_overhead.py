"""Cost of the stain-adaptive parts against what they are added to, measured in one process.

    python benchmarks/ssl_overhead.py [--method simsiam] [--backbone resnet18] [--image-size 64]
                                      [--batch 32] [--steps 5] [--device cpu|cuda]

1. Adversary: one plain SSL training step (forward, backward, optimiser step) vs. the same step
   with the stain objective (D step on detached embeddings + G term through a frozen D).
2. Sampler: planning one epoch of the source-balanced sampler vs. one random permutation of the
   same rows (the plain shuffled sampler), on a PANDA-sized index (10,000 slides x 100 patches).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import timm
import torch

from sassl_core.method.adversary import StainAdversary
from sassl_core.method.sampler import SourceBalancedBatchSampler
from sassl_core.plugins import default_plugins


def timed(fn, steps: int, device: torch.device) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def adversary_overhead(args, device: torch.device) -> None:
    encoder = timm.create_model(args.backbone, pretrained=False, num_classes=0)
    model = default_plugins()["ssl"].create(args.method, {}, encoder=encoder, feature_dim=encoder.num_features)
    model = model.to(device)
    x1 = torch.rand(args.batch, 3, args.image_size, args.image_size, device=device)
    x2 = torch.rand_like(x1)
    sources = torch.arange(args.batch, device=device) // 4
    adversary = StainAdversary(model(x1, x2).s1.shape[1]).to(device)
    opt_g = torch.optim.SGD(model.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(adversary.parameters(), lr=1e-4)

    def plain():
        opt_g.zero_grad()
        model(x1, x2).loss.backward()
        opt_g.step()

    def sassl():
        out = model(x1, x2)
        d_loss, _ = adversary.discriminator_loss(out.s1, out.s2, sources)
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        g_term, _ = adversary.generator_term(out.s1, out.s2, sources, step=1)
        opt_g.zero_grad()
        (out.loss + g_term).backward()
        opt_g.step()

    base, ours = timed(plain, args.steps, device), timed(sassl, args.steps, device)
    print(
        f"{args.method} step, {args.backbone} {args.image_size}px batch {args.batch} on {device}: "
        f"plain {base * 1e3:.1f} ms, with stain adversary {ours * 1e3:.1f} ms, ratio {ours / base:.3f}"
    )


def sampler_overhead() -> None:
    ids = np.repeat(np.arange(10_000), 100)
    rng = np.random.default_rng(0)
    sampler = SourceBalancedBatchSampler(ids, sources_per_batch=32, patches_per_source=8)
    start = time.perf_counter()
    rng.permutation(len(ids))
    base = time.perf_counter() - start
    start = time.perf_counter()
    plan = sampler.epoch_plan(0)
    ours = time.perf_counter() - start
    print(
        f"epoch plan, {len(ids):,} patches / 10,000 sources, 32 x 8 per batch ({len(plan):,} batches): "
        f"random permutation {base * 1e3:.1f} ms, source-balanced {ours * 1e3:.1f} ms, ratio {ours / base:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="simsiam", choices=["simsiam", "moco", "byol", "simclr"])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    adversary_overhead(args, torch.device(args.device))
    sampler_overhead()


if __name__ == "__main__":
    main()
