"""``make bench``: throughput of each stage in events/s on generated data, beside a baseline
measured in the same run (plain batch ``read.text`` + ``from_json`` -> Parquet, the figure
FACTS.md gives as ~158,000 events/s on this machine)."""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from delta.tables import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from rich.console import Console
from rich.table import Table

from pipelines import tables
from pipelines.config import Settings, load_settings
from pipelines.contract import RAW_EVENT_SCHEMA
from pipelines.generate import Profile, generate
from pipelines.jobs.run import run_available_now
from pipelines.session import build_spark
from pipelines.streams import CHECKPOINTS, LAYERS

_OUTPUTS = {
    "bronze": [tables.BRONZE_EVENTS.name],
    "silver": [tables.SILVER_EVENTS.name, tables.SILVER_QUARANTINE.name],
    "gold": [t.name for t in tables.GOLD],
    "fraud": [tables.FRAUD_FLAGS.name],
}
# What a re-timed layer must forget: its checkpoint and the tables it writes.
RESET = {layer: [f"_checkpoints/{CHECKPOINTS[layer]}", *out] for layer, out in _OUTPUTS.items()}


def _timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def baseline(spark: SparkSession, landing: Path, out: Path) -> float:
    """Batch read.text + from_json -> Parquet: the floor a JSON pipeline here starts from."""
    df = spark.read.text(str(landing)).select(F.from_json("value", RAW_EVENT_SCHEMA).alias("e"))
    return _timed(lambda: df.select("e.*").write.mode("overwrite").parquet(str(out)))


def silver_batches(spark: SparkSession, s: Settings) -> list[tuple[int, float]]:
    """Run the silver layer from scratch; (events, seconds) of each micro-batch after the first
    (query start, GX context and JIT land in the first)."""
    for path in RESET["silver"] + ["quality"]:
        shutil.rmtree(Path(s.lake, path), ignore_errors=True)
    query = LAYERS["silver"](spark, s, True)
    query.awaitTermination()
    return [(p.numInputRows, p.durationMs["triggerExecution"] / 1000)
            for p in query.recentProgress[1:] if p.numInputRows]


def quality_overhead(spark: SparkSession, s: Settings, rounds: int) -> Table:
    """Per-batch silver time with the GX suite off, on, and on a 10% sample.

    Bronze is written ``stream.max_files_per_trigger`` landing files (50k events each) per
    commit and silver reads one commit per batch, so each timed batch holds that many events
    (a smaller last one is left out). The
    figure is the median over the batches of every round; variants alternate within a round."""
    shutil.rmtree(s.lake, ignore_errors=True)
    run_available_now(spark, s, ["bronze"])
    commits = (DeltaTable.forPath(spark, s.table(tables.BRONZE_EVENTS.name)).history()
               .where("operation = 'STREAMING UPDATE'")
               .select(F.expr("operationMetrics['numAddedFiles']").cast("int").alias("files"),
                       F.expr("operationMetrics['numOutputRows']").cast("long").alias("rows"))
               .orderBy(F.desc("rows")).first())
    s = s.model_copy(update={"stream": s.stream.model_copy(update={"max_files_per_trigger": commits.files})})
    variants = {"quality off (baseline)": {"enabled": False}, "quality on": {"enabled": True},
                "quality on, sample_fraction 0.1": {"enabled": True, "sample_fraction": 0.1}}
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    silver_batches(spark, s)  # warm-up: JIT, Python workers
    for _ in range(rounds):
        for name, q in variants.items():
            quality = s.quality.model_copy(update=q)
            seconds[name] += [t for n, t in silver_batches(spark, s.model_copy(update={"quality": quality}))
                              if n == commits.rows]
    base = statistics.median(seconds["quality off (baseline)"])
    table = Table(title=f"silver micro-batches of {commits.rows:,} events, {rounds} round(s): "
                        "median seconds per batch")
    for col in ("variant", "batches", "s/batch", "events/s", "overhead"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for name, values in seconds.items():
        median = statistics.median(values)
        table.add_row(name, str(len(values)), f"{median:.2f}", f"{commits.rows / median:,.0f}",
                      "" if name.endswith("(baseline)") else f"{(median / base - 1) * 100:+.0f}%")
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--files-per-trigger", type=int, default=None,
                        help="landing files (50k lines each) per micro-batch; default: all")
    parser.add_argument("--dir", type=Path, default=Path("data/bench"))
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--layers", default="bronze,silver,gold,fraud",
                        help="comma-separated stream layers to time, in order")
    parser.add_argument("--keep-lake", action="store_true",
                        help="reuse the lake of the last run (time later layers alone)")
    parser.add_argument("--warm", action="store_true",
                        help="run each timed step once untimed first (JIT, Python workers, caches)")
    parser.add_argument("--fraud-buckets", type=int, default=None,
                        help="state groups of the fraud processor (a huge number ~ one per key)")
    parser.add_argument("--quality", action="store_true",
                        help="instead: the GX suite's overhead per silver micro-batch of ~100k events")
    parser.add_argument("--rounds", type=int, default=2, help="with --quality: off/on/sample rounds")
    args = parser.parse_args(argv)

    landing = args.dir / f"landing-{args.events}"
    truth_file = landing.with_name(landing.name + ".truth.json")
    if not truth_file.exists():
        shutil.rmtree(landing, ignore_errors=True)
        generate(Profile.large(args.events), landing, truth_file)
    lines = json.loads(truth_file.read_text())["lines"]

    overrides: dict = {"lake": args.dir / "lake", "input": landing,
                       "stream": {"max_files_per_trigger": args.files_per_trigger}}
    if args.fraud_buckets:
        overrides["fraud"] = {"buckets": args.fraud_buckets}
    s: Settings = load_settings(overrides=overrides)
    if args.quality:  # by default two landing files (2 x 50k events) per bronze commit
        s = load_settings(overrides={**overrides, "lake": args.dir / "lake-quality",
                                     "stream": {"max_files_per_trigger": args.files_per_trigger or 2}})
        spark = build_spark(s.spark)
        Console().print(quality_overhead(spark, s, args.rounds))
        spark.stop()
        return
    layers = args.layers.split(",")
    if not args.keep_lake:
        shutil.rmtree(s.lake, ignore_errors=True)
    for layer in layers:  # a re-timed layer starts from scratch: its checkpoint and outputs
        for path in RESET[layer]:
            shutil.rmtree(Path(s.lake, path), ignore_errors=True)
    spark = build_spark(s.spark)
    if args.warm:
        baseline(spark, landing, args.dir / "base")
    results = {"baseline: read.text + from_json -> parquet": baseline(spark, landing, args.dir / "base")}
    for layer in layers:
        if args.warm:
            run_available_now(spark, s, [layer])
            for path in RESET[layer]:
                shutil.rmtree(Path(s.lake, path), ignore_errors=True)
        seconds = _timed(lambda layer=layer: run_available_now(spark, s, [layer]))
        results[f"{layer} stream (availableNow)"] = seconds

    table = Table(title=f"{lines:,} input lines, {spark.sparkContext.master}, "
                        f"files per trigger: {args.files_per_trigger or 'all'}, "
                        f"{'warm' if args.warm else 'cold'} JVM")
    for col in ("stage", "seconds", "events/s"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for stage, seconds in results.items():
        table.add_row(stage, f"{seconds:.1f}", f"{lines / seconds:,.0f}")
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps({k: {"seconds": v, "events_per_s": lines / v}
                                         for k, v in results.items()}, indent=1))
    spark.stop()


if __name__ == "__main__":
    main()
