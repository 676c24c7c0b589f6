"""Throughput of tiling a slide and reading its tissue patches, against a plain OpenSlide loop.

    python benchmarks/tiling.py [SLIDE] [--patch-size 224] [--mpp 0.5] [--rounds 5] [--json]

Ours: ``tile_slide`` (tissue detection included) then ``read_patch`` of every kept patch; the
two are timed apart and together. Reading rounds alternate with the baseline's, medians kept. Baseline, same process and same tiles: a plain
``openslide.OpenSlide.read_region`` loop with RGB conversion (and resize when needed), which
knows the tiles without tiling.
Without SLIDE, ../shared/data/cmu_small_region.svs (beside the checkout) when present, else a generated
pyramidal TIFF.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import openslide

from sassl_core.wsi.cache import read_patch
from sassl_core.wsi.reader import open_slide, write_pyramid_tiff
from sassl_core.wsi.tiling import tile_slide

SHARED_SLIDE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cmu_small_region.svs"  # beside the checkout


def default_slide(folder: Path) -> Path:
    """The shared real slide, else :func:`generated_slide`."""
    return SHARED_SLIDE if SHARED_SLIDE.is_file() else generated_slide(folder)


def generated_slide(folder: Path) -> Path:
    """A 4096² 4-level pyramidal TIFF: pink tissue disc on glass, 0.25 µm/px."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:4096, :4096]
    image = np.clip(rng.normal(238, 3, (4096, 4096, 3)), 0, 255)
    disc = (xx - 2048) ** 2 + (yy - 2048) ** 2 < 1600**2
    image[disc] = np.clip(rng.normal((205, 125, 185), 20, (int(disc.sum()), 3)), 0, 255)
    return write_pyramid_tiff(folder / "generated.tiff", image.astype(np.uint8), 0.25, levels=4, tile=256)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide", nargs="?", type=Path)
    parser.add_argument("--patch-size", type=int, default=224)
    parser.add_argument("--mpp", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.slide or default_slide(Path(tmp))
        reader = open_slide(path)
        rows = tile_slide(reader, args.patch_size, args.mpp)

        start = time.perf_counter()
        for _ in range(args.rounds):
            tile_slide(reader, args.patch_size, args.mpp)
        tiling_s = (time.perf_counter() - start) / args.rounds

        slide = openslide.OpenSlide(str(path))

        def ours() -> None:
            for row in rows:
                read_patch(row, args.patch_size)

        def plain() -> None:
            for row in rows:
                size = row["read_size"]
                region = slide.read_region((row["x"], row["y"]), row["level"], (size, size)).convert("RGB")
                if size != args.patch_size:
                    region = region.resize((args.patch_size, args.patch_size))
                np.asarray(region)

        # rounds alternate between the two sides, so caches and machine load favour neither
        times: dict = {ours: [], plain: []}
        for _ in range(args.rounds):
            for fn in (ours, plain):
                start = time.perf_counter()
                fn()
                times[fn].append(time.perf_counter() - start)
        reading = len(rows) / float(np.median(times[ours]))
        baseline = len(rows) / float(np.median(times[plain]))
    end_to_end = len(rows) / (tiling_s + len(rows) / reading)

    result = {
        "slide": str(path),
        "dimensions": reader.dimensions,
        "patches": len(rows),
        "level": rows[0]["level"],
        "read_size": rows[0]["read_size"],
        "tile_slide_s": round(tiling_s, 4),
        "read_patch_per_s": round(reading, 1),
        "openslide_loop_per_s": round(baseline, 1),
        "read_ratio": round(reading / baseline, 3),
        "tile_and_read_per_s": round(end_to_end, 1),
        "end_to_end_ratio": round(end_to_end / baseline, 3),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{result['slide']} {result['dimensions']}: {len(rows)} tissue patches of {args.patch_size} px "
        f"(level {result['level']}, read {result['read_size']} px), {args.rounds} rounds"
    )
    print(f"tile_slide (tissue detection + grid)  {tiling_s * 1000:9.1f} ms per slide")
    print(f"read_patch                            {reading:9.1f} patches/s")
    print(f"OpenSlide read_region loop (baseline) {baseline:9.1f} patches/s")
    print(f"ratio read_patch / baseline           {reading / baseline:9.3f}")
    print(f"tile_slide + read_patch, end to end   {end_to_end:9.1f} patches/s  (ratio {end_to_end / baseline:.3f})")


if __name__ == "__main__":
    main()
