"""One Spark session for the whole run, tuned for speed; a temporary lake per test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

# A pytest-xdist worker's __main__ (execnet's) has no __file__; PySpark's connect module,
# which Great Expectations imports, then takes the process for a doctest run and exits.
_main = sys.modules["__main__"]
if getattr(_main, "__spec__", None) is None and not hasattr(_main, "__file__"):
    _main.__file__ = "<pytest-xdist worker>"

import pytest
from helpers import Prometheus, copy_sample, free_port, wait_http
from pyspark.sql import SparkSession

from pipelines.config import Settings, SparkSettings, load_settings
from pipelines.jobs.run import run_available_now
from pipelines.session import build_spark

# One IP hashing key for every lake of the run (a lake would otherwise make its own), so tests
# that compare two lakes' silver and gold (a cluster run with a local one) compare like for like.
os.environ.setdefault("FUNNELHOUSE_IP_SALT", "funnelhouse-tests")


@pytest.fixture(scope="session")
def spark() -> SparkSession:
    # Interpreted projections (Spark's own tests run both forms): the tests read small Delta
    # tables hundreds of times, and every task of a Delta log or file listing job generated
    # its projections' Java source anew: 40% of the executor's samples in a backfill
    # (docs/performance.md). Whole-stage code generation stays on.
    session = build_spark(SparkSettings(shuffle_partitions=2, driver_memory="3g"),
                          **{"spark.sql.streaming.minBatchesToRetain": "5",
                             "spark.databricks.delta.retentionDurationCheck.enabled": "false",
                             "spark.sql.codegen.factoryMode": "NO_CODEGEN"})
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


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory) -> Prometheus:
    """Debian's Prometheus (``scripts/debian-packages.sh``, run by ``make test``), scraping
    127.0.0.1:``target`` every second; the test serves its metrics there."""
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.fail("prometheus is not installed: run scripts/debian-packages.sh (make test does)")
    root = tmp_path_factory.mktemp("prometheus")
    server = Prometheus(free_port(), free_port())
    (root / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - {{job_name: funnelhouse, static_configs: [{{targets: ['127.0.0.1:{server.target}']}}]}}\n")
    with (root / "prometheus.log").open("w") as log:
        proc = subprocess.Popen([exe, f"--config.file={root / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={root / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{server.port}"],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{server.port}/-/ready")
        yield server
    finally:
        proc.terminate()
        proc.wait(30)
