"""Per-image cost of making SSL views: batched ViewGenerator vs. albumentations per sample.

    python benchmarks/views.py [--batch 64] [--patch 256] [--out 224] [--repeats 3]
                               [--device cpu|cuda] [--threads N] [--json OUT]

Both sides make two views of every uint8 patch of a batch with the same operations and
probabilities (ViewOptions defaults): random resized crop, 90-degree rotation, flips, HED stain
jitter (albumentations: HEStain with the Ruifrok preset and the same scale/shift ranges),
brightness/contrast/saturation, Gaussian blur, ImageNet normalisation, and end with one float
tensor (B, 3, out, out) per view. albumentations runs per sample on the CPU (its design);
ViewGenerator runs batched on ``--device``. Times are measured in the same process; the ratio
is albumentations time / ViewGenerator time.

On a CPU shared with other busy processes, OpenMP's spinning workers can stall every parallel
op for a scheduler time slice; compare with ``--threads 1`` (or ``OMP_WAIT_POLICY=PASSIVE``)
as well as the default.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import numpy as np
import torch

from sassl_core.config import InputConfig
from sassl_core.train.inputs import ModelInput
from sassl_core.train.views import ViewGenerator, ViewOptions

INPUTS = InputConfig()


def albumentations_pipeline(opt: ViewOptions, out: int) -> A.Compose:
    return A.Compose(
        [
            A.RandomResizedCrop(size=(out, out), scale=opt.crop_scale, ratio=opt.crop_ratio, p=opt.crop_p),
            A.RandomRotate90(p=opt.rot90_p),
            A.HorizontalFlip(p=opt.hflip_p),
            A.VerticalFlip(p=opt.vflip_p),
            A.HEStain(
                method="preset",
                preset="ruifrok",
                intensity_scale_range=opt.hed_scale,
                intensity_shift_range=opt.hed_shift,
                augment_background=True,
                p=opt.hed_p,
            ),
            A.ColorJitter(
                brightness=opt.brightness, contrast=opt.contrast, saturation=opt.saturation, hue=(0, 0), p=opt.color_p
            ),
            A.GaussianBlur(sigma_limit=opt.blur_sigma, blur_limit=0, p=opt.blur_p),
            A.Normalize(mean=INPUTS.mean, std=INPUTS.std),
        ]
    )


def per_sample_views(pipeline: A.Compose, patches: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    def one_view() -> torch.Tensor:
        return torch.from_numpy(np.stack([pipeline(image=p)["image"] for p in patches])).permute(0, 3, 1, 2)

    return one_view(), one_view()


def timed(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--patch", type=int, default=256, help="side of the uint8 input patches")
    parser.add_argument("--out", type=int, default=224, help="side of the views")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", metavar="OUT", help="also write the figures to this JSON file")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, (args.batch, args.patch, args.patch, 3), dtype=np.uint8)
    options = ViewOptions()
    scale = ModelInput(INPUTS).to(device).scale
    views = ViewGenerator(options, generator=torch.Generator().manual_seed(0), scale=scale)
    pipeline = albumentations_pipeline(options, args.out)

    def batched():
        return views.two_views(torch.from_numpy(patches).to(device), args.out)

    n_views = 2 * args.batch
    ours = timed(batched, args.repeats, device) / n_views
    reference = timed(lambda: per_sample_views(pipeline, patches), args.repeats, torch.device("cpu")) / n_views
    result = {
        "batch": args.batch,
        "patch": args.patch,
        "out": args.out,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "albumentations_version": A.__version__,
        "view_generator_ms_per_image": ours * 1e3,
        "albumentations_ms_per_image": reference * 1e3,
        "speedup": reference / ours,
    }
    print(
        f"{n_views} views of {args.patch}px -> {args.out}px, batch {args.batch}: "
        f"ViewGenerator ({device}) {ours * 1e3:.2f} ms/image, "
        f"albumentations per sample (cpu) {reference * 1e3:.2f} ms/image, "
        f"ratio {reference / ours:.2f}x"
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
