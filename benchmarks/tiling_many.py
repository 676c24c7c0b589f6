"""Whole-job tiling throughput on a folder of many slides: sassl against a plain OpenSlide + Otsu
loop and, when it is importable, tiatoolbox.

    python benchmarks/tiling_many.py [--copies 8] [--patch-size 224] [--mpp 0.5] [--rounds 1] [--json]

The job, per slide: open it, find tissue, and extract every 224 px patch at 0.5 µm/px holding
at least 50% tissue (no per-slide limit).

* sassl: ``tile_to_folder`` (what ``sassl tile --max-per-slide 0 --save-tiles`` runs) with
  ``workers`` 1 and 2: tissue mask, patch grid, mask and overlay PNGs, ``patches.csv`` and every
  patch decoded and written as a PNG (or, ``--tile-format jpg``, JPEG) file. A row leaves out the
  patch files (index only: no patch pixel is read). "read pixels": ``tile_slide`` and
  ``read_patch`` of every kept patch into memory, nothing written, in 1 or 2 forked processes:
  the tiatoolbox arm's work.
* plain loop (written here, one process): ``OpenSlide.get_thumbnail``, Otsu on grey levels,
  the same grid, ``read_region`` of each kept patch into memory.
* tiatoolbox (one process, as its examples run it): ``WSIReader.tissue_mask(method="otsu")``
  at 8 µm/px, then ``SlidingWindowPatchExtractor`` (stride = patch, ``min_mask_ratio`` 0.5)
  iterated to the end, patches kept in memory.

Slides: ``--copies`` copies of ../shared/data/cmu_small_region.svs (beside the checkout; a
single-level Aperio file, skipped when absent) and as many of a generated 4096² 4-level TIFF.
Rounds alternate between the tools; the median of each is kept. Prints patches/s and the ratios.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import openslide
from PIL import Image
from skimage.filters import threshold_otsu

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiling import SHARED_SLIDE, generated_slide

import sassl_core
from sassl_core.wsi.cache import read_patch
from sassl_core.wsi.reader import open_slide
from sassl_core.wsi.tiling import TileOptions, tile_slide, tile_to_folder


def plain_loop(slides: list[Path], patch_size: int, mpp: float, threshold: float) -> int:
    """A plain OpenSlide + Otsu tiling loop, as a lab script would write it; returns patches read."""
    count = 0
    for path in slides:
        slide = openslide.OpenSlide(str(path))
        scale = mpp / float(slide.properties[openslide.PROPERTY_NAME_MPP_X])  # level-0 px per patch px
        level = slide.get_best_level_for_downsample(scale)
        down = slide.level_downsamples[level]
        read = round(patch_size * scale / down)
        size0 = read * down
        thumb = np.asarray(slide.get_thumbnail((1024, 1024)).convert("L"), np.float32)
        tissue = thumb < threshold_otsu(thumb)
        t_down = slide.dimensions[0] / thumb.shape[1]
        width, height = slide.dimensions
        for y in np.arange(0, height - size0 + 1, size0):
            for x in np.arange(0, width - size0 + 1, size0):
                cell = tissue[int(y / t_down) : int((y + size0) / t_down), int(x / t_down) : int((x + size0) / t_down)]
                if cell.size and cell.mean() >= threshold:
                    region = slide.read_region((int(x), int(y)), level, (read, read)).convert("RGB")
                    if read != patch_size:
                        region = region.resize((patch_size, patch_size), Image.Resampling.BOX)
                    np.asarray(region)
                    count += 1
        slide.close()
    return count


def tiatoolbox_job(slides: list[Path], patch_size: int, mpp: float, threshold: float) -> int:
    """tiatoolbox's tissue mask and sliding-window patch extractor; returns patches extracted."""
    from tiatoolbox.tools.patchextraction import get_patch_extractor
    from tiatoolbox.wsicore.wsireader import WSIReader

    count = 0
    for path in slides:
        reader = WSIReader.open(path)
        mask = reader.tissue_mask(method="otsu", resolution=8.0, units="mpp")
        extractor = get_patch_extractor(
            "slidingwindow",
            input_img=reader,
            input_mask=mask,
            patch_size=patch_size,
            resolution=mpp,
            units="mpp",
            stride=patch_size,
            min_mask_ratio=threshold,
        )
        for patch in extractor:
            np.asarray(patch)
            count += 1
    return count


def sassl_pixels_one(path: Path, patch_size: int, mpp: float, threshold: float) -> int:
    """sassl's tissue mask and patch grid of one slide, every kept patch read into memory."""
    with open_slide(path) as reader:
        rows = tile_slide(reader, patch_size, mpp, threshold, max_patches=0)
    for row in rows:
        read_patch(row, patch_size)
    return len(rows)


def sassl_pixels(slides: list[Path], patch_size: int, mpp: float, threshold: float, workers: int) -> int:
    """:func:`sassl_pixels_one` of each slide, in ``workers`` forked processes (the same work as
    the tiatoolbox arm, which also keeps pixels in memory and writes nothing)."""
    job = partial(sassl_pixels_one, patch_size=patch_size, mpp=mpp, threshold=threshold)
    if workers == 1:
        return sum(map(job, slides))
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return sum(pool.map(job, slides, chunksize=1))


