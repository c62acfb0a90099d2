"""``python -m pipelines.bench``: run the parts asked for, write ``bench/results/<time>.json``."""

from __future__ import annotations

import argparse
import json
import os
from datetime import UTC, datetime
from pathlib import Path

from pipelines.bench import __doc__ as ABOUT
from pipelines.bench.common import RESULTS, bench_settings, console, dataset
from pipelines.bench.costs import memory, quality, scoring
from pipelines.bench.freshness import freshness
from pipelines.bench.growth import growth
from pipelines.bench.restart import restart
from pipelines.bench.throughput import throughput
from pipelines.config import REPO_ROOT
from pipelines.session import build_spark

ALL = ("throughput", "growth", "freshness", "quality", "scoring", "restart")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipelines.bench", description=ABOUT,
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
    parser.add_argument("--restart-events", type=int, default=24_000_000,
                        help="restart: open events read back (24M: 10k ev/s, default gap and delay)")
    parser.add_argument("--restart-batches", type=int, default=10, help="restart: batches after it")
    parser.add_argument("--dir", type=Path, default=Path("data/bench"))
    args = parser.parse_args(argv)
    only = args.only.split(",")

    root = args.dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    spark = build_spark(bench_settings(root / "lake", root).spark)
    landing, lines, profile = dataset(root, args.events)
    results: dict = {"started": datetime.now(UTC).isoformat(timespec="seconds"),
                     "master": spark.sparkContext.master, "cores": os.cpu_count(), "args": vars(args) | {
                         "dir": str(args.dir)}}
    if "throughput" in only:
        results["throughput"] = throughput(spark, root, landing, lines)
    if "growth" in only:
        full = (root / "lake", landing) if "throughput" in only and not args.big else None
        if args.big:
            landing, lines, profile = dataset(root, 10_000_000)
        results["growth"] = growth(spark, root, full, landing, profile, lines)
    if "freshness" in only:
        results["freshness"] = freshness(spark, root, args.rate, args.seconds, args.source, args.alerts,
                                         args.kafka)
    if "quality" in only:
        results["quality"] = quality(spark, root, landing, args.rounds)
    if "scoring" in only:
        results["scoring"] = scoring(spark, root, landing, warm="throughput" in results)
    if "restart" in only:
        results["restart"] = restart(root, args.restart_events, args.restart_batches)
    results["memory"] = memory(spark)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps(results, indent=1, default=str))
    console.print(f"results: {out.relative_to(REPO_ROOT)}")
    spark.stop()


if __name__ == "__main__":
    main()
