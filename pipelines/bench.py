"""``make bench``: what the pipeline costs, beside a baseline measured in the same run.

Four measurements, each printed as a table and all written to ``bench/results/<time>.json``:

- ``throughput``: ``funnelhouse run --available-now`` (bronze, then silver with gold) on 1M
  generated events, beside plain Spark on the same files in the same JVM (``read.text`` + ``from_json``
  -> Parquet). Both run warm: the baseline once untimed, the pipeline once on the sample.
- ``growth``: the same 20k-event increment (later event times, ids of its own) on a lake
  primed empty and on the lake the throughput run left (1M events; ``--big``: 10M).
- ``freshness``: the job runs continuously while a feeder writes ``--rate`` events/s for
  ``--seconds`` (landing files every 200 ms, or Kafka records), each with ``event_time`` =
  its arrival. The delay from arrival to the commit that made it visible, read from each
  table's Delta log. ``--alerts`` shrinks the window, gap and watermark delay so drop-off
  alerts fire within the run, and measures each alert's lag behind the watermark that closed
  its window.
- ``quality``: silver micro-batches of ~100k events with the quality suite on and off.
- ``scoring``: the silver query (silver and gold) over the throughput input, without an anomaly
  model and then with a champion trained on the sessions the first run closed: what scoring costs.

Memory: the JVM's peak resident size (``VmHWM``) and the Python driver's, at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from rich.console import Console
from rich.table import Table

from pipelines.config import REPO_ROOT, Settings, load_settings
from pipelines.contract import RAW_EVENT_SCHEMA
from pipelines.generate import Profile, generate, land
from pipelines.io.delta_rs import row_count
from pipelines.jobs.run import run_available_now, run_continuously
from pipelines.session import build_spark
from pipelines.streams import QUERIES, QUERY

console = Console()
RESULTS = REPO_ROOT / "bench" / "results"


def _timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def _table(title: str, columns: list[str], rows: list[list[object]]) -> Table:
    out = Table(title=title)
    for i, col in enumerate(columns):
        out.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        out.add_row(*[f"{v:,.1f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)
                      for v in row])
    return out


def _settings(lake: Path, landing: Path, **overrides: object) -> Settings:
    return load_settings(overrides={"lake": lake, "input": landing, **overrides}, environ={})


def _dataset(root: Path, events: int) -> tuple[Path, int, Profile]:
    """The generated input of ``events`` (made once, reused by later runs)."""
    profile = Profile.large(events)
    landing = root / f"landing-{events}"
    truth = landing.with_name(landing.name + ".truth.json")
    if not truth.exists():
        shutil.rmtree(landing, ignore_errors=True)
        generate(profile, landing, truth)
    return landing, json.loads(truth.read_text())["lines"], profile


# -- throughput -------------------------------------------------------------------------------

def baseline(spark: SparkSession, landing: Path, out: Path) -> float:
    """Batch read.text + from_json -> Parquet: the floor a JSON pipeline here starts from."""
    df = spark.read.text(str(landing)).select(F.from_json("value", RAW_EVENT_SCHEMA).alias("e"))
    return _timed(lambda: df.select("e.*").write.mode("overwrite").parquet(str(out)))


def throughput(spark: SparkSession, root: Path, landing: Path, lines: int) -> dict:
    baseline(spark, landing, root / "base")  # warm-up: JIT, file listing
    base = baseline(spark, landing, root / "base")
    warm = root / "warm"  # the pipeline's own warm-up: every code path, on the sample
    shutil.rmtree(warm, ignore_errors=True)
    run_available_now(spark, _settings(warm / "lake", REPO_ROOT / "data" / "sample" / "events"))
    s = _settings(root / "lake", landing)
    shutil.rmtree(s.lake, ignore_errors=True)
    layers = {}
    for name in QUERIES:
        layers[name] = _timed(lambda name=name: run_available_now(spark, s, [name]))
    total = sum(layers.values())
    rows = [["baseline: read.text + from_json -> parquet", base, lines / base, "100%"]]
    rows += [[f"{n} query", t, lines / t, ""] for n, t in layers.items()]
    rows += [["pipeline: all queries, end to end", total, lines / total, f"{base / total:.0%}"]]
    console.print(_table(f"throughput: {lines:,} lines, --available-now, warm JVM",
                         ["stage", "seconds", "events/s", "of baseline"], rows))
    return {"lines": lines, "baseline_s": base, "layers_s": layers, "total_s": total,
            "events_per_s": lines / total, "baseline_events_per_s": lines / base}


# -- growth -----------------------------------------------------------------------------------

def increment(root: Path, after: Profile) -> Path:
    """20k events an hour after ``after``'s last, with ids of their own: one landing file."""
    out = root / "increment"
    if not out.exists():
        start = after.start + timedelta(hours=after.hours + 1)
        generate(Profile(events=20_000, start=start, id_prefix="inc-", seed=7, lines_per_file=50_000,
                         bots_per_rule=1), out, root / "increment.truth.json", quiet=True)
    return out


