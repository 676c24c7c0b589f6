"""Long runs that cannot lose or fake work: checksummed checkpoints with a previous good one to
fall back to, stages that trained nothing, ``--resume`` with other settings, and what the loop
logs for each step (history and TensorBoard)."""

from __future__ import annotations

import io
import math
import shutil
import struct
import sys
from pathlib import Path

import pytest
import torch

from sassl_core.app.runlog import console_log
from sassl_core.config import OutputConfig, RunConfig, TrainerConfig
from sassl_core.train import trainer as trainer_module
from sassl_core.train.checkpoint import CorruptCheckpoint, load_checkpoint, previous_path, save_checkpoint
from sassl_core.train.hparams import log_hparams
from sassl_core.train.optim import warmup_cosine
from sassl_core.train.rundir import changed_settings
from sassl_core.train.runtime import Runtime
from sassl_core.train.trainer import NonFiniteLoss, Trainer
from tests.fixtures.cli_runs import assert_user_error, cli
from tests.pipeline.tiny import TINY
from tests.reliability.test_interrupts import _batches, _fit, _program, _trainer

NAN_KB = struct.pack("<f", float("nan")) * 256  # 1 KB of float32 NaN


def _poison(path: Path, tensor: torch.Tensor) -> None:
    """Overwrite ``tensor``'s bytes inside the checkpoint file with NaN: the file still loads."""
    data = bytearray(path.read_bytes())
    raw = tensor.detach().numpy().tobytes()
    at = data.find(raw)
    assert at >= 0
    n = min(len(raw), len(NAN_KB))
    data[at : at + n] = NAN_KB[:n]
    path.write_bytes(bytes(data))


# --- 1. checksummed checkpoints --------------------------------------------------------------


def test_a_checkpoint_whose_bytes_changed_is_refused_by_its_digest(tmp_path):
    path = tmp_path / "last.pt"
    weights = torch.arange(1024.0)
    save_checkpoint({"step": 1, "w": weights}, path)
    _poison(path, weights)
    assert torch.isnan(torch.load(path, weights_only=True)["w"]).any()  # torch itself loads it silently
    with pytest.raises(CorruptCheckpoint, match=r"last\.pt: corrupt checkpoint \(content does not match its sha256"):
        load_checkpoint(path)


def test_the_replaced_checkpoint_is_kept_as_the_previous_one(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path)
    assert not previous_path(path).exists()
    save_checkpoint({"step": 2}, path)
    assert load_checkpoint(path)["step"] == 2 and load_checkpoint(previous_path(path))["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.previous.pt", "last.pt"]


def test_a_checkpoint_that_fails_verification_replaces_nothing(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path)
    monkeypatch.setattr(torch, "save", lambda state, f: Path(f).write_bytes(b"PK\x03\x04 not a checkpoint"))
    with pytest.raises(CorruptCheckpoint):
        save_checkpoint({"step": 2}, path)
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_resume_from_a_corrupt_checkpoint_falls_back_to_the_previous_one(tmp_path):
    program, model = _program()
    trainer = _trainer(tmp_path, 4)
    _fit(trainer, program)
    _poison(trainer.last_path, model.weight)

    resumed, model = _program()
    rows, err = _fit(_trainer(tmp_path, 6, resume=True), resumed)
    assert f"warning: {trainer.last_path}: corrupt checkpoint" in err
    assert f"resuming from the previous checkpoint {previous_path(trainer.last_path)} (step 3)" in err
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]  # step 4 trained again
    assert torch.isfinite(model.weight).all()
    assert load_checkpoint(trainer.last_path)["step"] == 6


def test_resume_when_killed_between_the_two_renames_uses_the_previous_checkpoint(tmp_path):
    program, _ = _program()
    trainer = _trainer(tmp_path, 3)
    _fit(trainer, program)
    trainer.last_path.rename(previous_path(trainer.last_path))
    rows, err = _fit(_trainer(tmp_path, 4, resume=True), _program()[0])
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and "warning" not in err


