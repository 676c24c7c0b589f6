"""`sassl pretrain` end to end on the synthetic default: every method, with and without SASSL."""

import csv

import pytest
from safetensors.torch import load_file

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
    sassl("pretrain", "--ssl", method, "--steps", 30, "--seed", 0, "--out", out, *sassl_flag, *TINY,
          "--set", "pretrain.optim.lr=0.003", *queue)
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
