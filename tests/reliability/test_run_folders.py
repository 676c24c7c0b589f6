"""The run folder: nothing of the user's is deleted, nothing is written outside it, one process
at a time (:mod:`sassl_core.train.rundir`).

* ``--overwrite`` replaces only a folder sassl marked as a run, and only sassl's files in it; the
  current folder (an empty ``--out``), its ancestors, the home folder and ``/`` are refused.
* A start that finished nothing (a crash) does not block a rerun into the same folder.
* A second process on a folder in use is refused, naming the first one's pid.
* A symbolic link in the run folder is replaced by the output, never written through.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sassl_core.app import api
from sassl_core.app.report import TASK_PLOTS
from sassl_core.errors import UserError
from sassl_core.train.rundir import MARKER, OWNED, RunDir
from tests.fixtures.cli_runs import assert_user_error, cli
from tests.pipeline.tiny import TINY

ROOT = Path(__file__).parents[2]


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_run, tmp_path / "run", symlinks=True))


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run_id(run: Path) -> str | None:
    marker = run / MARKER
    return json.loads(marker.read_text())["run_id"] if marker.exists() else None


# --- 1. --overwrite deletes only what sassl wrote, only in a run folder ----------------------


@pytest.fixture
def project(tmp_path) -> Path:
    """A user's folder holding their own ``config.yaml``, notes and data."""
    folder = tmp_path / "proj"
    (folder / "data").mkdir(parents=True)
    (folder / "config.yaml").write_text("pretrain:\n  steps: 1\n")
    (folder / "precious.txt").write_text("irreplaceable")
    (folder / "data" / "slide.txt").write_text("data")
    return folder


@pytest.mark.parametrize("flags", [["--overwrite"], []], ids=["overwrite", "plain"])
def test_a_folder_that_is_not_a_run_is_never_written_or_emptied(project, flags):
    before = _listing(project)
    result = cli("pretrain", "--config", project / "config.yaml", "--out", project, *flags, *TINY)
    assert_user_error(result, f"output.dir: {project} is not empty and holds no sassl run (no {MARKER})")
    assert _listing(project) == before and sorted(p.name for p in project.iterdir()) == [
        "config.yaml",
        "data",
        "precious.txt",
    ]


@pytest.mark.parametrize(
    "out, what",
    [
        ("", "the current folder (as is an empty --out)"),
        (".", "the current folder (as is an empty --out)"),
        ("..", "an ancestor of the current folder"),
        ("{tmp}", "an ancestor of the current folder"),
        ("{tmp}/home", "the home folder"),
    ],
    ids=["empty --out", "dot", "parent", "ancestor", "home"],
)
def test_overwrite_refuses_folders_that_hold_more_than_a_run(tmp_path, monkeypatch, out, what):
    home, cwd = tmp_path / "home", tmp_path / "home" / "work" / "here"
    cwd.mkdir(parents=True)
    (cwd / "config.yaml").write_text("pretrain:\n  steps: 1\n")
    (cwd / "precious.txt").write_text("irreplaceable")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    before = _listing(tmp_path)
    result = cli("pretrain", "--config", "config.yaml", "--out", out.format(tmp=tmp_path), "--overwrite", *TINY)
    assert_user_error(result, "output.dir: '", f"is {what}; expected a folder of the run's own")
    assert _listing(tmp_path) == before


def test_the_root_folder_is_refused():
    with pytest.raises(UserError, match="output.dir: '/' is the root folder"):
        RunDir("/").check_location()


def test_a_file_as_output_folder_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("x")
    assert_user_error(cli("pretrain", "--out", path, "--overwrite", *TINY), f"output.dir: {path} is a file")
    assert path.read_text() == "x"


def test_overwrite_removes_only_what_sassl_wrote_and_names_the_rest(run_copy):
    (run_copy / "notes.txt").write_text("mine")
    (run_copy / "mydata").mkdir()
    (run_copy / "mydata" / "a.txt").write_text("mine too")
    old_id = _run_id(run_copy)
    result = cli("pretrain", "--steps", 1, "--out", run_copy, "--overwrite", *TINY)
    assert result.status == 0, result.err
    assert (run_copy / "notes.txt").read_text() == "mine" and (run_copy / "mydata" / "a.txt").read_text() == "mine too"
    assert f"warning: output.dir: {run_copy}: left in place what sassl did not write: mydata, notes.txt" in result.err
    assert _run_id(run_copy) not in (None, old_id)  # a new run
    assert not (run_copy / "metrics.json").exists() and not (run_copy / "config_finetune.yaml").exists()


