"""One Spark session for the whole run, tuned for speed; a temporary lake per test."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.sql import DataFrame, SparkSession

from pipelines.config import REPO_ROOT, Settings, SparkSettings, load_settings
from pipelines.generate import land
from pipelines.jobs.run import run_available_now
from pipelines.session import build_spark

SAMPLE = REPO_ROOT / "data" / "sample"


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
                                    "spark": {"shuffle_partitions": 2}}, environ={})


def copy_sample(dest: str | Path, files: slice = slice(None)) -> list[Path]:
    """Land (some of) the committed sample's files into ``dest``, in arrival order."""
    return land(sorted((SAMPLE / "events").glob("*.jsonl"))[files], Path(dest))


def read(spark: SparkSession, s: Settings, table: str) -> DataFrame:
    return spark.read.format("delta").load(s.table(table))


@pytest.fixture(scope="session")
def sample_lake(spark, tmp_path_factory) -> Settings:
    """The committed sample run once through bronze, silver and gold, two files per
    micro-batch (so several batches, out-of-order files and late events are exercised)."""
    root = tmp_path_factory.mktemp("sample")
    s = load_settings(overrides={"lake": root / "lake", "input": root / "landing",
                                 "stream": {"max_files_per_trigger": 2}}, environ={})
    copy_sample(s.input)
    run_available_now(spark, s)
    return s
