"""Peak memory and time of a tissue-detection thumbnail of a slide stored without a pyramid.

    python benchmarks/thumbnail_memory.py [--side 16384] [--max-side 1024] [--block 4096]

Writes a single-level JPEG-tiled TIFF of ``side`` x ``side`` pixels (a tiled pattern, so it
compresses well and writes fast), then builds its thumbnail twice, each in a fresh process so
that each peak resident memory (``ru_maxrss``) belongs to that path alone: OpenSlide's
``get_thumbnail`` (reads the whole level in one go) and ``SlideReader.thumbnail`` (bounded
blocks of ``--block`` pixels a side, ``THUMBNAIL_BLOCK`` by default). Prints both, and their
ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from sassl_core.wsi.reader import THUMBNAIL_BLOCK

MEASURE = """
import json, resource, sys, time
import numpy as np
from sassl_core.wsi import reader as reader_module
path, max_side, mode, block = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
reader_module.THUMBNAIL_BLOCK = block
reader = reader_module.open_slide(path)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
if mode == "openslide":
    thumb = np.asarray(reader._slide.get_thumbnail((max_side, max_side)).convert("RGB"))
else:
    thumb = reader.thumbnail(max_side)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"mode": mode, "seconds": seconds, "peak_mib": peak / 1024, "grown_mib": (peak - base) / 1024,
                  "shape": list(thumb.shape), "mean": float(thumb.mean())}))
"""


def write_flat_slide(path: Path, side: int) -> Path:
    import tifffile

    tile = np.full((512, 512, 3), 235, np.uint8)
    tile[128:384, 128:384] = (190, 110, 170)  # a pink square on glass, repeated
    tiles = (tile for _ in range((side // 512) ** 2))  # tifffile takes tiles in row-major order
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(
            tiles,
            shape=(side, side, 3),
            dtype=np.uint8,
            tile=(512, 512),
            compression="jpeg",
            photometric="rgb",
            resolution=(4e4, 4e4),
            resolutionunit="CENTIMETER",
        )
    return path


def measure(path: Path, max_side: int, mode: str, block: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), str(max_side), mode, str(block)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=16384, help="slide side in pixels (a multiple of 512)")
    parser.add_argument("--max-side", type=int, default=1024, help="thumbnail side, as tissue detection asks")
    parser.add_argument("--block", type=int, default=THUMBNAIL_BLOCK, help="block side of the bounded path")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_flat_slide(Path(tmp) / "flat.tiff", args.side)
        rows = {mode: measure(path, args.max_side, mode, args.block) for mode in ("openslide", "blocks")}
    for r in rows.values():
        print(
            f"{r['mode']:10s} {r['seconds']:7.2f} s  peak {r['peak_mib']:8.1f} MiB (+{r['grown_mib']:.1f})  "
            f"thumbnail {tuple(r['shape'])} mean {r['mean']:.1f}"
        )
    a, b = rows["openslide"], rows["blocks"]
    print(
        f"{args.side} x {args.side} single-level slide: blocks/openslide peak growth "
        f"{b['grown_mib'] / max(a['grown_mib'], 1e-9):.3f}, time {b['seconds'] / a['seconds']:.2f}x"
    )


if __name__ == "__main__":
    main()
