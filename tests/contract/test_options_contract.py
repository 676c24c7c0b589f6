"""Every component of every kind refuses an option it does not know, naming it."""

import pytest

from tests.contract.common import assert_options_forbid_unknown_fields, every_component


@pytest.mark.parametrize("kind, name", every_component())
def test_options_forbid_unknown_fields(kind, name):
    assert_options_forbid_unknown_fields(kind, name)
