"""``make bench``: throughput of each stage in events/s on generated data, beside a baseline
measured in the same run (plain batch ``read.text`` + ``from_json`` -> Parquet, the figure
FACTS.md gives as ~158,000 events/s on this machine)."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

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
from pipelines.streams import CHECKPOINTS

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
