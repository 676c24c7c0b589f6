"""A dataset that makes its own data refuses a data root (it would be silently ignored), before
any work; the datasets that read folders take one."""

from __future__ import annotations

from sassl_core.plugins import load_plugins
from sassl_core.train.data import reads_root
from tests.fixtures.cli_runs import assert_user_error
from tests.pipeline.tiny import TINY, sassl


def test_synthetic_refuses_a_data_root_before_any_work(tmp_path):
    slides = tmp_path / "myslides"
    slides.mkdir()
    out = tmp_path / "run"
    refused = sassl("pretrain", "--data-root", slides, "--steps", 1, "--out", out, *TINY, check=False)
    assert_user_error(
        refused,
        "error: data.root: dataset 'synthetic' takes no data root (it generates its data); "
        "pick a dataset that reads folders, e.g. --dataset folder",
    )
    assert not out.exists()  # nothing written


def test_only_datasets_that_make_their_data_declare_it():
    datasets = load_plugins()["dataset"]
    making = {name for name in datasets.names() if not reads_root(datasets.get(name).options)}
    assert making == {"synthetic"}
