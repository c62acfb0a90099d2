"""``make bench`` costs: the quality suite, anomaly scoring, and peak memory."""

from __future__ import annotations

import resource
import shutil
import statistics
from pathlib import Path

from pyspark.sql import SparkSession

from pipelines.bench.common import bench_settings, console, jvm_pid, peak_gib, rich_table, timed
from pipelines.io.delta_rs import row_count
from pipelines.jobs.run import run_available_now
from pipelines.streams import QUERIES, QUERY

# -- quality ----------------------------------------------------------------------------------

def quality(spark: SparkSession, root: Path, landing: Path, rounds: int) -> dict:
    """Median silver micro-batch of two landing files (~100k events), quality on and off."""
    out: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(rounds + 1):  # the first round warms up
        for variant in out:
            s = bench_settings(root / "lake-quality", landing, stream={"max_files_per_trigger": 2},
                          quality={"enabled": variant == "on"})
            shutil.rmtree(s.lake, ignore_errors=True)
            q = QUERIES[QUERY](spark, s, True)
            q.awaitTermination()
            out[variant].append([p["durationMs"]["triggerExecution"] / 1000 for p in q.recentProgress
                                 if p["numInputRows"] >= 90_000])
    med = {v: statistics.median(t for r in runs[1:] for t in r) for v, runs in out.items()}
    over = med["on"] / med["off"] - 1
    console.print(rich_table("quality: silver micro-batch of ~100k events (median)",
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
    s = bench_settings(lake, landing)

    def run() -> float:
        for part in lake.iterdir() if lake.exists() else []:  # all but the models and the IP key
            if part.name not in ("_mlflow", "_secrets"):
                shutil.rmtree(part)
        return timed(lambda: run_available_now(spark, s))

    if not warm:
        run()
    off = run()
    trained = run_train(s)
    on = run()
    scored = row_count(str(lake / "gold" / "anomaly_scores"))
    console.print(rich_table("scoring: the silver query (silver and gold) over the same input",
                         ["champion model", "seconds", "sessions scored", "slower by"],
                         [["none", off, 0, ""], [f"version {trained.version}", on, scored,
                                                 f"{on / off - 1:+.0%}"]]))
    return {"off_s": off, "on_s": on, "sessions_scored": scored, "overhead": on / off - 1,
            "trained_on_sessions": trained.sessions}


# -- memory, main -----------------------------------------------------------------------------

def memory(spark: SparkSession) -> dict:
    jvm = peak_gib(jvm_pid(spark))
    py = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    console.print(f"peak memory: driver JVM {jvm:.2f} GiB, Python driver {py:.2f} GiB")
    return {"jvm_peak_gib": jvm, "python_peak_gib": py}
