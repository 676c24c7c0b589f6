"""Config: one merge order (defaults → YAML files → flags → --set), one validation."""

import pytest
import yaml

from sassl_core.app.cli import build_parser, flags_to_config, main
from sassl_core.config import ConfigError, RunConfig, deep_merge, load_config, parse_override, validate
from sassl_core.errors import UserError


def _write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_merge_order_defaults_files_flags_overrides(tmp_path):
    a = _write(
        tmp_path / "a.yaml", {"trainer": {"seed": 1}, "pretrain": {"steps": 10, "batch_size": 8}, "sassl": {"lam": 0.1}}
    )
    b = _write(tmp_path / "b.yaml", {"pretrain": {"steps": 20}, "sassl": {"lam": 0.2}})
    flags = flags_to_config(build_parser().parse_args(["run", "--steps", "30", "--no-sassl", "--batch-size", "12"]))
    cfg = load_config([a, b], flags, ["pretrain.steps=40", "ssl.options={dim: 64}"])
    assert cfg.trainer.seed == 1  # only in a.yaml
    assert cfg.sassl.lam == 0.2  # b.yaml wins over a.yaml
    assert cfg.pretrain.batch_size == 12 and cfg.finetune.batch_size == 12  # flag wins over files
    assert cfg.sassl.enabled is False
    assert cfg.pretrain.steps == 40  # --set wins over everything
    assert cfg.ssl.options == {"dim": 64}
    assert cfg.data.image_size == RunConfig().data.image_size  # untouched default


def test_every_bad_field_is_reported_with_its_path(tmp_path):
    bad = _write(tmp_path / "bad.yaml", {"sassl": {"lamb": 1.0}, "pretrain": {"steps": "many"}})
    with pytest.raises(ConfigError) as err:
        load_config([bad], {}, ["data.image_size=4"])
    lines = str(err.value).splitlines()
    assert len(lines) == 3
    assert any(line.startswith("config field sassl.lamb: Extra inputs are not permitted") for line in lines)
    assert any(line.startswith("config field pretrain.steps:") and "'many'" in line for line in lines)
    assert any(line.startswith("config field data.image_size:") for line in lines)


def test_cli_config_error_exits_2_without_traceback(tmp_path, capsys):
    bad = _write(tmp_path / "bad.yaml", {"trainer": {"devise": "cpu"}})
    assert main(["run", "--config", str(bad), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "config field trainer.devise: Extra inputs are not permitted" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing written for a config that does not validate


@pytest.mark.parametrize(
    "text, message",
    [("noequals", "expected KEY=VALUE"), ("=3", "expected KEY=VALUE")],
)
def test_bad_override_syntax(text, message):
    with pytest.raises(UserError, match=message):
        parse_override(text)


def test_yaml_must_be_a_mapping_and_is_read_safely(tmp_path):
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="expected a mapping of config sections, found list"):
        load_config([listing])
    payload = tmp_path / "payload.yaml"
    payload.write_text("trainer: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config([payload])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config([], {}, ["sassl.lam=0.3", "task.name=seg", "data.root=/data/x"])
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config([path]) == cfg


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_non_finite_settings_are_refused_naming_the_field(value):
    """``--set sassl.lam=.inf`` used to pass: every step was skipped and an untrained encoder exported."""
    with pytest.raises(UserError, match=r"sassl\.lam"):
        validate(deep_merge({}, parse_override(f"sassl.lam={value}")))
