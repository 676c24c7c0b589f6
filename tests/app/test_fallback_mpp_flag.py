"""The stage commands name the resolution fallback ``--fallback-mpp``, as ``sassl tile`` does."""

import pytest

from sassl_core.app.cli import build_parser, flags_to_config
from tests.fixtures.cli_runs import assert_user_error, cli


@pytest.mark.parametrize("command", ["run", "pretrain", "finetune", "evaluate", "probe"])
def test_fallback_mpp_sets_the_data_fallback(command):
    args = build_parser().parse_args([command, "--fallback-mpp", "0.25"])
    assert flags_to_config(args) == {"data": {"mpp": 0.25}}


def test_the_old_flag_and_bad_values_are_one_line():
    assert_user_error(cli("pretrain", "--mpp", "0.5"), "unrecognized arguments: --mpp 0.5")
    assert_user_error(cli("pretrain", "--fallback-mpp", "inf"), "argument --fallback-mpp: expected a number > 0")