def _silver_rows(lake: Path) -> int:
    return row_count(str(lake / "silver" / "events"))


def tick(root: Path, after: Profile) -> Path:
    """One page view a second before the increment's first event: landed and run after
    priming, it moves the watermark past everything the primed lake holds open."""
    out = root / "tick" / "tick.jsonl"
    at = after.start + timedelta(hours=after.hours + 1) - timedelta(seconds=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"event_id": "tick-1", "event_type": "landing_page_view",
                               "event_time": at.strftime("%Y-%m-%dT%H:%M:%S.000Z"), "user_id": "u-tick",
                               "tracking_id": "t-tick", "ip": "10.0.0.1", "user_agent": "bench"}) + "\n")
    return out


def growth(spark: SparkSession, root: Path, full: tuple[Path, Path] | None, landing: Path,
           profile: Profile, lines: int) -> dict:
    """The increment's cost on a lake primed empty and on one holding ``landing`` (``full``:
    that lake and its input, when the throughput run just built it). Each is timed twice, on
    a fresh copy of the primed lake, with the increment landed beside the primed input; each
    run must add exactly the increment's events to silver.

    The increment comes an hour after the primed events, so on the full lake it also closes
    everything the lake held open (sessions, bursts, pending clicks): work on the open state,
    which the issue allows. So each lake is timed twice over: as primed ("open state"), and
    after a one-event tick closed what it held open ("closed first"): that pair is what
    history alone costs."""
    inc = sorted(increment(root, profile).glob("*.jsonl"))
    expected = json.loads((root / "increment.truth.json").read_text())["valid_unique_events"]
    empty_input = root / "growth-landing"
    shutil.rmtree(empty_input, ignore_errors=True)
    empty_input.mkdir()
    lakes = {"empty": None, f"{lines:,} events": full}
    out: dict[str, dict[str, float]] = {}
    for n, (name, primed) in enumerate(lakes.items()):
        if primed is None:  # prime: tables, checkpoints, state, history
            primed = (root / f"growth-primed-{n}", empty_input if name == "empty" else landing)
            shutil.rmtree(primed[0], ignore_errors=True)
            run_available_now(spark, _settings(*primed))
        closed = root / f"growth-closed-{n}"  # the same, after the tick
        shutil.rmtree(closed, ignore_errors=True)
        shutil.copytree(primed[0], closed)
        landed = land([tick(root, profile)], primed[1], prefix="tick-")
        try:
            run_available_now(spark, _settings(closed, primed[1]))
        finally:
            for f in landed:
                f.unlink()
        for label, lake in ((name, primed[0]), (f"{name}, closed first", closed)):
            out[label] = _increment_runs(spark, root, f"{n}", lake, primed[1], inc, expected)
    def ratio(label: str) -> float:  # against the empty lake primed the same way
        closed = ", closed first" if label.endswith(", closed first") else ""
        return out[label]["total"] / out[f"empty{closed}"]["total"]
    console.print(_table(f"growth: the same {expected:,}-event increment, --available-now (median of 2)",
                         ["lake before", *QUERIES, "total s", "ratio"],
                         [[k, *v.values(), f"{ratio(k):.2f}x"] for k, v in out.items()]))
    big = f"{lines:,} events"
    return {"seconds": out, "ratio": ratio(big), "ratio_closed_first": ratio(f"{big}, closed first"),
            "increment_events": expected}


