"""The console script: help, report and summary on the sample lake, and a continuous run
that picks up new files and stops cleanly on SIGTERM."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import SAMPLE, copy_sample, read, sample_addresses
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.config import REPO_ROOT

TRUTH = json.loads((SAMPLE / "ground_truth.json").read_text())
GRAFANA = REPO_ROOT / "conf" / "grafana" / "dashboards" / "funnelhouse.json"
runner = CliRunner()


def test_help_lists_the_commands():
    out = runner.invoke(app, ["--help"]).output
    for command in ("generate", "run", "summary", "report"):
        assert command in out


def test_report_shows_funnel_alerts_and_budget(spark, sample_lake):
    result = runner.invoke(app, ["report", "--lake", sample_lake.lake], terminal_width=160)
    assert result.exit_code == 0, result.output
    assert "cmp_07!" in result.output and "cmp_13!" in result.output
    assert "click_to_cart" in result.output and "click_through" in result.output
    assert "budget rule" in result.output


def test_summary_counts_rows_and_quarantine_reasons(spark, sample_lake):
    result = runner.invoke(app, ["summary", "--lake", sample_lake.lake], terminal_width=160)
    assert result.exit_code == 0, result.output
    assert f"{TRUTH['valid_unique_events']:,}" in result.output
    for reason, n in TRUTH["malformed_by_reason"].items():
        assert re.search(rf"{reason}\s*│\s*{n}\s*│", result.output), reason
    assert "Funnel per campaign" in result.output
    # Conservation, every term counted on its own and each the generator's number.
    assert (f"conservation: bronze {TRUTH['lines']:,} = silver {TRUTH['valid_unique_events']:,} + quarantine "
            f"{TRUTH['malformed_lines']:,} + redeliveries removed {TRUTH['duplicate_deliveries']:,}: holds"
            ) in result.output


def test_unknown_config_key_exits_2_naming_it(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stream:\n  trigger: 5s\n")
    result = runner.invoke(app, ["run", "--config", str(bad), "--available-now"])
    assert result.exit_code == 2
    assert "stream.trigger: unknown key" in result.output


@pytest.mark.slow
def test_continuous_run_is_scraped_by_prometheus_picks_up_files_and_stops_on_sigterm(
        spark, tmp_path: Path, prometheus):
    """One streaming process, as an operator runs it: files land before and while it runs,
    a real Prometheus scrapes its /metrics, and SIGTERM stops it between micro-batches."""
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    landing.mkdir()
    conf = tmp_path / "fast.yaml"
    # A short run: C1-only JIT warms up faster, as in conf/demo.yaml.
    conf.write_text("stream:\n  trigger_interval: 2 seconds\n"
                    "spark:\n  jvm_options: -XX:TieredStopAtLevel=1\n")
    copy_sample(landing, slice(0, 4))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "run", "--config", str(conf),
         "--input", str(landing), "--lake", str(lake)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "FUNNELHOUSE__METRICS__PORT": str(prometheus.target)})
    try:
        settings_lake = type("S", (), {"table": lambda self, t: f"{lake}/{t}"})()
        _wait(lambda: _count(spark, settings_lake, "silver/events") > 0, proc)
        copy_sample(landing, slice(4, None))  # files landing while the stream runs
        _wait(lambda: _count(spark, settings_lake, "silver/events") == TRUTH["valid_unique_events"]
              and _count(spark, settings_lake, "gold/session_funnel") > 0, proc)

        # Through Prometheus's query API: what the tables hold and the ground truth says.
        rows = {"silver/events": TRUTH["valid_unique_events"], "silver/quarantine": TRUTH["malformed_lines"],
                "bronze/events": TRUTH["lines"]}
        _wait(lambda: all(prometheus.value(f'funnelhouse_rows_committed_total{{table="{t}"}}') == n
                          for t, n in rows.items()), proc)
        # Every line the query read is in silver, in the quarantine, or a removed duplicate.
        # (The listener counts a batch after its body returned: gold's part comes last.)
        read_lines = TRUTH["valid_unique_events"] + TRUTH["malformed_lines"] + TRUTH["duplicate_deliveries"]
        _wait(lambda: prometheus.value('funnelhouse_input_rows_total{query="pipeline"}') == read_lines, proc)
        for reason, n in TRUTH["malformed_by_reason"].items():
            assert prometheus.value(f'funnelhouse_quarantine_rows_total{{reason="{reason}"}}') == n, reason
        performance = read(spark, settings_lake, "gold/campaign_performance")

        def clicks_match() -> bool:
            table = {r["campaign_id"]: r["clicks"] for r in performance.collect()}
            scraped = prometheus.series("funnelhouse_campaign_clicks", "campaign_id")
            return bool(table) and scraped == table
        _wait(clicks_match, proc)
        # The batch counter moves in the query listener, after the batch that set the clicks
        # returned: a scrape may fall between the two.
        _wait(lambda: (prometheus.value('funnelhouse_batches_total{query="pipeline"}') or 0) >= 1, proc)
        assert prometheus.value('funnelhouse_watermark_lag_seconds{query="gold"}') > 0
        steps = prometheus.series("funnelhouse_window_sessions_reached", "step")
        assert set(steps) == {"ad_impression", "ad_click", "landing_page_view", "add_to_cart",
                              "checkout_start", "purchase"}
        for panel in json.loads(GRAFANA.read_text())["panels"]:  # Prometheus parses and runs each
            for target in panel["targets"]:
                prometheus.query(target["expr"])

        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    assert "stopped cleanly" in output
    assert _count(spark, settings_lake, "silver/quarantine") == TRUTH["malformed_lines"]
    # Quiet by default: our own INFO lines, nothing at INFO from a library (Python or JVM),
    # and no Python warning (the workers' stderr reaches this output too).
    info = [line for line in output.splitlines() if re.search(r"\bINFO\b", line)]
    assert info and all(" INFO pipelines." in line for line in info), info
    assert "Warning" not in output, output
    leaked = [ip for ip in sample_addresses() if ip in output]  # no raw address in the logs
    assert not leaked, leaked[:5]


def _count(spark, s, table: str) -> int:
    try:
        return read(spark, s, table).count()
    except Exception:  # not created yet
        return -1


def _wait(condition, proc, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        if condition():
            return
        time.sleep(2)
    raise AssertionError("timed out waiting for the stream")