def sassl_job(
    slides: list[Path], patch_size: int, mpp: float, threshold: float, workers: int, files: bool, fmt: str = "png"
) -> int:
    """``tile_to_folder`` of the slides' folder (what ``sassl tile`` runs); returns patches kept."""
    options = TileOptions(
        patch_size, mpp, tissue_threshold=threshold, max_per_slide=0, save_tiles=files, tile_format=fmt
    )
    out = slides[0].parent.parent / "out"
    shutil.rmtree(out, ignore_errors=True)
    return tile_to_folder([slides[0].parent], out, options, workers=workers)["patches"]


JOBS: dict[str, Callable[..., int]] = {
    "sassl read pixels, 2 processes": lambda *a: sassl_pixels(*a, workers=2),
    "sassl read pixels, 1 process": lambda *a: sassl_pixels(*a, workers=1),
    "sassl tile --save-tiles, workers=2": lambda *a: sassl_job(*a, workers=2, files=True),
    "sassl tile --save-tiles, workers=1": lambda *a: sassl_job(*a, workers=1, files=True),
    "sassl tile --save-tiles jpg, workers=2": lambda *a: sassl_job(*a, workers=2, files=True, fmt="jpg"),
    "sassl tile (index only), workers=2": lambda *a: sassl_job(*a, workers=2, files=False),
    "plain OpenSlide + Otsu loop": plain_loop,
    "tiatoolbox tissue_mask + PatchExtractor": tiatoolbox_job,
}


def run_job(label: str, slides: list[Path], args: argparse.Namespace) -> dict:
    """``label``'s job in a fresh interpreter (so no tool inherits another's imports or threads);
    the time is taken inside it, after its imports."""
    command = [sys.executable, __file__, "--job", label, *map(str, slides)]
    command += ["--patch-size", str(args.patch_size), "--mpp", str(args.mpp), "--threshold", str(args.threshold)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--patch-size", type=int, default=224)
    parser.add_argument("--mpp", type=float, default=0.5)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--job", choices=list(JOBS), help=argparse.SUPPRESS)  # one timed job (child process)
    parser.add_argument("slides", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        if args.job.startswith("tiatoolbox"):  # imports are not the job
            import tiatoolbox.tools.patchextraction
            import tiatoolbox.wsicore.wsireader
        start = time.perf_counter()
        patches = JOBS[args.job](args.slides, args.patch_size, args.mpp, args.threshold)
        print(json.dumps({"patches": patches, "seconds": time.perf_counter() - start}))
        return
    try:
        import tiatoolbox
    except ImportError:
        tiatoolbox = None

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        sources = {"generated 4-level TIFF": generated_slide(tmp_path)}
        if SHARED_SLIDE.is_file():
            sources = {"cmu_small_region.svs (single level)": SHARED_SLIDE, **sources}
        for name, source in sources.items():
            folder = tmp_path / f"set{len(results)}" / "slides"
            folder.mkdir(parents=True)
            slides = [Path(shutil.copy(source, folder / f"s{i}{source.suffix}")) for i in range(args.copies)]
            labels = [k for k in JOBS if tiatoolbox is not None or not k.startswith("tiatoolbox")]
            plain_loop(slides, args.patch_size, args.mpp, args.threshold)  # warm the page cache
            times: dict[str, list[float]] = {k: [] for k in labels}
            patches: dict[str, int] = {}
            for _ in range(args.rounds):  # rounds alternate between the tools
                for label in labels:
                    done = run_job(label, slides, args)
                    patches[label] = done["patches"]
                    times[label].append(done["seconds"])
            rates = {k: patches[k] / statistics.median(v) for k, v in times.items()}
            results.append({"slides": f"{args.copies} x {name}", "patches": patches, "patches_per_s": rates})

    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}",
        "python": platform.python_version(),
        "sassl": sassl_core.__version__,
        "openslide": openslide.__library_version__,
        "tiatoolbox": getattr(tiatoolbox, "__version__", None),
    }
    if args.json:
        print(json.dumps({"meta": meta, "results": results}, indent=2))
        return
    print(", ".join(f"{k} {v}" for k, v in meta.items()))
    for result in results:
        print(f"\n{result['slides']}, {args.patch_size} px at {args.mpp} µm/px, tissue >= {args.threshold:.0%}")
        rates = result["patches_per_s"]
        for label, rate in rates.items():
            print(f"  {label:42s} {result['patches'][label]:6d} patches {rate:9.1f} patches/s")
        for base in ("plain OpenSlide + Otsu loop", "tiatoolbox tissue_mask + PatchExtractor"):
            if base in rates:
                for label in [k for k in rates if k.startswith("sassl")]:
                    print(f"  ratio {label} / {base}: {rates[label] / rates[base]:.2f}")


if __name__ == "__main__":
    main()
