"""Untrusted files: a checkpoint, weights file, config or annotation crafted to run code (or to
exhaust memory) is refused with one error line; the payload never runs.

The payload writes a marker file. Each test first proves the payload is live (an unsafe
``pickle``/``torch.load`` does write the marker), so a passing test means the project's loader
refused it, not that the payload was inert.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from sassl_core.errors import UserError
from sassl_core.train.checkpoint import load_checkpoint, load_encoder_state
from sassl_plugins.backbones.timm_backbones import TimmOptions, build_timm
from sassl_plugins.datasets.camelyon16 import parse_asap
from tests.fixtures.cli_runs import assert_user_error, cli
from tests.pipeline.tiny import TINY


class MarkerPayload:
    """Unpickling this object runs ``os.system`` (it writes the marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _torch_payload(path: Path, marker: Path) -> Path:
    torch.save({"modules": MarkerPayload(marker), "stage": "pretrain"}, path)
    return path


def _legacy_pickle_payload(path: Path, marker: Path) -> Path:
    with open(path, "wb") as fh:
        pickle.dump({"modules": MarkerPayload(marker)}, fh)
    return path


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "payload-ran"
    assert not path.exists()
    return path


def _unsafe_pickle_load(path: Path) -> None:
    with open(path, "rb") as fh:
        pickle.load(fh)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize(
    "write, unsafe_load",
    [
        (_torch_payload, lambda path: torch.load(path, weights_only=False)),
        (_legacy_pickle_payload, _unsafe_pickle_load),
    ],
    ids=["torch zip", "plain pickle"],
)
def test_payload_is_live_but_load_checkpoint_refuses_it(tmp_path, marker, write, unsafe_load):
    path = write(tmp_path / "evil.pt", marker)
    unsafe_load(path)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UserError, match="evil.pt: refused to load: not a plain-weights checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_encoder_and_backbone_weights_refuse_the_payload(tmp_path, marker):
    path = _torch_payload(tmp_path / "weights.pt", marker)
    with pytest.raises(UserError, match="weights.pt: refused to load"):
        load_encoder_state(path)
    with pytest.raises(UserError, match="weights.pt: not a loadable weights file"):
        build_timm("resnet18", TimmOptions(weights=path), 32)
    assert not marker.exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("untrusted") / "run"
    assert cli("run", "--steps", 1, "--finetune-steps", 1, "--out", out, *TINY).status == 0
    return out


@pytest.mark.parametrize(
    "command, checkpoint",
    [
        (["evaluate"], "finetune_best.pt"),  # the weights kept by validation
        (["pretrain", "--steps", 2, "--resume"], "pretrain_last.pt"),
        (["finetune", "--finetune-steps", 2, "--resume"], "finetune_last.pt"),
    ],
)
def test_cli_refuses_a_crafted_checkpoint(finished_run, tmp_path, marker, command, checkpoint):
    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    _torch_payload(run / "checkpoints" / checkpoint, marker)
    result = cli(*command, "--out", run, *TINY)
    assert_user_error(result, f"checkpoints/{checkpoint}: refused to load: not a plain-weights checkpoint")
    assert not marker.exists()


def test_cli_refuses_a_crafted_pretrained_file(tmp_path, marker):
    evil = _torch_payload(tmp_path / "encoder.pt", marker)
    result = cli("finetune", "--finetune-steps", 1, "--out", tmp_path / "run", *TINY, "--pretrained", evil)
    assert_user_error(result, "encoder.pt: refused to load")
    assert not marker.exists()


def test_truncated_checkpoint_is_an_error_not_a_crash(finished_run, tmp_path):
    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    path = run / "checkpoints" / "finetune_best.pt"  # what evaluate loads
    path.write_bytes(path.read_bytes()[:4096])
    assert_user_error(cli("evaluate", "--out", run, *TINY), "finetune_best.pt: not a readable checkpoint")


def test_corrupt_safetensors_is_an_error(tmp_path):
    path = tmp_path / "encoder.safetensors"
    path.write_bytes(b"\xff" * 8 + b"{not json")
    result = cli("finetune", "--finetune-steps", 1, "--out", tmp_path / "run", *TINY, "--pretrained", path)
    assert_user_error(result, "encoder.safetensors: not a readable safetensors file")


def test_yaml_config_cannot_run_code(tmp_path, marker):
    config = tmp_path / "evil.yaml"
    config.write_text(f"trainer:\n  seed: !!python/object/apply:os.system ['touch {marker}']\n")
    assert_user_error(
        cli("pretrain", "--config", config, "--out", tmp_path / "run", *TINY), "evil.yaml: not valid YAML"
    )
    assert not marker.exists()


def test_yaml_override_cannot_run_code(tmp_path, marker):
    result = cli(
        "pretrain",
        "--out",
        tmp_path / "run",
        *TINY,
        "--set",
        f"trainer.seed=!!python/object/apply:os.system ['touch {marker}']",
    )
    assert_user_error(result, "config field trainer.seed")
    assert not marker.exists()


def test_xml_entity_expansion_is_refused(tmp_path):
    """A 'billion laughs' annotation file is refused by the parser's amplification limit."""
    entities = ['<!ENTITY a0 "lol">'] + [f'<!ENTITY a{i} "{f"&a{i - 1};" * 10}">' for i in range(1, 10)]
    xml = f'<?xml version="1.0"?>\n<!DOCTYPE r [{"".join(entities)}]>\n<ASAP_Annotations>&a9;</ASAP_Annotations>\n'
    path = tmp_path / "bomb.xml"
    path.write_text(xml)
    with pytest.raises(UserError, match="bomb.xml: malformed annotation XML"):
        parse_asap(path)


def test_xml_external_entity_is_not_read(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("1,1 5,1 5,5")
    xml = (
        f'<?xml version="1.0"?>\n<!DOCTYPE r [<!ENTITY x SYSTEM "file://{secret}">]>\n'
        '<ASAP_Annotations><Annotations><Annotation PartOfGroup="_0"><Coordinates>'
        '<Coordinate Order="0" X="&x;" Y="1"/></Coordinates></Annotation></Annotations></ASAP_Annotations>\n'
    )
    path = tmp_path / "xxe.xml"
    path.write_text(xml)
    with pytest.raises(UserError, match="xxe.xml: malformed annotation XML"):
        parse_asap(path)
