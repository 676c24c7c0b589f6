"""Can the centre probe tell stain apart from tissue? The probe of an untrained encoder on the
same data made with and without stain differences between centres.

    python benchmarks/probe_calibration.py [--data-root SLIDES] [--shifts 0,1.5] [--seeds 0,1,2]

With ``--data-root`` the data is the ``restained`` real tissue, else ``synthetic`` slides; the
presets of ``sassl bench stain-shift --preset cpu`` otherwise. With ``stain_shift = 0`` every
centre shows the same stain, so whatever the probe reads there is tissue (centres hold different
tissue); the gap to a stained dataset is what it reads of the stain. Prints mean ± std over
seeds of the three probe figures (features, AdaBN features, colour statistics) and chance.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from sassl_core.app.bench_cli import FALLBACK_DATA, PRESETS
from sassl_core.app.probe import centre_probe
from sassl_core.config import deep_merge, validate
from sassl_core.plugins import default_plugins
from sassl_core.train.data import prepare_dataset
from sassl_core.train.runtime import init_runtime

FIGURES = ("accuracy", "adabn_accuracy", "colour_accuracy", "majority")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", help="H&E slides or images to re-stain (default: synthetic slides)")
    parser.add_argument("--shifts", default="0,1.5", help="stain_shift values, comma-separated")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--json", metavar="OUT", help="also write the figures to this JSON file")
    args = parser.parse_args()
    base = PRESETS["cpu"]
    data = {"root": args.data_root} if args.data_root else FALLBACK_DATA
    plugins, rt = default_plugins(), init_runtime("cpu")
    results = {}
    for shift in (float(s) for s in args.shifts.split(",")):
        runs = []
        for seed in (int(s) for s in args.seeds.split(",")):
            cfg = validate(
                deep_merge(
                    base, {"data": deep_merge(data, {"options": {"stain_shift": shift}}), "trainer": {"seed": seed}}
                )
            )
            runs.append(centre_probe(cfg, plugins, prepare_dataset(cfg, plugins).patches, None, rt))
        results[shift] = {
            k: (float(np.mean([r[k] for r in runs])), float(np.std([r[k] for r in runs], ddof=1))) for k in FIGURES
        }
        cells = "  ".join(f"{k} {m:.3f} ± {s:.3f}" for k, (m, s) in results[shift].items())
        print(f"{cfg.data.dataset} stain_shift {shift}: {cells}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({str(k): v for k, v in results.items()}, fh, indent=1)


if __name__ == "__main__":
    main()
