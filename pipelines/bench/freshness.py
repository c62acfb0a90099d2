"""``make bench`` freshness: arrival -> visible at a fixed rate, and drop-off alert lag."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pyspark.sql import SparkSession

from pipelines.bench.common import bench_settings, console, rich_table
from pipelines.config import Settings
from pipelines.jobs.run import run_continuously

# -- freshness --------------------------------------------------------------------------------

def commits(table: Path) -> list[tuple[float, list[dict]]]:
    """(commit time in s, the ``add`` actions) of each commit in a Delta table's log."""
    out = []
    for f in sorted((table / "_delta_log").glob("*.json")):
        when, adds = None, []
        for line in f.read_text().splitlines():
            action = json.loads(line)
            if "commitInfo" in action:
                when = action["commitInfo"]["timestamp"] / 1000
            if "add" in action:
                adds.append(action["add"])
        out.append((when or f.stat().st_mtime, adds))
    return out


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def visible_delays(table: Path, column: str, arrivals: np.ndarray) -> np.ndarray:
    """For each arrival time, the delay until the first commit whose data reaches it: the
    table's frontier (the largest ``column``, from the files' statistics) at or after it.
    Arrivals never made visible get ``inf``."""
    times, frontier, top = [], [], -np.inf
    for when, adds in commits(table):
        for add in adds:
            stats = json.loads(add.get("stats") or "{}")
            if column in stats.get("maxValues", {}):
                top = max(top, _ts(stats["maxValues"][column]))
        times.append(when)
        frontier.append(top)
    times_a, frontier_a = np.array(times), np.array(frontier)
    idx = np.searchsorted(frontier_a, arrivals - 0.001, side="left")  # event_time is in ms
    out = np.full(len(arrivals), np.inf)
    seen = idx < len(times_a)
    out[seen] = times_a[idx[seen]] - arrivals[seen]
    return out


