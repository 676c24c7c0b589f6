"""Command-line conventions: ``--version``, per-command ``--help`` with defaults, registered
names and an example, ``--device`` forms, shell completion, and a closed output pipe."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest
import torch

from sassl_core.app.cli import STAGES, build_parser, main
from sassl_core.config import RunConfig, validate
from sassl_core.errors import UserError
from sassl_core.plugins import default_plugins
from sassl_core.train.runtime import pick_device
from tests.fixtures.cli_runs import assert_user_error, cli


def test_version_prints_the_package_version():
    result = cli("--version")
    assert result.status == 0
    assert result.out == f"sassl {importlib.metadata.version('sassl')}\n"


def _help(*command: str) -> str:
    result = cli(*command, "--help")
    assert result.status == 0, result.err
    return result.out


def _options(text: str) -> set[str]:
    return {word.rstrip(",") for word in text.split() if word.startswith("--")}


@pytest.mark.parametrize(
    "command, absent, present",
    [
        ("pretrain", {"--task", "--no-rl", "--finetune-steps", "--pretrained"}, {"--ssl", "--steps", "--resume"}),
        ("probe", {"--finetune-steps", "--steps", "--ssl", "--task", "--resume"}, {"--pretrained"}),
        ("evaluate", {"--steps", "--finetune-steps", "--ssl", "--resume", "--overwrite"}, {"--task", "--no-rl"}),
        ("finetune", {"--steps", "--ssl", "--no-sassl"}, {"--task", "--finetune-steps", "--pretrained"}),
        ("run", {"--pretrained"}, {"--ssl", "--steps", "--task", "--finetune-steps"}),
    ],
)
def test_each_stage_shows_only_the_options_it_uses(command, absent, present):
    options = _options(_help(command))
    assert not options & absent
    assert present <= options
    assert {"--config", "--set", "--out", "--device", "--image-size"} <= options  # what every stage takes


def test_stage_help_shows_config_defaults_and_an_example():
    text = " ".join(_help("pretrain").split())  # argparse wraps lines
    defaults = RunConfig()
    assert f"pretraining steps (default: {defaults.pretrain.steps})" in text
    assert f"patch side in pixels (default: {defaults.data.image_size})" in text
    assert f"example: {STAGES['pretrain'][1]}" in text


def test_a_flag_the_stage_does_not_take_is_one_error_line():
    assert_user_error(cli("probe", "--finetune-steps", 3), "unrecognized arguments: --finetune-steps 3")


def test_component_options_list_the_installed_names():
    text = " ".join(_help("run").split())
    plugins = default_plugins()
    for option, kind in (("--ssl", "ssl"), ("--task", "task"), ("--dataset", "dataset"), ("--stain-norm", "stain")):
        assert f"installed: {', '.join(plugins[kind].names())}" in text, option


def test_top_level_help_loads_no_plugins():
    """The names are looked up only for a command's own --help: ``sassl --help`` imports no torch."""
    code = "import sys; from sassl_core.app.cli import main; main(['--help']); print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize("value", ["auto", "cpu", "cuda", "cuda:0", "cuda:3", "mps"])
def test_device_forms_are_accepted_by_flag_and_config(value):
    args = build_parser().parse_args(["pretrain", "--device", value])
    assert args.device == value
    assert validate({"trainer": {"device": value}}).trainer.device == value


@pytest.mark.parametrize("value", ["cuda:x", "gpu", "cuda:", "cuda:-1", "CPU"])
def test_bad_device_is_one_error_line(value):
    assert_user_error(cli("pretrain", "--device", value), f"expected auto, cpu, cuda, cuda:N or mps, found {value!r}")
    assert_user_error(cli("pretrain", "--set", f"trainer.device={value}"), "config field trainer.device")


def test_a_device_this_machine_lacks_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="trainer.device: expected a CUDA device for 'cuda:1', found none"):
        pick_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(UserError, match=r"trainer.device: expected cuda:0 to cuda:1, found 'cuda:2'"):
        pick_device("cuda:2")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(UserError, match="expected an Apple MPS device for 'mps', found none"):
        pick_device("mps")


@pytest.mark.parametrize("shell, marker", [("bash", "complete -o"), ("zsh", "#compdef sassl")])
def test_completion_script_follows_the_parser(shell, marker):
    result = cli("completion", shell)
    assert result.status == 0, result.err
    assert marker in result.out
    for word in ("pretrain", "finetune", "probe", "--finetune-steps", "--stain-norm", "stain-shift"):
        assert word in result.out


class _ClosedPipe:
    """A stdout whose reader went away."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


@pytest.mark.parametrize("argv", [["plugins"], ["--help"], ["completion", "bash"]])
def test_a_closed_pipe_ends_the_command_quietly(argv, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main(argv) == 141
    assert capsys.readouterr().err == ""


def test_sassl_plugins_into_head_prints_no_traceback():
    """The real pipe: ``sassl plugins | head -1``."""
    command = f"{sys.executable} -m sassl_core.app.cli plugins | head -1"
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True)
    assert len(proc.stdout.splitlines()) == 1
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
