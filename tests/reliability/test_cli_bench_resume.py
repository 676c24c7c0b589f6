"""``sassl bench stain-shift --resume``: a rerun reuses the runs that finished and reruns the
others; without ``--resume`` a folder already holding a benchmark is refused, never mixed into."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.fixtures.bench import TINY_BENCH as TINY
from tests.fixtures.cli_runs import assert_user_error, cli


@pytest.mark.slow
def test_resume_reruns_only_the_arm_whose_result_is_missing(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "bench"
    bench = ["bench", "stain-shift", "--config", config, "--arms", "ssl,sassl", "--seeds", "0"]
    bench += ["--held-out", "centre2", "--quiet", "--out", out]
    first = cli(*bench)
    assert first.status == 0, first.err[-2000:]
    kept, lost = out / "ssl" / "seed0" / "bench_result.json", out / "sassl" / "seed0" / "bench_result.json"
    before = kept.stat().st_mtime_ns
    lost.unlink()  # as if the benchmark had been stopped during that run

    assert_user_error(cli(*bench), f"--out: {out} is not empty; expected a new or empty folder, or --resume")
    assert not lost.exists()

    again = cli(*bench, "--resume")
    assert again.status == 0, again.err[-2000:]
    assert kept.stat().st_mtime_ns == before  # the finished run was reused
    assert lost.is_file()  # the unfinished one ran again
    report = json.loads((out / "bench.json").read_text())
    assert [arm["name"] for arm in report["arms"]] == ["ssl", "sassl"]
