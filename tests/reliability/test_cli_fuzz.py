"""Property-based test of the command line's argument and config surface, run in this process
through :func:`sassl_core.app.cli.main`: random subsets of each stage's flags with random values,
``--set`` overrides of real and made-up config paths, and config files of random shapes.

The stages themselves are replaced by a recorder (nothing trains); what is exercised is parsing,
merging, validation and the checks made before a stage starts. Each invocation either succeeds
(exit 0, the recorder got a validated config) or is refused with exactly one ``error:`` line and
exit status 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import os
import types
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import sassl_core.app.bench as bench
from sassl_core.app import api
from sassl_core.app.cli import STAGES, build_parser, main
from sassl_core.config import RunConfig

FUZZ = settings(
    max_examples=int(os.environ.get("SASSL_FUZZ_EXAMPLES", "80")),
    deadline=None,
    derandomize=bool(os.environ.get("CI")),  # the same examples on every CI run
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_files = itertools.count()


def _config_paths(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    """Every dotted field path of the config model (``pretrain.optim.lr``, ...)."""
    paths = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        paths.append(path)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            paths += _config_paths(field.annotation, f"{path}.")
    return paths


CONFIG_PATHS = _config_paths()
SPECIAL_TEXT = ["", " ", "-", "--", "é", "💥", "\udcff", "\n", "%", "%(default)s", "a=b", "{", "[", "~", "*"]
TEXT = st.text(st.characters(blacklist_characters="\x00"), max_size=12) | st.sampled_from(SPECIAL_TEXT)
INTS = st.integers() | st.sampled_from([0, -1, 2**31, 2**63, -(2**63) - 1, 10**30])
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
SCALARS = st.none() | st.booleans() | INTS | FLOATS | TEXT | st.just("a\x00b")  # YAML's "\0" escape
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=8
)


def _stage_options(command: str) -> list[argparse.Action]:
    parser = build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [a for a in sub.choices[command]._actions if a.option_strings and a.dest != "help"]


OPTIONS = {command: _stage_options(command) for command in STAGES}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Where config files go; also a path-like value (an existing, non-empty folder)."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "file.txt").write_text("not a folder\n")
    return root


def _path_values(folder: Path) -> st.SearchStrategy[str]:
    return st.sampled_from(
        ["", ".", "..", "/", "/nonexistent/x", str(folder), str(folder / "file.txt"), str(folder / "file.txt" / "x")]
        + [str(folder / "new" / "ü run"), str(folder / "runs" / "a b"), "x" * 300, str(folder / ("y" * 300) / "z")]
    )


def _values(folder: Path) -> st.SearchStrategy[str]:
    return st.one_of(INTS.map(str), FLOATS.map(str), TEXT, _path_values(folder))


@st.composite
def _overrides(draw, folder: Path) -> list[str]:
    out = []
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(CONFIG_PATHS) | TEXT)
        value = draw(
            st.one_of(
                VALUES.map(
                    lambda v: yaml.safe_dump(v, default_flow_style=True, width=10**9).strip().replace("\n", " ")
                ),
                TEXT,
                _values(folder),
            )
        )
        out += ["--set", f"{key}={value}"]
    return out


@st.composite
def _flags(draw, command: str, folder: Path) -> list[str]:
    chosen = draw(st.lists(st.sampled_from(OPTIONS[command]), max_size=6, unique_by=lambda a: a.dest))
    argv = []
    for action in chosen:
        flag = draw(st.sampled_from(action.option_strings))
        if action.nargs == 0:  # store_true, --version and the like
            argv.append(flag)
        elif action.dest == "config":
            argv += [flag, draw(_path_values(folder))]
        else:
            argv += [flag, draw(_values(folder))]
    return argv


def _config_texts() -> st.SearchStrategy[str]:
    sections = st.dictionaries(st.sampled_from(CONFIG_PATHS) | TEXT, VALUES, max_size=4)
    shapes = st.dictionaries(
        st.sampled_from(["data", "trainer", "pretrain", "ssl", "output"]) | TEXT, sections | VALUES
    )
    return shapes.map(lambda d: yaml.safe_dump(d, allow_unicode=True)) | VALUES.map(yaml.safe_dump) | TEXT


def _run(argv: list[str]) -> tuple[int, str, list]:
    """``sassl *argv`` with every stage replaced by a recorder of the config it was given."""
    seen: list = []

    def record(cfg, plugins=None):
        assert isinstance(cfg, RunConfig)
        seen.append(cfg)
        return types.SimpleNamespace(run_dir=cfg.output.dir, metrics=None)

    def record_bench(cfg, *args, **kwargs):
        seen.append(cfg)
        return {}

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        for stage in STAGES:
            mp.setattr(api, stage, record)
        mp.setattr(bench, "stain_shift_benchmark", record_bench)
        mp.setattr(bench, "render_markdown", lambda report: "")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(argv)
    return status, err.getvalue(), seen


def _check(argv: list[str]) -> None:
    status, err, seen = _run(argv)
    assert "Traceback" not in err
    if status == 0:
        assert seen, f"exit 0 without running: {argv!r}"
        return
    assert status == 2, (status, argv, err[-500:])
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, (argv, err[-500:])


@FUZZ
@given(data=st.data(), command=st.sampled_from(sorted(STAGES)))
def test_stage_flags_and_overrides(folder, data, command):
    argv = [command, *data.draw(_flags(command, folder)), *data.draw(_overrides(folder))]
    _check(argv)


@FUZZ
@given(data=st.data(), command=st.sampled_from(sorted(STAGES)), texts=st.lists(_config_texts(), min_size=1, max_size=2))
def test_config_files_of_random_shapes(folder, data, command, texts):
    files = []
    for text in texts:
        path = folder / f"config{next(_files)}.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        files += ["--config", str(path)]
    _check([command, *files, *data.draw(_overrides(folder))])


BENCH_FLAGS = ["--preset", "--seeds", "--arms", "--sassl", "--rl", "--ssl", "--backbone", "--held-out", "--steps"]
BENCH_FLAGS += ["--finetune-steps", "--image-size", "--device", "--data-root"]


@FUZZ
@given(data=st.data())
def test_bench_flags_and_overrides(folder, data):
    argv = ["bench", "stain-shift", "--out", data.draw(_path_values(folder)), "--quiet"]
    for flag in data.draw(st.lists(st.sampled_from(BENCH_FLAGS), max_size=4, unique=True)):
        argv += [flag, data.draw(_values(folder))]
    _check([*argv, *data.draw(_overrides(folder))])