def test_cli_resume_from_a_corrupt_checkpoint_with_no_previous_one_is_an_error(tiny_run, tmp_path):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    path = run / "checkpoints" / "pretrain_last.pt"
    with open(path, "r+b") as fh:  # 1 KB of NaN in the middle of the file
        fh.seek(path.stat().st_size // 2)
        fh.write(NAN_KB)
    result = cli("pretrain", "--steps", 2, "--out", run, *TINY, "--resume")
    assert_user_error(result, f"{path}: ", "no previous checkpoint to resume from")
    assert not previous_path(path).exists()


def test_a_halt_before_any_checkpoint_claims_none(tmp_path):
    program, _ = _program(lambda step: "loss" if step >= 1 else None)
    with pytest.raises(NonFiniteLoss, match=r"in a row \(no checkpoint was written yet\)"):
        _fit(_trainer(tmp_path, 10, max_nonfinite=2, checkpoint_every=5), program)


# --- 2. stages that trained nothing ----------------------------------------------------------


def test_a_stage_whose_every_step_was_skipped_is_an_error(tmp_path):
    program, _ = _program(lambda step: "loss")
    trainer = _trainer(tmp_path, 3, max_nonfinite=5)
    with pytest.raises(NonFiniteLoss) as err:
        _fit(trainer, program)
    assert str(err.value) == "pretrain: no step succeeded (3 of 3 skipped as non-finite); nothing exported"
    assert not trainer.has_checkpoint()


def test_more_than_half_of_the_steps_skipped_is_a_warning(tmp_path):
    program, _ = _program(lambda step: "loss" if step in (0, 2) else None)
    rows, err = _fit(_trainer(tmp_path, 3), program)
    assert [r["step"] for r in rows] == [2]
    assert "warning: pretrain: 2 of 3 steps skipped as non-finite" in err


def test_cli_pretraining_that_trained_nothing_exports_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "finite_step", lambda opt, loss: (False, torch.zeros(())))
    out = tmp_path / "run"
    result = cli("pretrain", "--steps", 2, "--out", out, *TINY)
    assert_user_error(result, "pretrain: no step succeeded (2 of 2 skipped as non-finite); nothing exported")
    assert not (out / "encoder.safetensors").exists()


# --- 3. --resume with other settings ----------------------------------------------------------


def test_changed_settings_name_every_field_but_steps_output_and_speed(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(RunConfig().to_yaml())
    cfg = RunConfig.model_validate(
        {
            "sassl": {"lam": 0.5},
            "pretrain": {"steps": 500, "batch_size": 32, "optim": {"lr": 0.01}},
            "output": {"quiet": True, "resume": True},
            "trainer": {"checkpoint_every": 5, "log_every": 1},
            "data": {"image_size": 96, "num_workers": 4, "cache_dir": "/elsewhere"},
        }
    )
    assert changed_settings(config, cfg) == [
        "data.image_size (64 → 96)",
        "pretrain.batch_size (16 → 32)",
        "pretrain.optim.lr (0.001 → 0.01)",
        "sassl.lam (1.0 → 0.5)",
    ]


def test_cli_resume_with_other_settings_is_refused_naming_them(tiny_run, tmp_path):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    before = (run / "config.yaml").read_text()
    result = cli("pretrain", "--steps", 2, "--out", run, *TINY, "--resume", "--set", "sassl.lam=0.5")
    assert_user_error(
        result,
        f"{run / 'config.yaml'}: --resume with settings other than the run's: sassl.lam (1.0 → 0.5)",
        "--resume-with-changes",
    )
    assert (run / "config.yaml").read_text() == before


def test_cli_resume_with_changes_applies_and_logs_a_new_learning_rate(tiny_run, tmp_path):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    new = ["--resume-with-changes", "--set", "pretrain.optim.lr=0.5"]
    result = cli("pretrain", "--steps", 3, "--out", run, *TINY, *new)
    assert result.status == 0, result.err
    assert "with changed settings: pretrain.optim.lr (0.001 → 0.5)" in result.err
    assert "lr: 0.5" in (run / "config.yaml").read_text()
    rows = {int(r["step"]): r for r in trainer_module.HistoryWriter(run, "pretrain", False, resume_at=3).rows}
    assert rows[1]["lr/ssl"] == pytest.approx(1e-3)  # step 1 ran before the change
    assert rows[2]["lr/ssl"] == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi / 3)))  # warm-up 0, cosine over 3


def test_resume_applies_the_configured_learning_rate_not_the_checkpoints(tmp_path):
    def program(lr: float):
        prog, model = _program()
        opt = prog.optimizers["main"]
        for group in opt.param_groups:
            group["lr"] = lr
        prog.schedulers["main"] = warmup_cosine(opt, 0, 4)
        return prog

    _fit(_trainer(tmp_path, 2), program(0.1))
    rows, _ = _fit(_trainer(tmp_path, 4, resume=True), program(0.4))
    factor = [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert [r["lr/main"] for r in rows] == pytest.approx(
        [0.1 * factor[0], 0.1 * factor[1], 0.4 * factor[2], 0.4 * factor[3]]
    )


# --- 6. what each step logs -------------------------------------------------------------------


def test_tensorboard_logs_each_optimisers_rate_for_the_step_it_was_used_and_timings(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    program, _ = _program()
    program.schedulers["main"] = warmup_cosine(program.optimizers["main"], 0, 3)
    out = OutputConfig(dir=tmp_path, quiet=True, tensorboard=True)
    trainer = Trainer("pretrain", tmp_path, TrainerConfig(), out, Runtime(torch.device("cpu")), 3)
    rows, _ = _fit(trainer, program)
    events = EventAccumulator(str(tmp_path / "tensorboard" / "pretrain"))
    events.Reload()
    rates = [(e.step, e.value) for e in events.Scalars("pretrain/lr/main")]
    assert rates == [(k + 1, pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * k / 3)))) for k in range(3)]
    assert rates[0][1] == pytest.approx(0.1)  # the first step ran at the base rate
    tags = set(events.Tags()["scalars"])
    assert {f"pretrain/{k}" for k in ("grad_norm/main", "step_time", "data_wait", "images_per_s")} <= tags
    assert all(r["grad_norm/main"] > 0 and r["images_per_s"] > 0 and r["data_wait"] >= 0 for r in rows)


