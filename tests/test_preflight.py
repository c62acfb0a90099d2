"""Operational errors caught before Spark starts: each a single line naming the problem, and
``funnelhouse run`` exits 2 without writing anything."""

from pathlib import Path

import pytest
from helpers import free_port, lake_copy
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.config import load_settings
from pipelines.preflight import problems


def _settings(tmp_path: Path, **over):
    (tmp_path / "landing").mkdir(exist_ok=True)
    return load_settings(overrides={"lake": tmp_path / "lake", "input": tmp_path / "landing", **over},
                         environ={}, local=False)


def test_a_ready_lake_has_no_problem(tmp_path):
    assert problems(_settings(tmp_path)) == []


def test_an_unwritable_lake_is_named(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    found = problems(_settings(tmp_path, lake=tmp_path / "a-file" / "lake"))
    assert found == [f"cannot write the lake at {tmp_path / 'a-file' / 'lake'}: Not a directory"]


def test_a_missing_landing_folder_and_missing_jars_are_named(tmp_path):
    s = _settings(tmp_path, input=tmp_path / "typo")
    (tmp_path / "jars").mkdir()
    assert problems(s, jars_dir=tmp_path / "jars") == [
        f"the landing folder {tmp_path / 'typo'} does not exist (create it, or pass --input)",
        f"missing jars in {tmp_path / 'jars'}: delta-spark, delta-storage (run `make setup`, or point "
        "FUNNELHOUSE_JARS at a folder that holds them)"]


def test_an_unreachable_kafka_broker_is_named(tmp_path):
    port = free_port()  # nothing listens there
    s = _settings(tmp_path, source="kafka", kafka={"bootstrap_servers": f"127.0.0.1:{port}"})
    [problem] = problems(s, timeout=2)
    assert problem.startswith(f"Kafka broker 127.0.0.1:{port} is unreachable: Connection refused")


def test_run_exits_2_with_one_line_and_writes_nothing(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    result = CliRunner().invoke(app, ["run", "--lake", str(tmp_path / "a-file" / "lake"), "--input",
                                      str(tmp_path / "nowhere"), "--available-now"])
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        f"cannot write the lake at {tmp_path / 'a-file' / 'lake'}: Not a directory",
        f"the landing folder {tmp_path / 'nowhere'} does not exist (create it, or pass --input)"]


def test_a_corrupt_checkpoint_stops_the_run_with_one_line_naming_query_and_checkpoint(
        spark, sample_lake, tmp_path):
    from pipelines.jobs.run import StreamFailed, run_available_now

    s = lake_copy(sample_lake, tmp_path)
    Path(s.checkpoint("pipeline"), "metadata").write_text("garbage{")
    with pytest.raises(StreamFailed) as failed:
        run_available_now(spark, s)
    assert str(failed.value).startswith(
        f"query pipeline could not start (checkpoint {s.checkpoint('pipeline')}): JsonParseException: "
        "Unrecognized token 'garbage'")


def test_a_lake_with_a_checkpoint_per_layer_is_refused_before_it_appends_the_source_again(
        spark, tmp_path):
    """A lake of the releases with a query per layer: the one query of this release would
    start from the first landing file. It stops with one line and writes nothing."""
    from pipelines.jobs.run import run_available_now

    s = _settings(tmp_path)
    (Path(s.input) / "events-1.jsonl").write_text('{"event_id": "e1"}\n')
    for old in ("silver/events", "gold"):
        Path(s.checkpoint(old)).mkdir(parents=True)
    with pytest.raises(RuntimeError, match=r"a query per layer \(_checkpoints/silver/events, "
                                           r"_checkpoints/gold\); .* would append the whole source again"):
        run_available_now(spark, s)
    assert not Path(s.checkpoint("pipeline")).exists() and not Path(s.table("bronze/events")).exists()
