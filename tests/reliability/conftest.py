"""Fixtures shared by the reliability tests."""

from pathlib import Path

import pytest

from tests.fixtures.cli_runs import cli
from tests.pipeline.tiny import TINY


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A finished one-step pretraining + one-step fine-tuning (cls) run."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    assert cli("pretrain", "--steps", 1, "--out", out, *TINY).status == 0
    result = cli("finetune", "--finetune-steps", 1, "--out", out, *TINY)
    assert result.status == 0, result.err
    return out
