"""Throughput of reading patches from a PatchCache against reading them from the slide.

    python benchmarks/patch_cache.py [SLIDE] [--patch-size 224] [--overlap 112] [--rounds 3] [--json]

Same rows both ways, same process: every tissue patch of the slide (overlapping grid, so there
are a few hundred), read through ``PatchDataset`` without a cache (OpenSlide decode + resize),
with a cache one sample at a time, and with a cache in shuffled batches of 64 (the DataLoader's
batched fetch). Also times building the cache. Without SLIDE, the slide of
``benchmarks/tiling.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from tiling import default_slide

from sassl_core.wsi.cache import PatchCache
from sassl_core.wsi.dataset import PatchDataset
from sassl_core.wsi.patches import PatchTable
from sassl_core.wsi.reader import open_slide
from sassl_core.wsi.tiling import tile_slide

BATCH = 64


def rate(count: int, fn) -> float:
    start = time.perf_counter()
    fn()
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide", nargs="?", type=Path)
    parser.add_argument("--patch-size", type=int, default=224)
    parser.add_argument("--overlap", type=int, default=112)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.slide or default_slide(Path(tmp))
        with open_slide(path) as reader:
            rows = tile_slide(reader, args.patch_size, overlap=args.overlap)
        table = PatchTable.from_rows([{**r, "source": path.stem} for r in rows], args.patch_size)
        n = len(table)

        start = time.perf_counter()
        cache = PatchCache.build(table, Path(tmp) / "cache")
        build = n / (time.perf_counter() - start)

        slides, cached = PatchDataset(table), PatchDataset(table, cache)
        order = np.random.default_rng(0).permutation(n)
        batches = [order[i : i + BATCH].tolist() for i in range(0, n, BATCH)]
        from_slides = rate(args.rounds * n, lambda: [slides[i] for _ in range(args.rounds) for i in order])
        from_cache = rate(args.rounds * n, lambda: [cached[i] for _ in range(args.rounds) for i in order])
        batched = rate(args.rounds * n, lambda: [cached.__getitems__(b) for _ in range(args.rounds) for b in batches])

    result = {
        "slide": str(path),
        "patches": n,
        "patch_size": args.patch_size,
        "build_patches_per_s": round(build, 1),
        "build_workers": min(4, os.cpu_count() or 1),
        "slides_per_s": round(from_slides, 1),
        "cache_per_s": round(from_cache, 1),
        "cache_batched_per_s": round(batched, 1),
        "ratio_cache": round(from_cache / from_slides, 1),
        "ratio_cache_batched": round(batched / from_slides, 1),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['slide']}: {n} patches of {args.patch_size} px, {args.rounds} rounds, shuffled order")
    print(f"build cache ({result['build_workers']} threads)   {build:10.1f} patches/s")
    print(f"PatchDataset from slides        {from_slides:10.1f} patches/s")
    print(f"PatchDataset from cache         {from_cache:10.1f} patches/s  (ratio {from_cache / from_slides:.1f})")
    print(f"from cache, batches of {BATCH}       {batched:10.1f} patches/s  (ratio {batched / from_slides:.1f})")


if __name__ == "__main__":
    main()