def _increment_runs(spark: SparkSession, root: Path, tag: str, lake: Path, source: Path, inc: list[Path],
                    expected: int) -> dict[str, float]:
    """The increment, run twice on fresh copies of ``lake`` reading ``source``: median seconds."""
    runs = []
    for i in range(2):  # each on its own copy (a reused path confuses Delta's log cache)
        s = _settings(root / f"growth-run-{tag}-{i}", source)
        shutil.rmtree(s.lake, ignore_errors=True)
        shutil.copytree(lake, s.lake)
        before = _silver_rows(Path(s.lake))
        landed = land(inc, source, prefix="increment-")  # not the name of an input file
        try:
            runs.append({q: _timed(lambda s=s, q=q: run_available_now(spark, s, [q])) for q in QUERIES})
        finally:
            for f in landed:
                f.unlink()
        added = _silver_rows(Path(s.lake)) - before
        if added != expected:
            raise RuntimeError(f"the increment added {added} silver rows, not {expected}")
        shutil.rmtree(s.lake, ignore_errors=True)
    out = {q: statistics.median(r[q] for r in runs) for q in QUERIES}
    out["total"] = statistics.median(sum(r.values()) for r in runs)
    return out


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
    overrides: dict = {"source": source}
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
                      "sessions": {"gap": "5 seconds"}, "stream": {"watermark_delay": "2 seconds"}}
    s = _settings(run / "lake", run / "landing", **overrides)
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
    rows, out = [], {"rate": rate, "seconds": seconds, "source": source, "drain_s": drain}
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
    console.print(_table(f"freshness: {rate:,} events/s for {seconds:.0f} s from {source}, "
                         f"continuous, trigger {s.stream.trigger_interval}",
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


# -- quality ----------------------------------------------------------------------------------

def quality(spark: SparkSession, root: Path, landing: Path, rounds: int) -> dict:
    """Median silver micro-batch of two landing files (~100k events), quality on and off."""
    out: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(rounds + 1):  # the first round warms up
        for variant in out:
            s = _settings(root / "lake-quality", landing, stream={"max_files_per_trigger": 2},
                          quality={"enabled": variant == "on"})
            shutil.rmtree(s.lake, ignore_errors=True)
            q = QUERIES[QUERY](spark, s, True)
            q.awaitTermination()
            out[variant].append([p["durationMs"]["triggerExecution"] / 1000 for p in q.recentProgress
                                 if p["numInputRows"] >= 90_000])
    med = {v: statistics.median(t for r in runs[1:] for t in r) for v, runs in out.items()}
    over = med["on"] / med["off"] - 1
    console.print(_table("quality: silver micro-batch of ~100k events (median)",
                         ["quality suite", "s/batch", "overhead"],
                         [["off", med["off"], ""], ["on (every row)", med["on"], f"{over:+.0%}"]]))
    return {"off_s": med["off"], "on_s": med["on"], "overhead": over}


# -- scoring ---------------------------------------------------------------------------------

def scoring(spark: SparkSession, root: Path, landing: Path, warm: bool) -> dict:
    """The silver query (which computes gold) over ``landing`` into an empty lake, twice: with
    no model registered, then with a champion trained on the sessions the first run closed.
    Unless the JVM is ``warm`` (the throughput run came first), one untimed run warms it."""
    from pipelines.jobs.train import run_train

    lake = root / "lake-scoring"
    shutil.rmtree(lake, ignore_errors=True)
    s = _settings(lake, landing)

    def run() -> float:
        for part in lake.iterdir() if lake.exists() else []:  # all but the models and the IP key
            if part.name not in ("_mlflow", "_secrets"):
                shutil.rmtree(part)
        return _timed(lambda: run_available_now(spark, s))

    if not warm:
        run()
    off = run()
    trained = run_train(s)
    on = run()
    scored = row_count(str(lake / "gold" / "anomaly_scores"))
    console.print(_table("scoring: the silver query (silver and gold) over the same input",
                         ["champion model", "seconds", "sessions scored", "slower by"],
                         [["none", off, 0, ""], [f"version {trained.version}", on, scored,
                                                 f"{on / off - 1:+.0%}"]]))
    return {"off_s": off, "on_s": on, "sessions_scored": scored, "overhead": on / off - 1,
            "trained_on_sessions": trained.sessions}


# -- memory, main -----------------------------------------------------------------------------

def memory(spark: SparkSession) -> dict:
    pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
    status = Path(f"/proc/{pid}/status").read_text()
    jvm_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
    py_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    console.print(f"peak memory: driver JVM {jvm_kb / 2**20:.2f} GiB, Python driver {py_kb / 2**20:.2f} GiB")
    return {"jvm_peak_gib": jvm_kb / 2**20, "python_peak_gib": py_kb / 2**20}


ALL = ("throughput", "growth", "freshness", "quality", "scoring")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(ALL), help=f"comma-separated, from {', '.join(ALL)}")
    parser.add_argument("--events", type=int, default=1_000_000, help="throughput input (generated once)")
    parser.add_argument("--big", action="store_true", help="growth on a 10M-event lake instead of the 1M one")
    parser.add_argument("--rate", type=int, default=10_000, help="freshness: events/s fed")
    parser.add_argument("--seconds", type=float, default=60, help="freshness: how long, after a 20 s warm-up")
    parser.add_argument("--source", choices=("files", "kafka"), default="files", help="freshness: fed how")
    parser.add_argument("--kafka", default="127.0.0.1:9092", help="freshness --source kafka: the broker")
    parser.add_argument("--alerts", action="store_true",
                        help="freshness: 10 s windows, 5 s gap, 2 s watermark delay; time the alerts")
    parser.add_argument("--rounds", type=int, default=2, help="quality: timed rounds")
    parser.add_argument("--dir", type=Path, default=Path("data/bench"))
    args = parser.parse_args(argv)
    only = args.only.split(",")

    root = args.dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    spark = build_spark(_settings(root / "lake", root).spark)
    landing, lines, profile = _dataset(root, args.events)
    results: dict = {"started": datetime.now(UTC).isoformat(timespec="seconds"),
                     "master": spark.sparkContext.master, "cores": os.cpu_count(), "args": vars(args) | {
                         "dir": str(args.dir)}}
    if "throughput" in only:
        results["throughput"] = throughput(spark, root, landing, lines)
    if "growth" in only:
        full = (root / "lake", landing) if "throughput" in only and not args.big else None
        if args.big:
            landing, lines, profile = _dataset(root, 10_000_000)
        results["growth"] = growth(spark, root, full, landing, profile, lines)
    if "freshness" in only:
        results["freshness"] = freshness(spark, root, args.rate, args.seconds, args.source, args.alerts,
                                         args.kafka)
    if "quality" in only:
        results["quality"] = quality(spark, root, landing, args.rounds)
    if "scoring" in only:
        results["scoring"] = scoring(spark, root, landing, warm="throughput" in results)
    results["memory"] = memory(spark)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps(results, indent=1, default=str))
    console.print(f"results: {out.relative_to(REPO_ROOT)}")
    spark.stop()


if __name__ == "__main__":
    main()
