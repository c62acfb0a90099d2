"""``make bench`` throughput: the pipeline on 1M events beside plain Spark in the same JVM."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipelines.bench.common import bench_settings, console, cpu_during, jvm_pid, rich_table, timed
from pipelines.config import REPO_ROOT
from pipelines.contract import RAW_EVENT_SCHEMA
from pipelines.jobs.run import run_available_now
from pipelines.streams import QUERIES

# -- throughput -------------------------------------------------------------------------------

def baseline(spark: SparkSession, landing: Path, out: Path) -> float:
    """Batch read.text + from_json -> Parquet: the floor a JSON pipeline here starts from."""
    df = spark.read.text(str(landing)).select(F.from_json("value", RAW_EVENT_SCHEMA).alias("e"))
    return timed(lambda: df.select("e.*").write.mode("overwrite").parquet(str(out)))


def throughput(spark: SparkSession, root: Path, landing: Path, lines: int) -> dict:
    """The baseline and the pipeline, each warmed the same way: one untimed run over the same
    lines first (the pipeline's into a lake of its own), so neither is timed while the JIT
    still compiles code the other has had compiled. The pipeline's first run over the lines,
    after a warm-up on the sample only (how this bench timed it before), is reported beside:
    it is what a job that has just started pays."""
    pids = {"JVM": jvm_pid(spark), "Python": os.getpid()}
    baseline(spark, landing, root / "base")  # warm-up: JIT, file listing
    base, base_cpu = cpu_during(pids, lambda: baseline(spark, landing, root / "base"))
    warm = root / "warm"  # every code path once, on the sample
    shutil.rmtree(warm, ignore_errors=True)
    run_available_now(spark, bench_settings(warm / "lake", REPO_ROOT / "data" / "sample" / "events"))
    once = bench_settings(root / "lake-first", landing)  # a path of its own (Bench quirks)
    shutil.rmtree(once.lake, ignore_errors=True)
    first = timed(lambda: run_available_now(spark, once))  # the warm-up over the same lines
    shutil.rmtree(once.lake, ignore_errors=True)
    s = bench_settings(root / "lake", landing)
    shutil.rmtree(s.lake, ignore_errors=True)
    layers, cpu = {}, {}
    for name in QUERIES:
        layers[name], cpu[name] = cpu_during(pids, lambda name=name: run_available_now(spark, s, [name]))
    total = sum(layers.values())
    run_cpu: dict[str, float] = {}  # every query's run, summed per process and thread kind
    for used in cpu.values():
        for kind, seconds in used.items():
            run_cpu[kind] = run_cpu.get(kind, 0.0) + seconds
    rows = [["baseline: read.text + from_json -> parquet", base, lines / base, "100%"]]
    rows += [["pipeline: first run over these lines (after the sample)", first, lines / first,
              f"{base / first:.0%}"]]
    rows += [[f"{n} query", t, lines / t, ""] for n, t in layers.items()]
    rows += [["pipeline: all queries, end to end", total, lines / total, f"{base / total:.0%}"]]
    console.print(rich_table(f"throughput: {lines:,} lines, --available-now, warm JVM (each side's "
                             "second run over them)", ["stage", "seconds", "events/s", "of baseline"], rows))
    cores = os.cpu_count() or 1
    console.print(cpu_table(base_cpu, run_cpu, base, cores))
    return {"lines": lines, "baseline_s": base, "layers_s": layers, "total_s": total,
            "events_per_s": lines / total, "baseline_events_per_s": lines / base,
            "first_run_s": first, "first_run_events_per_s": lines / first,
            "cpu_s": {"baseline": base_cpu, "pipeline": run_cpu}, "cores": cores,
            "floor_s": sum(run_cpu.values()) / cores}


def cpu_table(base: dict[str, float], run: dict[str, float], base_s: float, cores: int):
    """Where the core-seconds of the timed runs went, and the wall they bound: a run can take
    no less than its CPU time over the cores, however well its parts overlap."""
    rows = [[k, base.get(k, 0.0), run.get(k, 0.0)] for k in sorted(set(base) | set(run))
            if base.get(k, 0.0) >= 0.05 or run.get(k, 0.0) >= 0.05]
    total = sum(run.values())
    rows += [["all threads", sum(base.values()), total],
             [f"the least wall time this CPU allows on {cores} cores", sum(base.values()) / cores,
              total / cores],
             ["  as a share of the baseline's wall", "", f"{base_s / (total / cores):.0%}"]]
    return rich_table("throughput: core-seconds (user + system) by process and thread",
                      ["process: threads", "baseline", "pipeline"], rows)
