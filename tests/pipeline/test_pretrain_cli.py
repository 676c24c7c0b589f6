"""`sassl pretrain` end to end on the synthetic default: every method, with and without SASSL."""

import csv
import json

import pytest
from safetensors.torch import load_file

from sassl_core.train.rundir import RunDir
from tests.pipeline.tiny import TINY, sassl

METHODS = ["simsiam", "moco", "byol", "simclr"]


def _history(run_dir):
    with open(run_dir / "history_pretrain.csv") as fh:
        return [{k: float(v) for k, v in r.items() if v} for r in csv.DictReader(fh)]


@pytest.mark.slow
@pytest.mark.parametrize("sassl_flag", [[], ["--no-sassl"]], ids=["sassl", "no-sassl"])
@pytest.mark.parametrize("method", METHODS)
def test_pretrain_reduces_ssl_loss(tmp_path, method, sassl_flag):
    out = tmp_path / "run"
    # MoCo's loss starts artificially low while its queue holds random (easy) negatives: a queue
    # of 16 keys is full of real keys after the first step, so every method is judged from step 2.
    queue = ["--set", "ssl.options.queue_size=16"] if method == "moco" else []
    sassl(
        "pretrain",
        "--ssl",
        method,
        "--steps",
        30,
        "--seed",
        0,
        "--out",
        out,
        *sassl_flag,
        *TINY,
        "--set",
        "pretrain.optim.lr=0.003",
        *queue,
    )
    rows = _history(out)
    assert [r["step"] for r in rows] == list(range(1, 31))
    first = sum(r["L_ssl"] for r in rows[1:6]) / 5
    last = sum(r["L_ssl"] for r in rows[-5:]) / 5
    assert last < first, f"{method}: L_ssl went from {first:.4f} to {last:.4f}"
    has_adversary = "L_D" in rows[0]
    assert has_adversary == (not sassl_flag)
    if has_adversary:
        assert all(0 < r["a_same"] < 1 and 0 < r["a_diff"] < 1 for r in rows)
    weights = load_file(str(out / "encoder.safetensors"))
    assert "conv1.weight" in weights  # loadable into timm.create_model("resnet18", num_classes=0)


def test_output_folder_with_a_run_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    RunDir(out).start("pretrain")  # a run folder whose pretraining finished: marker and encoder
    (out / "encoder.safetensors").write_bytes(b"")
    (out / "config.yaml").write_text("{}\n")
    proc = sassl("pretrain", "--steps", 1, "--out", out, *TINY, check=False)
    assert proc.status == 2
    assert proc.err.strip().splitlines()[-1] == (
        f"error: output.dir: {out} already holds a run; pass --resume to continue it or --overwrite to replace it"
    )
    assert "Traceback" not in proc.err
    assert (out / "config.yaml").read_text() == "{}\n"  # untouched


def test_unknown_method_lists_what_exists(tmp_path):
    proc = sassl("pretrain", "--ssl", "simsam", "--out", tmp_path / "r", *TINY, check=False)
    assert proc.status == 2
    assert "error: unknown ssl method 'simsam'; available: " in proc.err
    assert "byol, moco, simclr, simsiam" in proc.err
    assert "Traceback" not in proc.err


@pytest.mark.slow
def test_probe_a_pretraining_run_then_refusals(tmp_path):
    pre = tmp_path / "pre"
    sassl("pretrain", "--steps", 2, "--out", pre, *TINY)
    done = sassl("probe", "--out", pre, *TINY, "--set", "output.quiet=false")  # its own folder: the intended workflow
    probe = json.loads((pre / "centre_probe.json").read_text())
    assert probe["centres"] == 2 and 0.0 <= probe["accuracy"] <= 1.0 and probe["majority"] >= 0.5
    assert (
        probe["fit_patches"] > 0 and probe["test_patches"] > 0 and probe["encoder"] == str(pre / "encoder.safetensors")
    )
    assert json.loads(done.out)["metrics"]["accuracy"] == probe["accuracy"]
    assert (pre / "config_probe.yaml").is_file() and (pre / "config.yaml").is_file()

    missing = sassl("probe", "--out", tmp_path / "nothing", *TINY, check=False)
    assert missing.status == 2 and missing.err.strip().splitlines()[-1].startswith(
        "error: finetune.pretrained: expected the encoder to probe (--pretrained RUN)"
    )
    assert not (tmp_path / "nothing").exists()  # refused before producing anything

    one_centre = "data.options={centres: 1, slides_per_centre: 2, slide_size: 384, regions: 3}"
    refused = sassl("probe", "--pretrained", pre, "--out", tmp_path / "one", *TINY, "--set", one_centre, check=False)
    assert (
        refused.status == 2
        and "error: data.dataset: the centre probe needs at least 2 centres with 2 slides each; "
        "'synthetic' has 1 centre(s) and 2 slide(s)"
        in refused.err
    )
    assert not (tmp_path / "one").exists()
