"""Input past the limits of the parsers and of the machine: one ``error:`` line, exit status 2,
no traceback, nothing half-written (deep nesting, huge integers, unusable output folders, a
full disk)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import sassl_core.app.outdir as outdir
from sassl_core.config import MAX_INT
from sassl_core.errors import UserError
from sassl_core.files import atomic_write, atomic_write_text
from tests.fixtures.cli_runs import assert_user_error, cli

DEEP = "[" * 10_000 + "]" * 10_000
HUGE = "9" * 5_000


def test_deeply_nested_set_value_is_one_error_line():
    assert_user_error(cli("pretrain", "--set", f"ssl.options.x={DEEP}"), "--set ssl.options.x: expected nesting")


def test_deeply_nested_set_key_is_one_error_line():
    assert_user_error(cli("pretrain", "--set", "a" + ".a" * 10_000 + "=1"), "expected nesting at most 32 deep")


def test_deeply_nested_config_file_is_one_error_line(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text(f"ssl:\n  options:\n    x: {DEEP}\n")
    assert_user_error(cli("pretrain", "--config", path, "--out", tmp_path / "run"), f"{path}: expected nesting")
    assert not (tmp_path / "run").exists()


def test_integer_of_5000_digits_is_one_error_line(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(f"pretrain:\n  steps: {HUGE}\n")
    assert_user_error(cli("pretrain", "--config", path), f"{path}: expected integers of at most")
    assert_user_error(cli("pretrain", "--set", f"pretrain.steps={HUGE}"), "--set pretrain.steps: expected integers")


@pytest.mark.parametrize(
    "override, field",
    [
        ("pretrain.steps=99999999999999999999999", "pretrain.steps"),
        ("trainer.seed=-99999999999999999999999", "trainer.seed"),
        ("ssl.options={proj_dim: 99999999999999999999999}", "ssl.options.proj_dim"),
    ],
)
def test_integer_beyond_64_bits_is_one_error_line(override, field):
    assert_user_error(
        cli("pretrain", "--set", override),
        f"config field {field}: expected an integer within ±{MAX_INT}, found a larger",
    )


@pytest.mark.parametrize(
    "override, message",
    [
        (f"sassl.hidden_dim={2**62}", "config field sassl.hidden_dim: Input should be less than or equal to 65536"),
        (f"data.image_size={2**62}", "config field data.image_size: Input should be less than or equal to 8192"),
        (f"trainer.grad_accum={2**62}", "config field trainer.grad_accum: Input should be less than or equal to 65536"),
        (f"trainer.seed=-{2**62}", "config field trainer.seed: Input should be greater than or equal to 0"),
    ],
)
def test_sizes_within_64_bits_that_no_run_can_take_are_refused(override, message):
    """A discriminator 2**62 wide was a RuntimeError traceback, a negative seed a ValueError one."""
    assert_user_error(cli("pretrain", "--set", override), message)


def test_out_that_is_a_file_or_lies_under_one_is_refused(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    assert_user_error(cli("pretrain", "--out", notes), f"output.dir: {notes} is a file; expected a folder")
    under = notes / "run"
    assert_user_error(cli("pretrain", "--out", under), f"output.dir: {under} lies under the file {notes}")
    assert notes.read_text() == "mine"


def test_out_that_cannot_be_created_is_refused(tmp_path, monkeypatch):
    """Permissions are simulated: the tests may run as root, whom no mode stops."""
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(outdir.os, "access", lambda path, mode: Path(path) != locked)
    run = locked / "a" / "run"
    assert_user_error(cli("pretrain", "--out", run), f"output.dir: {run} cannot be created: {locked} is not writable")
    assert not (locked / "a").exists()


def test_a_path_error_the_checks_did_not_foresee_names_the_path(tmp_path, monkeypatch):
    """A permission error raised later (a folder changed under the run) is one line naming the path."""

    def refuse(cfg, plugins):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path / "run" / "config.yaml"))

    monkeypatch.setattr("sassl_core.app.api.pretrain", refuse)
    assert_user_error(
        cli("pretrain", "--out", tmp_path / "run"), f"{tmp_path / 'run' / 'config.yaml'}: Permission denied"
    )


def test_disk_full_names_the_file_keeps_what_was_complete_and_removes_the_partial_one(tmp_path):
    done = tmp_path / "metrics.json"
    atomic_write_text(done, "complete\n")
    target = tmp_path / "report.md"
    target.write_text("previous\n")

    def fill_disk(tmp: Path) -> None:
        Path(tmp).write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError) as err:
        atomic_write(target, fill_disk)
    assert str(err.value) == f"{target}: expected free disk space to write it, found the disk full"
    assert done.read_text() == "complete\n" and target.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "report.md"]  # no partial file


def test_other_write_errors_are_not_disguised(tmp_path):
    def broken(tmp: Path) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError, match="Input/output error"):
        atomic_write(tmp_path / "x", broken)
    assert list(tmp_path.iterdir()) == []


# --- found by tests/reliability/test_cli_fuzz.py ---------------------------------------------


def test_text_with_a_nul_character_is_refused_naming_the_field(tmp_path):
    """YAML's ``"\\0"`` escape made a path the system cannot take (a ValueError traceback)."""
    path = tmp_path / "nul.yaml"
    path.write_text('output:\n  dir: "run\\0x"\n')
    assert_user_error(cli("pretrain", "--config", path), "config field output.dir: expected text without NUL")


@pytest.mark.parametrize("command", [["pretrain"], ["bench", "stain-shift"]])
def test_out_name_too_long_for_the_file_system_is_one_error_line(tmp_path, command):
    out = tmp_path / ("x" * 300) / "run"
    assert_user_error(cli(*command, "--out", out), f"{out}: expected a usable folder path, found File name too long")


def test_bench_with_a_section_set_to_null_is_a_config_error(tmp_path):
    """``--set data=null`` was an AttributeError in the benchmark's preset fallback."""
    result = cli("bench", "stain-shift", "--out", tmp_path / "b", "--set", "data=null")
    assert_user_error(result, "config field data:")
