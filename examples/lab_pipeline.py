"""Embedding sassl in a lab pipeline through its Python API (no command line involved).

Runs the paper's central comparison, "method" vs "method (SASSL)", on the built-in synthetic
multi-centre slides, asks how much centre (stain) information each encoder kept, then re-uses
the SASSL encoder for a second downstream run. Tiny settings: a few minutes on a laptop CPU.

    python examples/lab_pipeline.py --out runs/lab --steps 20
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sassl_core.app.api import RunConfig, finetune, load_config, probe, run

QUICK_CPU = Path(__file__).parent / "configs" / "quick_cpu.yaml"


def report(label: str, metrics: dict) -> None:
    m = metrics["metrics"]  # metrics.json: {"task", "split", "metrics": {...}, ...}
    print(f"{label:18s} accuracy {m['accuracy']:.3f}  QWK {m['qwk']:.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/lab"))
    parser.add_argument("--steps", type=int, default=20, help="steps of each stage")
    args = parser.parse_args(argv)

    # 1. A config from YAML plus overrides, exactly as `sassl run --config ... --set ...` builds it.
    #    Every field is validated once; a typo raises sassl_core.UserError naming the field.
    for label, enabled in (("SimSiam", False), ("SimSiam (SASSL)", True)):
        cfg = load_config(
            [QUICK_CPU],
            overrides=[
                f"sassl.enabled={enabled}",
                f"pretrain.steps={args.steps}",
                f"finetune.steps={args.steps}",
                f"output.dir={args.out / ('sassl' if enabled else 'baseline')}",
                "output.overwrite=true",
                "output.quiet=true",
            ],
        )
        result = run(cfg)  # pretrain -> fine-tune with residual learning -> evaluate -> report
        report(label, result.metrics)
        # The centre probe of the run's own encoder (writes centre_probe.json into the run folder):
        # how well a linear classifier still tells the centres apart; lower = more stain-invariant.
        centre = probe(cfg).metrics["metrics"]
        print(f"{'':18s} centre probe {centre['accuracy']:.3f} (majority {centre['majority']:.3f})")

    # 2. A config built in code (unset fields keep their defaults): fine-tune the SASSL encoder
    #    (the loop's last run) again as the "w/o RL" ablation, without the frozen generic twin.
    #    `finetune` reads `encoder.safetensors` from the `pretrained` run folder.
    ablation = RunConfig.model_validate(
        {
            "data": {"dataset": "synthetic", "image_size": 64, "max_per_slide": 16},
            "backbone": {"name": "resnet18"},
            "task": {"name": "cls", "residual": False, "options": {"ordinal": True}},  # graded labels
            "finetune": {"steps": args.steps, "batch_size": 8, "pretrained": result.run_dir},
            "trainer": {"device": "cpu", "amp": False},
            "output": {"dir": args.out / "sassl_without_rl", "overwrite": True, "quiet": True},
        }
    )
    report("SASSL w/o RL", finetune(ablation).metrics)


if __name__ == "__main__":
    main()
