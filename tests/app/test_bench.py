"""`sassl bench stain-shift`: arms and ablation grid, summary statistics, table, CLI, end to end."""

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest

from sassl_core.app.bench import StainArm, expand_arms, mean_std, parse_arm, render_markdown, stain_shift_benchmark
from sassl_core.app.bench_cli import SWITCH, add_bench_parser, bench_config, main
from sassl_core.config import RunConfig
from sassl_core.errors import UserError
from tests.fixtures.bench import TINY_BENCH as TINY

NORMALISERS = ["macenko", "meanstd", "reinhard", "vahadane"]


def _parse(*argv):
    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["bench", "stain-shift", *argv])


@pytest.mark.parametrize(
    "token, expected",
    [
        ("ssl", StainArm(False)),
        ("sassl", StainArm(True)),
        ("reinhard", StainArm(False, "reinhard")),
        ("ssl+macenko", StainArm(False, "macenko")),
        ("sassl+vahadane", StainArm(True, "vahadane")),
        ("hed", StainArm(False, hed=True)),
        ("sassl-paper+hed", StainArm(True, None, "sassl-paper", True)),
        ("ssl+macenko+adabn", StainArm(False, "macenko", adabn=True)),
    ],
)
def test_parse_arm(token, expected):
    assert parse_arm(token, NORMALISERS) == expected


def test_arm_overrides_pin_the_variant_and_the_views():
    (paper,) = expand_arms(RunConfig(), ["sassl-paper+hed"], NORMALISERS)
    fields = paper.overrides()
    assert fields["sassl"] == {
        "enabled": True,
        "generator": "affinity",
        "source_key": "slide",
        "embedding": "projector",
    }
    assert fields["ssl"]["views"]["hed_p"] == 1.0 and paper.name == "sassl-paper+hed"


def test_unknown_arm_names_what_exists():
    with pytest.raises(
        UserError,
        match=r"--arms: unknown arm 'reinhart'; expected ssl, sassl, sassl-paper.*hed, adabn or a stain normaliser \(macenko",
    ):
        parse_arm("reinhart", NORMALISERS)


def test_default_arms_keep_their_order_and_base_axes():
    arms = expand_arms(RunConfig(), ["ssl", "reinhard", "sassl"], NORMALISERS)
    assert [a.name for a in arms] == ["ssl", "ssl+reinhard", "sassl"]
    assert [(a.sassl, a.stain_norm) for a in arms] == [(False, None), (False, "reinhard"), (True, None)]
    assert {(a.ssl, a.backbone, a.residual) for a in arms} == {("simsiam", "resnet18", True)}
    assert arms[1].overrides() == {
        "ssl": {"method": "simsiam"},
        "backbone": {"name": "resnet18"},
        "sassl": {"enabled": False},
        "task": {"residual": True, "adapt_bn": False},
        "data": {"stain_norm": "reinhard"},
    }


def test_ablation_axes_form_the_cross_product():
    arms = expand_arms(
        RunConfig(),
        ["ssl"],
        NORMALISERS,
        sassl=SWITCH["both"],
        rl=SWITCH["both"],
        ssl_methods=["simsiam", "moco"],
        backbones=["resnet18", "timm:efficientnet_b0"],
    )
    assert len(arms) == 2 * 2 * 2 * 2
    assert len({a.name for a in arms}) == len(arms)
    assert "sassl-moco-timm_efficientnet_b0-norl" in {a.name for a in arms}
    combos = {(a.ssl, a.backbone, a.sassl, a.residual) for a in arms}
    assert len(combos) == 16


def test_sassl_switch_replaces_the_arms_own_choice_without_repeats():
    arms = expand_arms(RunConfig(), ["ssl", "sassl", "macenko"], NORMALISERS, sassl=SWITCH["on"])
    assert [a.name for a in arms] == ["sassl", "sassl+macenko"]
    assert all(a.sassl for a in arms)
    off = expand_arms(RunConfig(), ["sassl"], NORMALISERS, rl=SWITCH["off"])
    assert [(a.name, a.residual) for a in off] == [("sassl-norl", False)]


def test_mean_std_is_the_sample_deviation_and_skips_missing():
    stat = mean_std([0.5, 0.7, None, 0.9])
    assert stat["n"] == 3
    assert stat["mean"] == pytest.approx(0.7)
    assert stat["std"] == pytest.approx(np.std([0.5, 0.7, 0.9], ddof=1))
    assert mean_std([0.4]) == {"mean": 0.4, "std": 0.0, "n": 1}
    assert mean_std([None]) is None


