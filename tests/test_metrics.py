"""The Prometheus exporter: a query's progress -> the per-query metrics, the watermark lag,
the Grafana dashboard naming only metrics the exporter exports, and an --available-now run
pushing its final values to a real Pushgateway. (The real scrape by a real Prometheus is in
test_cli.py, on a streaming process.)"""

import json
import re
import shutil
import subprocess
import time
import urllib.request
from datetime import datetime, timedelta
from types import SimpleNamespace

import pytest
from helpers import copy_sample, free_port, read, wait_http
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from pipelines import metrics
from pipelines.cli import app
from pipelines.config import REPO_ROOT

DASHBOARD = REPO_ROOT / "conf" / "grafana" / "dashboards" / "funnelhouse.json"


def _value(name: str, **labels) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


def test_a_progress_sets_the_query_metrics():
    state = [SimpleNamespace(numRowsTotal=120, memoryUsedBytes=4096, numRowsDroppedByWatermark=3),
             SimpleNamespace(numRowsTotal=5, memoryUsedBytes=1024, numRowsDroppedByWatermark=0)]
    progress = SimpleNamespace(name="t_query", batchId=41, numInputRows=2_000, inputRowsPerSecond=1_000.0,
                               processedRowsPerSecond=float("nan"), batchDuration=2_500, stateOperators=state)
    before = _value("funnelhouse_input_rows_total", query="t_query") or 0
    metrics.record(progress)
    metrics.record(SimpleNamespace(**{**progress.__dict__, "batchId": 42, "numInputRows": 500}))
    assert _value("funnelhouse_input_rows_total", query="t_query") - before == 2_500
    assert _value("funnelhouse_batch_rows", query="t_query") == 500
    assert _value("funnelhouse_last_batch_id", query="t_query") == 42
    assert _value("funnelhouse_batch_duration_seconds", query="t_query") == 2.5
    assert _value("funnelhouse_input_rows_per_second", query="t_query") == 1_000
    assert _value("funnelhouse_processed_rows_per_second", query="t_query") == 0  # NaN -> 0
    assert _value("funnelhouse_state_rows", query="t_query") == 125
    assert _value("funnelhouse_state_memory_bytes", query="t_query") == 5_120
    assert _value("funnelhouse_rows_dropped_by_watermark_total", query="t_query") == 6


def test_the_watermark_and_its_lag_behind_the_wall_clock():
    watermark = datetime.utcnow().replace(microsecond=0) - timedelta(minutes=10)  # naive UTC
    metrics.set_watermark("t_layer", watermark)
    assert _value("funnelhouse_watermark_timestamp_seconds", query="t_layer") == (
        watermark - datetime(1970, 1, 1)).total_seconds()
    lag = _value("funnelhouse_watermark_lag_seconds", query="t_layer")
    assert 600 <= lag < 600 + 60, lag
    assert time.time() - _value("funnelhouse_watermark_timestamp_seconds", query="t_layer") >= 600


def _exported() -> set[str]:
    """Sample names the registry serves: a counter ``x`` is served as ``x_total``."""
    names = set()
    for family in metrics.REGISTRY.collect():
        names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names


def test_every_grafana_panel_queries_metrics_the_exporter_exports():
    dashboard = json.loads(DASHBOARD.read_text())
    exported = _exported()
    assert all(n.startswith("funnelhouse_") for n in exported)
    used = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            named = set(re.findall(r"\bfunnelhouse_[a-z_]+", target["expr"]))
            assert named, (panel["title"], target["expr"])
            assert named <= exported, (panel["title"], named - exported)
            used |= named
    # The panels cover the funnel, conversion, throughput, latency, watermark, fraud,
    # quarantine and delivery.
    for name in ("funnelhouse_window_sessions_reached", "funnelhouse_window_conversion",
                 "funnelhouse_input_rows_total", "funnelhouse_batch_duration_seconds",
                 "funnelhouse_watermark_lag_seconds", "funnelhouse_fraud_flags_total",
                 "funnelhouse_quarantine_rows_total", "funnelhouse_notifications_total"):
        assert name in used, name


@pytest.fixture
def pushgateway(tmp_path):
    """Debian's Prometheus Pushgateway on a free port of 127.0.0.1."""
    exe = shutil.which("prometheus-pushgateway")
    if exe is None:
        pytest.fail("prometheus-pushgateway is not installed: run scripts/debian-packages.sh "
                    "(make test does)")
    port = free_port()
    with (tmp_path / "pushgateway.log").open("w") as log:
        proc = subprocess.Popen([exe, f"--web.listen-address=127.0.0.1:{port}"], stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)


def _pushed(gateway: str, name: str, **labels) -> float | None:
    with urllib.request.urlopen(f"http://{gateway}/metrics") as response:
        for family in text_string_to_metric_families(response.read().decode()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
    return None


@pytest.mark.slow  # streams a lake of its own
def test_an_available_now_run_pushes_its_final_metrics(spark, lake_settings, pushgateway):
    s = lake_settings
    copy_sample(s.input, slice(0, 2))
    before = _value("funnelhouse_rows_committed_total", table="silver/events") or 0
    result = CliRunner().invoke(app, ["run", "--available-now", "--input", s.input, "--lake", s.lake],
                                env={"FUNNELHOUSE__METRICS__PUSHGATEWAY": pushgateway})
    assert result.exit_code == 0, result.output
    silver = read(spark, s, "silver/events").count()
    after = _value("funnelhouse_rows_committed_total", table="silver/events")
    assert after - before == silver > 0
    assert _pushed(pushgateway, "funnelhouse_rows_committed_total", job="funnelhouse",
                   table="silver/events") == after
    assert _pushed(pushgateway, "funnelhouse_last_batch_id", job="funnelhouse", query="pipeline") is not None