# --- 4. the whole run checked before its first long stage ----------------------------------------


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--set", "task.options={hiden_dim: 8}"], "options of task 'cls': hiden_dim: Extra inputs are not permitted"),
        (["--stain-norm", "reinhard"], "data.stain_target: stain transform 'reinhard' needs a target image"),
    ],
    ids=["task option typo", "no stain target"],
)
def test_cli_run_refuses_what_fine_tuning_would_before_pretraining(tmp_path, monkeypatch, flags, message):
    started = []
    monkeypatch.setattr(Trainer, "fit", lambda self, program, batches: started.append(self.stage))
    out = tmp_path / "run"
    result = cli("run", "--steps", 50, "--finetune-steps", 1, "--out", out, *TINY, *flags)
    assert_user_error(result, message)
    assert started == [] and not out.exists()  # no step, no checkpoint, no folder


# --- 7. run.log -------------------------------------------------------------------------------


def test_run_log_keeps_what_each_stage_printed_after_a_header(tmp_path, monkeypatch):
    out = tmp_path / "run"
    loud = [a for a in TINY if a != "--quiet"]
    monkeypatch.setattr(sys, "argv", ["/usr/bin/sassl", "pretrain", "--steps", "2"])  # as the console script
    first = cli("pretrain", "--steps", 2, "--out", out, *loud, "--set", f"data.cache_dir={tmp_path / 'cache'}")
    assert first.status == 0, first.err
    log = (out / "run.log").read_text()
    assert log.startswith("=== ") and log.splitlines()[0].endswith(" sassl pretrain --steps 2")
    assert "torch " in log and "timm " in log and "python " in log and "device cpu" in log
    assert "caching patches: " in log  # the cache build reports progress as plain lines off a terminal
    assert "[pretrain] step 2/2" in log
    printed = (first.out + first.err).splitlines()
    assert printed and all(line in log for line in printed)
    assert log.splitlines()[-1] == f"done: {out}" and first.out.count("done: ") == 1  # the CLI's line, printed once

    refused = cli("pretrain", "--steps", 3, "--out", out, *loud, "--resume", "--set", "sassl.lam=0.5")
    assert refused.status == 2
    resumed = cli("pretrain", "--steps", 3, "--out", out, *loud, "--resume")
    assert resumed.status == 0, resumed.err
    log = (out / "run.log").read_text()
    assert log.count("=== ") == 2 and "[pretrain] step 3/3" in log  # appended; the refused start wrote nothing


def test_evaluation_metrics_are_logged_against_the_runs_settings_as_hparams(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    cfg = RunConfig.model_validate({"sassl": {"lam": 0.25}})
    log_hparams(tmp_path, cfg, {"task": "cls", "metrics": {"accuracy": 0.75, "per_class": [0.5, 1.0]}})
    events = EventAccumulator(str(tmp_path / "tensorboard" / "hparams"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("metrics/accuracy")] == [(0, 0.75)]
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert start.hparams["sassl.lam"].number_value == 0.25
    assert start.hparams["backbone.name"].string_value == "resnet18"


def test_changed_settings_stay_recorded_once_a_checkpoint_was_trained_with_them(tiny_run, tmp_path, monkeypatch):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    real, calls = trainer_module.finite_step, []

    def fails_after_the_first_step(opt, loss):
        calls.append(1)
        finite, norm = real(opt, loss)
        return finite and len(calls) <= 2, norm  # step 2's two phases pass, then every step fails

    monkeypatch.setattr(trainer_module, "finite_step", fails_after_the_first_step)
    new = ["--resume-with-changes", "--set", "pretrain.optim.lr=0.5", "--set", "trainer.max_nonfinite=2"]
    result = cli("pretrain", "--steps", 5, "--out", run, *TINY, *new, "--set", "trainer.checkpoint_every=1")
    assert_user_error(result, "pretrain halted at step 4")
    assert load_checkpoint(run / "checkpoints" / "pretrain_last.pt")["step"] == 2
    assert "lr: 0.5" in (run / "config.yaml").read_text()  # step 2 was trained with it


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_progress_is_a_bar_and_the_log_keeps_the_plain_lines(tmp_path, monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    program, _ = _program()
    out = OutputConfig(dir=tmp_path, quiet=False, tensorboard=False)
    trainer = Trainer("pretrain", tmp_path, TrainerConfig(log_every=2), out, Runtime(torch.device("cpu")), 4)
    with console_log() as log:
        log.attach(tmp_path, "cpu")
        trainer.fit(program, _batches)
    shown = terminal.getvalue()
    assert "\r" in shown and "4/4" in shown  # the bar, redrawn in place
    lines = [line for line in (tmp_path / "run.log").read_text().splitlines() if line.startswith("[pretrain]")]
    assert [line.split(" loss=")[0] for line in lines] == ["[pretrain] step 2/4", "[pretrain] step 4/4"]
    assert "\r" not in (tmp_path / "run.log").read_text()