def test_markdown_table_has_one_row_per_arm():
    stat = {"mean": 0.5, "std": 0.1, "n": 3}
    summary = {
        "shifted_accuracy": stat,
        "shifted_qwk": stat,
        "in_domain_accuracy": None,
        "in_domain_qwk": None,
        "per_centre_accuracy": {"centre0": stat, "centre2": stat},
        "centre_probe_accuracy": stat,
        "centre_probe_adabn_accuracy": {"mean": 0.4, "std": 0.0, "n": 3},
        "centre_probe_colour_accuracy": None,
        "centre_probe_majority": {"mean": 1 / 3, "std": 0.0, "n": 3},
    }
    arm = {
        "ssl": "simsiam",
        "backbone": "resnet18",
        "sassl": False,
        "stain_norm": None,
        "residual": True,
        "summary": summary,
    }
    report = {
        "held_out": "centre2",
        "dataset": "synthetic",
        "seeds": [0, 1, 2],
        "budget": {"image_size": 48, "pretrain_steps": 60, "finetune_steps": 60, "batch_size": 16},
        "arms": [arm | {"name": "ssl"}, arm | {"name": "sassl", "sassl": True}],
    }
    text = render_markdown(report)
    assert (
        "| ssl | simsiam | resnet18 | no | – | yes | 0.500 ± 0.100 | 0.500 ± 0.100 | – | – | 0.500 ± 0.100 "
        "| 0.400 ± 0.000 | – |" in text
    )
    assert "| sassl | simsiam | resnet18 | yes |" in text
    assert "| arm | centre0 | centre2 |" in text
    assert "chance is the majority share, 0.33" in text


def test_config_merges_preset_then_flags_then_set():
    args = _parse(
        "--preset",
        "cpu",
        "--steps",
        "7",
        "--set",
        "finetune.steps=3",
        "--set",
        "pretrain.steps=9",
        "--seeds",
        "4,5",
        "--ssl",
        "simsiam,byol",
        "--out",
        "x",
    )
    cfg = bench_config(args)
    assert cfg.data.image_size == 32  # preset
    assert cfg.data.dataset == "synthetic"  # no --data-root: the restained preset falls back to synthetic
    assert cfg.pretrain.steps == 9  # --set beats --steps
    assert cfg.finetune.steps == 3
    assert args.seeds == [4, 5]
    assert args.ssl == ["simsiam", "byol"]


def test_data_root_makes_the_preset_restain_that_tissue(tmp_path):
    cfg = bench_config(_parse("--preset", "cpu", "--data-root", str(tmp_path), "--out", "x"))
    assert (cfg.data.dataset, cfg.data.root) == ("restained", tmp_path)


def test_cli_module_imports_no_torch():
    code = "import sys, sassl_core.app.bench_cli; print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )


def test_cli_bad_arm_exits_2_with_one_line(tmp_path, capsys):
    assert main(["stain-shift", "--arms", "ssl,nope", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --arms: unknown arm 'nope'")
    assert not (tmp_path / "b").exists()


def test_benchmark_needs_a_classification_task(tmp_path):
    cfg = RunConfig.model_validate(TINY | {"task": {"name": "reg"}})
    with pytest.raises(UserError, match="task.name: the stain-shift benchmark scores classification .* found 'reg'"):
        stain_shift_benchmark(cfg, tmp_path / "b", seeds=[0], arms=["ssl"], held_out="centre2")
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_benchmark_writes_table_and_resumes(tmp_path):
    out = tmp_path / "bench"
    cfg = RunConfig.model_validate(TINY)
    report = stain_shift_benchmark(
        cfg, out, seeds=[0, 1], arms=["ssl", "reinhard"], held_out="centre2", log=lambda line: None
    )
    assert [a["name"] for a in report["arms"]] == ["ssl", "ssl+reinhard"]
    for arm in report["arms"]:
        assert [r["seed"] for r in arm["runs"]] == [0, 1]
        for run in arm["runs"]:
            run_dir = out / run["run_dir"]
            assert run_dir == out / arm["name"] / f"seed{run['seed']}"
            test_metrics = json.loads((run_dir / "metrics.json").read_text())
            assert test_metrics["split"] == "test"
            assert set(test_metrics["metrics"]["qwk_by_source"]) == {"centre2"}  # the held-out centre alone
            assert run["shifted"]["accuracy"] == test_metrics["metrics"]["accuracy"]
            assert set(run["per_centre"]) == {"centre0", "centre1", "centre2"}
            assert not (run_dir / "checkpoints").exists()
            probe = run["centre_probe"]  # 3 centres x 2 slides: one slide of each to fit, one to test
            assert probe["centres"] == 3 and 0.0 <= probe["accuracy"] <= 1.0 and probe["test_patches"] > 0
        probes = [r["centre_probe"]["accuracy"] for r in arm["runs"]]
        assert arm["summary"]["centre_probe_accuracy"]["mean"] == pytest.approx(np.mean(probes))
        accs = [r["shifted"]["accuracy"] for r in arm["runs"]]
        assert arm["summary"]["shifted_accuracy"]["mean"] == pytest.approx(np.mean(accs))
        assert 0.0 <= arm["summary"]["in_domain_accuracy"]["mean"] <= 1.0
    assert (out / "stain_target.png").is_file()
    assert json.loads((out / "bench.json").read_text()) == report
    table = (out / "bench.md").read_text()
    assert table.count("\n| ssl") == 2 * 2  # main and per-centre tables, two arms each
    assert "| ssl+reinhard | simsiam | resnet18 | no | reinhard | yes |" in table

    marker = out / "ssl" / "seed0" / "bench_result.json"
    before = marker.stat().st_mtime_ns
    again = stain_shift_benchmark(
        cfg, out, seeds=[0, 1], arms=["ssl", "reinhard"], held_out="centre2", log=lambda line: None
    )
    assert marker.stat().st_mtime_ns == before  # finished runs are reused, not repeated
    assert again == report
