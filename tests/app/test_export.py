"""Weights a colleague can use: ``encoder.safetensors`` readable by others and describing itself,
and ``sassl export`` writing a timm model folder that loads without sassl."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from sassl_core.config import validate
from sassl_core.files import atomic_write
from sassl_core.plugins import default_plugins
from sassl_core.train.backbone import create_backbone
from sassl_core.train.checkpoint import export_encoder
from sassl_core.train.inference_meta import describe_run, encoder_metadata, write_inference_record
from sassl_core.train.rundir import ENCODER_FILE
from tests.fixtures.cli_runs import assert_user_error, cli
from tests.fixtures.he_images import synthetic_he

MEAN, STD = (0.7, 0.55, 0.7), (0.2, 0.25, 0.15)


def _pretrained_run(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    """A run folder as pretraining leaves it (encoder, inference.json, config.yaml): a random
    resnet18 for 32 px patches, normalised with Reinhard's method."""
    from PIL import Image

    target = tmp_path / "target.png"
    Image.fromarray(synthetic_he(64, seed=1)).save(target)
    cfg = validate(
        {
            "data": {"image_size": 32, "stain_norm": "reinhard", "stain_target": str(target)},
            "inputs": {"mean": MEAN, "std": STD},
            "ssl": {"method": "simclr"},
            "pretrain": {"steps": 7},
        }
    )
    plugins = default_plugins()
    torch.manual_seed(0)
    encoder = create_backbone(plugins, "resnet18", {}, 32)
    run = tmp_path / "run"
    record = describe_run(cfg, plugins, run, encoder)
    export_encoder(encoder, run / ENCODER_FILE, encoder_metadata(record))
    write_inference_record(run, record)
    (run / "config.yaml").write_text(cfg.to_yaml())
    (run / "centre_probe.json").write_text(json.dumps({"balanced_accuracy": 0.625}))
    return run, encoder.eval()


def test_encoder_is_readable_by_others_and_describes_how_to_feed_it(tmp_path):
    run, _ = _pretrained_run(tmp_path)
    assert (run / ENCODER_FILE).stat().st_mode & 0o777 == 0o644  # safetensors itself creates 0600
    with safe_open(str(run / ENCODER_FILE), "pt") as fh:
        meta = fh.metadata()
    assert meta["backbone"] == "resnet18" and meta["timm_model"] == "resnet18" and meta["num_features"] == "512"
    assert json.loads(meta["input_size"]) == [3, 32, 32]
    assert json.loads(meta["mean"]) == list(MEAN) and json.loads(meta["std"]) == list(STD)
    stain = json.loads(meta["stain_norm"])
    assert stain["name"] == "reinhard" and set(stain["fitted"]) == {"target_mean", "target_std"}


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_take_the_mode_of_a_new_file_under_the_umask(tmp_path, umask, mode):
    def private_file(tmp: Path) -> None:  # like safetensors: replaces the file with its own, 0600
        staged = tmp.with_name("staged")
        staged.write_bytes(b"x")
        staged.chmod(0o600)
        os.replace(staged, tmp)

    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "out.bin", private_file)
    finally:
        os.umask(old)
    assert (tmp_path / "out.bin").stat().st_mode & 0o777 == mode


LOAD_WITHOUT_SASSL = """
import json, sys
import numpy as np, timm, torch
model = timm.create_model(sys.argv[1], pretrained=True).eval()
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("sassl_core", "sassl_plugins"))
assert not loaded, loaded
with torch.no_grad():
    np.save(sys.argv[3], model(torch.from_numpy(np.load(sys.argv[2]))).numpy())
print(json.dumps(timm.data.resolve_data_config({}, model=model)))
"""


def test_export_writes_a_timm_folder_that_loads_without_sassl(tmp_path):
    run, encoder = _pretrained_run(tmp_path)
    out = tmp_path / "export"
    result = cli("export", run, "--out", out)
    assert result.status == 0, result.err
    assert [Path(p).name for p in result.out.split()] == ["config.json", "model.safetensors", "README.md"]
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]  # no staging left
    assert all((out / name).stat().st_mode & 0o777 == 0o644 for name in ("config.json", "model.safetensors"))
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "resnet18" and config["num_classes"] == 0 and config["num_features"] == 512
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert config["pretrained_cfg"]["mean"] == list(MEAN) and config["pretrained_cfg"]["std"] == list(STD)
    assert config["sassl"]["stain_norm"]["name"] == "reinhard" and config["sassl"]["target_mpp"] == 0.5
    card = (out / "README.md").read_text()
    for fragment in (
        "`simclr`",
        "| steps | 7",
        "reinhard",
        f'timm.create_model("local-dir:{out}", pretrained=True)',
        "balanced_accuracy",
    ):
        assert fragment in card, fragment

    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "x.npy", x.numpy())
    loaded = subprocess.run(
        [sys.executable, "-I", "-c", LOAD_WITHOUT_SASSL, f"local-dir:{out}", tmp_path / "x.npy", tmp_path / "y.npy"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    data_config = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert data_config["input_size"] == [3, 32, 32] and data_config["mean"] == list(MEAN)
    with torch.no_grad():
        expected = encoder(x).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, atol=1e-5)


def test_export_of_a_folder_without_a_run_record_is_one_line(tmp_path):
    (tmp_path / "old").mkdir()
    result = cli("export", tmp_path / "old", "--out", tmp_path / "x")
    assert_user_error(result, f"{tmp_path / 'old' / 'inference.json'}: not found", "re-run fine-tuning")
    assert not (tmp_path / "x").exists()