def freshness(spark: SparkSession, root: Path, rate: int, seconds: float, source: str,
              alerts: bool, kafka_servers: str) -> dict:
    """Run the job continuously under the feeder; delays per table, batch durations."""
    run = root / "fresh"
    shutil.rmtree(run, ignore_errors=True)
    (run / "landing").mkdir(parents=True)
    # A long-running job on a landing folder moves what it has read out of it: the file source
    # lists the whole folder every micro-batch (docs/production.md, "The landing folder").
    overrides: dict = {"source": source, "stream": {"clean_source": "archive"}}
    if source == "kafka":
        topic = f"bench-{int(time.time())}"
        overrides["kafka"] = {"bootstrap_servers": kafka_servers, "topic": topic,
                              "starting_offsets": "earliest"}
        from confluent_kafka.admin import AdminClient, NewTopic
        admin = AdminClient({"bootstrap.servers": kafka_servers})  # held: a freed client fails its futures
        admin.create_topics([NewTopic(topic, 2, 1)])[topic].result()
        target = f"{kafka_servers}/{topic}"
    else:
        target = str(run / "landing")
    if alerts:
        overrides |= {"funnel": {"window": "10 seconds", "dropoff_rules": [
                          {"name": "click_to_cart", "from_step": "ad_click", "to_step": "add_to_cart",
                           "min_conversion": 0.2, "min_volume": 20}]},
                      "sessions": {"gap": "5 seconds"},
                      "stream": {**overrides["stream"], "watermark_delay": "2 seconds"}}
    s = bench_settings(run / "lake", run / "landing", **overrides)
    stop = threading.Event()
    job = threading.Thread(target=run_continuously, args=(spark, s), kwargs={"stop": stop})
    job.start()
    time.sleep(15)  # the queries start and take their first (empty) batches
    warm = 20.0
    began = time.time()
    subprocess.run([sys.executable, "-m", "pipelines.feeder", source, target, str(rate), str(warm + seconds)],
                   check=True)
    ended = time.time()
    deadline = ended + 60
    gold = Path(s.lake) / "gold" / "session_funnel"
    while time.time() < deadline:  # drained: gold's frontier reached the last arrival
        if gold.exists() and np.isfinite(visible_delays(gold, "session_end", np.array([ended - 1]))[0]):
            break
        time.sleep(0.5)
    drain = time.time() - ended
    progress = {q.name: [p for p in q.recentProgress if p["numInputRows"]] for q in spark.streams.active}
    stop.set()
    job.join()

    arrivals = np.arange(began + warm, ended - 0.5, 0.01)  # uniform at the feeder's rate
    rows, out = [], {"rate": rate, "seconds": seconds, "source": source, "drain_s": drain,
                     "clean_source": s.stream.clean_source if source == "files" else None}
    for table, column in (("silver/events", "event_time"), ("gold/session_funnel", "session_end")):
        d = visible_delays(Path(s.lake) / table, column, arrivals)
        p50, p99 = (float(np.percentile(d, q)) for q in (50, 99))
        out[table] = {"p50_s": p50, "p99_s": p99, "never": int((~np.isfinite(d)).sum())}
        rows.append([table, p50, p99])
    for name, prog in progress.items():
        last = prog[-30:]
        if last:
            med = statistics.median(p["durationMs"]["triggerExecution"] for p in last) / 1000
            rows.append([f"{name} query: median batch (s), rows/batch", med,
                         statistics.median(p["numInputRows"] for p in last)])
            total_rows = sum(p["numInputRows"] for p in prog)
            busy = sum(p["durationMs"]["triggerExecution"] for p in prog) / 1000
            rows.append([f"{name} query: processed rows/s while busy, fed events/s", total_rows / busy,
                         rate])
            out[f"{name}_batch_s"] = med
            out[f"{name}_processed_rows_per_s"] = total_rows / busy
            out[f"{name}_phases_ms"] = phases = batch_phases(last)
            rows.append([f"{name} query: median ms per batch in " + ", ".join(phases), "",
                         " / ".join(f"{v:,.0f}" for v in phases.values())])
    rows.append(["drain after the feeder stopped (s)", drain, ""])
    if alerts:
        lags = alert_lags(Path(s.lake), s)
        out["alert_lag_s"] = lags
        if lags:
            rows.append(["drop-off alert after its window closed (s): p50, max",
                         float(np.percentile(lags, 50)), float(max(lags))])
        else:
            rows.append(["drop-off alerts", "none fired", ""])
    cleaned = f", read files: {s.stream.clean_source}" if source == "files" else ""
    console.print(rich_table(f"freshness: {rate:,} events/s for {seconds:.0f} s from {source}, "
                             f"continuous, trigger {s.stream.trigger_interval}{cleaned}",
                             ["arrival -> visible", "p50 s", "p99 s"], rows))
    return out


def batch_phases(progress: list[dict]) -> dict[str, float]:
    """Where a query's micro-batches spend their time, from Spark's own progress: the median
    of each ``durationMs`` phase over ``progress``, and of its state operators' update,
    removal (watermark eviction) and commit times, with the state's rows at the end."""
    phases: dict[str, float] = {}
    keys = ("latestOffset", "getBatch", "queryPlanning", "addBatch", "walCommit", "commitOffsets")
    for k in keys:
        phases[k] = statistics.median(p["durationMs"].get(k, 0) for p in progress)
    ops = [p["stateOperators"][0] for p in progress if p.get("stateOperators")]
    if ops:
        for k in ("allUpdatesTimeMs", "allRemovalsTimeMs", "commitTimeMs"):
            phases[f"state {k[:-6]}"] = statistics.median(o.get(k, 0) for o in ops)
        phases["state rows (last)"] = ops[-1].get("numRowsTotal", 0)
    return phases


def alert_lags(lake: Path, s: Settings) -> list[float]:
    """Each alert's commit time minus when its window closed: the wall time the watermark
    passed ``window_end + gap`` (event time = arrival time, so that is ``window_end + gap +
    watermark_delay``)."""
    import pyarrow.parquet as pq
    table = lake / "gold" / "alerts"
    if not table.exists():
        return []
    close = (s.sessions.gap + s.stream.watermark_delay).total_seconds()
    lags = []
    for when, adds in commits(table):
        for add in adds:
            for end in pq.read_table(table / add["path"], columns=["window_end"]).column(0).to_pylist():
                lags.append(when - (end.replace(tzinfo=UTC).timestamp() + close))
    return lags