def test_overwrite_removes_a_link_not_what_it_points_to(run_copy, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    shutil.move(run_copy / "checkpoints", elsewhere)
    (run_copy / "checkpoints").symlink_to(elsewhere)
    before = _listing(elsewhere)
    assert cli("pretrain", "--steps", 1, "--out", run_copy, "--overwrite", *TINY).status == 0
    assert _listing(elsewhere) == before
    assert not (run_copy / "checkpoints").is_symlink()


def test_sassl_owns_every_file_a_run_writes(run_copy):
    assert cli("evaluate", "--out", run_copy, *TINY).status == 0
    assert cli("probe", "--out", run_copy, *TINY).status == 0
    assert RunDir(run_copy).foreign() == []
    assert {name for name, _ in TASK_PLOTS.values()} <= OWNED


def test_temporaries_of_writes_cut_short_are_removed_when_a_stage_takes_the_folder(run_copy):
    stale = [run_copy / ".encoder.safetensors.tmp99999", run_copy / ".report.md.tmp1"]
    stale.append(run_copy / "checkpoints" / ".finetune_last.pt.tmp5")
    for path in [*stale, run_copy / ".notes.tmp3"]:
        path.write_text("cut short")
    assert cli("evaluate", "--out", run_copy, *TINY).status == 0
    assert not any(path.exists() for path in stale)
    assert (run_copy / ".notes.tmp3").read_text() == "cut short"  # not a name sassl writes


# --- 2. a crashed start does not block a rerun ---------------------------------------------


def test_a_crash_before_any_result_does_not_block_a_rerun(tmp_path, monkeypatch):
    out = tmp_path / "run"

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(api, "pretrain_stage", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cli("pretrain", "--steps", 1, "--out", out, *TINY)
    assert (out / "config.yaml").is_file() and not (out / "encoder.safetensors").exists()
    monkeypatch.undo()
    result = cli("pretrain", "--steps", 1, "--out", out, *TINY)  # no --overwrite; the lock went with the crash
    assert result.status == 0, result.err
    assert (out / "encoder.safetensors").is_file()


# --- 3. one process per run folder ---------------------------------------------------------


def test_a_second_run_into_a_folder_in_use_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_stage, second = api.pretrain_stage, {}

    def stage_with_a_second_run(*args, **kwargs):
        if "run" not in second:  # while the first run trains, a second one starts on the same folder
            second["run"] = None
            second["run"] = cli("pretrain", "--steps", 1, "--out", out, "--overwrite", *TINY)
        return real_stage(*args, **kwargs)

    monkeypatch.setattr(api, "pretrain_stage", stage_with_a_second_run)
    first = cli("pretrain", "--steps", 1, "--out", out, *TINY)
    assert first.status == 0, first.err
    assert_user_error(second["run"], f"output.dir: {out} is in use by another sassl process (pid {os.getpid()})")
    assert (out / "encoder.safetensors").is_file() and (out / "config.yaml").is_file()


HOLD_LOCK = """
import sys
from sassl_core.train.rundir import RunDir
with RunDir(sys.argv[1]).locked():
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_the_lock_is_another_process_s_until_it_dies(run_copy):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run_copy)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        before = _listing(run_copy)
        result = cli("evaluate", "--out", run_copy, *TINY)
        assert_user_error(result, f"output.dir: {run_copy} is in use by another sassl process (pid {holder.pid})")
        assert _listing(run_copy) == before
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs, the kernel drops the lock
        holder.wait()
    assert cli("evaluate", "--out", run_copy, *TINY).status == 0


# --- 4. no write follows a link out of the run folder --------------------------------------


def _link_to_precious(run: Path, names: list[str], folder: Path) -> dict[str, Path]:
    folder.mkdir(exist_ok=True)
    targets = {}
    for i, name in enumerate(names):
        targets[name] = folder / f"precious{i}"
        targets[name].write_text(f"precious {i}")
        (run / name).unlink(missing_ok=True)
        (run / name).symlink_to(targets[name])
    return targets


def _assert_replaced_not_followed(run: Path, targets: dict[str, Path]) -> None:
    for i, (name, target) in enumerate(targets.items()):
        assert target.read_bytes() == f"precious {i}".encode(), f"{name} was written through its link"
        assert (run / name).is_file() and not (run / name).is_symlink(), name


def test_evaluate_replaces_links_instead_of_writing_through_them(run_copy, tmp_path):
    names = ["report.md", "confusion_matrix.png", "pretrain_curves.png", "finetune_curves.png", "metrics.json"]
    targets = _link_to_precious(run_copy, names, tmp_path / "elsewhere")
    assert cli("evaluate", "--out", run_copy, *TINY).status == 0
    _assert_replaced_not_followed(run_copy, targets)


def test_heatmap_replaces_links_instead_of_writing_through_them(run_copy, tmp_path):
    slide = sorted(Path(os.environ["SASSL_CACHE"]).glob("synthetic/*/centre0_slide0.tif"))[0]
    (run_copy / "heatmaps").mkdir()
    names = [f"heatmaps/{slide.stem}_heatmap.png", f"heatmaps/{slide.stem}_cam0.png"]
    targets = _link_to_precious(run_copy, names, tmp_path / "elsewhere")
    result = cli("heatmap", "--checkpoint", run_copy, "--slide", slide, "--cam-patches", 1)
    assert result.status == 0, result.err
    _assert_replaced_not_followed(run_copy, targets)


def test_a_linked_subfolder_is_refused_not_written_through(run_copy, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    shutil.move(run_copy / "checkpoints", elsewhere)
    (run_copy / "checkpoints").symlink_to(elsewhere)
    before = _listing(elsewhere)
    result = cli("finetune", "--finetune-steps", 2, "--resume", "--out", run_copy, *TINY)
    assert_user_error(result, f"output.dir: {run_copy / 'checkpoints'} is a link to {elsewhere}")
    assert _listing(elsewhere) == before


WRITERS = {"write_text", "write_bytes", "savefig", "save"}


def _direct_writes(path: Path) -> list[str]:
    """Calls that write a file other than an :func:`atomic_write` temporary (named ``tmp``); a
    trainer's own ``self.save`` is its checkpoint, written atomically."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        writes = (
            isinstance(func, ast.Attribute)
            and func.attr in WRITERS
            and not (isinstance(func.value, ast.Name) and func.value.id == "self")
        ) or (
            isinstance(func, ast.Name)
            and func.id == "open"
            and any(isinstance(a, ast.Constant) and set(str(a.value)) & set("wax") for a in node.args[1:2])
        )
        if writes and not any(isinstance(n, ast.Name) and n.id == "tmp" for n in ast.walk(node)):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_app_and_train_write_files_only_through_atomic_write():
    files = sorted((ROOT / "sassl_core" / "app").glob("*.py")) + sorted((ROOT / "sassl_core" / "train").glob("*.py"))
    assert [f for path in files for f in _direct_writes(path)] == []
