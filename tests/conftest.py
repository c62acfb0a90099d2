"""One Spark session for the whole run, tuned for speed; a temporary lake per test."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import copy_sample
from pyspark.sql import SparkSession

from pipelines.config import Settings, SparkSettings, load_settings
from pipelines.jobs.run import run_available_now
from pipelines.session import build_spark


@pytest.fixture(scope="session")
def spark() -> SparkSession:
    session = build_spark(SparkSettings(shuffle_partitions=2, driver_memory="3g"),
                          **{"spark.sql.streaming.minBatchesToRetain": "5",
                             "spark.databricks.delta.retentionDurationCheck.enabled": "false"})
    yield session
    session.stop()


@pytest.fixture
def lake_settings(tmp_path: Path) -> Settings:
    """Settings for a fresh lake and landing folder under ``tmp_path``."""
    (tmp_path / "landing").mkdir()
    return load_settings(overrides={"lake": tmp_path / "lake", "input": tmp_path / "landing",
                                    "spark": {"shuffle_partitions": 2}}, environ={}, local=False)


@pytest.fixture(scope="session")
def sample_lake(spark, tmp_path_factory) -> Settings:
    """The committed sample run once through bronze, silver and gold, two files per
    micro-batch (so several batches, out-of-order files and late events are exercised)."""
    root = tmp_path_factory.mktemp("sample")
    s = load_settings(overrides={"lake": root / "lake", "input": root / "landing",
                                 "stream": {"max_files_per_trigger": 2}}, environ={}, local=False)
    copy_sample(s.input)
    run_available_now(spark, s)
    return s


@pytest.fixture(scope="session")
def whole_lake(spark, tmp_path_factory) -> Settings:
    """The committed sample run through bronze, silver and gold in one micro-batch per query:
    nothing is behind the watermark, so a backfill must agree with it exactly."""
    root = tmp_path_factory.mktemp("whole")
    s = load_settings(overrides={"lake": root / "lake", "input": root / "landing"}, environ={}, local=False)
    copy_sample(s.input)
    run_available_now(spark, s)
    return s
