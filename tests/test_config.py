from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from pipelines.config import REPO_ROOT, ConfigError, Settings, load_settings


def test_lake_uris_are_kept_and_local_paths_made_absolute():
    s = load_settings(overrides={"lake": "s3a://bucket/lake/", "input": "rel"}, environ={}, local=False)
    assert s.table("silver/events") == "s3a://bucket/lake/silver/events"
    assert s.input == str(Path("rel").resolve())


def test_base_yaml_mirrors_the_model_defaults():
    base = yaml.safe_load((REPO_ROOT / "conf" / "base.yaml").read_text())
    assert Settings.model_validate(base) == Settings()


def test_unknown_keys_are_named(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stream:\n  watermark_dealy: 5 minutes\nlakee: x\n")
    with pytest.raises(ConfigError) as err:
        load_settings(bad, environ={}, local=False)
    assert "stream.watermark_dealy: unknown key" in str(err.value)
    assert "lakee: unknown key" in str(err.value)


def test_layers_override_in_order(tmp_path: Path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "base.yaml").write_text("lake: a\nstream:\n  watermark_delay: 1 minute\n")
    (conf / "local.yaml").write_text("lake: b\n")
    extra = tmp_path / "extra.yaml"
    extra.write_text("sessions:\n  gap: 45m\n")
    s = load_settings(extra, {"input": Path("in")}, conf_dir=conf,
                      environ={"FUNNELHOUSE__STREAM__WATERMARK_DELAY": "2 minutes",
                               "FUNNELHOUSE__KAFKA__FAIL_ON_DATA_LOSS": "false"})
    assert s.lake == str(Path("b").resolve())
    assert s.input == str(Path("in").resolve())
    assert s.stream.watermark_delay == timedelta(minutes=2)
    assert s.sessions.gap == timedelta(minutes=45)
    assert s.kafka.fail_on_data_loss is False
    assert load_settings(conf_dir=conf, environ={}, local=False).lake == str(Path("a").resolve())


def test_booleans_must_be_booleans(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text('kafka:\n  fail_on_data_loss: "True"\n')
    with pytest.raises(ConfigError, match="kafka.fail_on_data_loss"):
        load_settings(bad, environ={}, local=False)


def test_bad_duration_and_rule_order_are_rejected(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sessions:\n  gap: soon\nfunnel:\n  dropoff_rules:\n"
                   "    - {name: x, from_step: add_to_cart, to_step: ad_click,"
                   " min_conversion: 0.1, min_volume: 1}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(bad, environ={}, local=False)
    assert "sessions.gap" in str(err.value)
    assert "to_step must come after from_step" in str(err.value)


def test_missing_config_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.yaml", environ={}, local=False)
