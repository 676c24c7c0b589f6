"""Cost of checking a patch cache's digests when it is opened.

    python benchmarks/cache_verify.py [--patches 10000] [--patch-size 224] [--rounds 3]

Writes a cache of random patches (no slide needed), then times ``PatchCache.open`` with the
per-chunk digest check (what a run does once per stage) and without it (size check only, what
DataLoader workers do), and reads every patch once for scale. The files are in the page cache
after the build, so the figures are the hashing cost, not the disk's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from sassl_core.wsi.cache import FORMAT, PatchCache, file_digests


def timed(fn, rounds: int) -> float:
    """Best of ``rounds`` wall-clock seconds."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=10_000)
    parser.add_argument("--patch-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n, p = args.patches, args.patch_size
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "cache"
        folder.mkdir()
        rng = np.random.default_rng(0)
        images = np.memmap(folder / "images.u8", np.uint8, "w+", shape=(n, p, p, 3))
        for i in range(0, n, 1000):
            images[i : i + 1000] = rng.integers(0, 256, images[i : i + 1000].shape, dtype=np.uint8)
        images.flush()
        del images
        header = {"format": FORMAT, "count": n, "patch_size": p, "with_masks": False, "fingerprint": ""}
        header["digests"] = {"images.u8": file_digests(folder / "images.u8")}
        (folder / "header.json").write_text(json.dumps(header))

        verified = timed(lambda: PatchCache.open(folder), args.rounds)
        unverified = timed(lambda: PatchCache.open(folder, verify=False), args.rounds)
        cache = PatchCache.open(folder, verify=False)
        read = timed(lambda: [np.array(cache.images[i : i + 256]) for i in range(0, n, 256)], args.rounds)

    size = n * p * p * 3
    print(f"cache of {n} patches of {p} px: {size / 2**20:.0f} MiB")
    print(f"open with digest check: {verified:.3f} s ({size / verified / 2**30:.2f} GiB/s)")
    print(f"open, size check only:  {unverified * 1e3:.2f} ms")
    print(f"read every patch once:  {read:.3f} s; digest check / one read = {verified / read:.1f}x")


if __name__ == "__main__":
    main()
