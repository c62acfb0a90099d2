"""``make bench`` growth: the same increment on a lake primed empty and on a full one."""

from __future__ import annotations

import json
import shutil
import statistics
from datetime import timedelta
from pathlib import Path

from pyspark.sql import SparkSession

from pipelines.bench.common import bench_settings, console, rich_table, timed
from pipelines.generate import Profile, generate, land
from pipelines.io.delta_rs import read, row_count
from pipelines.jobs.run import run_available_now
from pipelines.streams import QUERIES

# -- growth -----------------------------------------------------------------------------------

def increment(root: Path, after: Profile) -> tuple[Path, Path]:
    """20k events an hour after ``after``'s last, with ids of their own: one landing file,
    and its ground truth. One per primed input: an increment timed against the 1M input's
    hours would be late on the 10M lake (which runs ten times longer), and gold would drop it.
    (Until ``44f8e76`` there was one, made after the 1M input, so ``--big`` timed that.)"""
    out = root / f"increment-after-{after.events}"
    truth = out.with_name(out.name + ".truth.json")
    if not truth.exists():
        shutil.rmtree(out, ignore_errors=True)
        start = after.start + timedelta(hours=after.hours + 1)
        generate(Profile(events=20_000, start=start, id_prefix="inc-", seed=7, lines_per_file=50_000,
                         bots_per_rule=1), out, truth, quiet=True)
    return out, truth


def _silver_rows(lake: Path) -> tuple[int, int]:
    """Silver's rows, and how many of them are marked late."""
    path = str(lake / "silver" / "events")
    return row_count(path), read(path, [("late", "=", True)], ["late"]).num_rows


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
    history alone costs. Each run starts the job, so its first micro-batch also pays for
    what a start defers (the ledger and the session tiers rebuilt, the tables loaded); a third
    pair lands the tick and the increment together, one file per micro-batch, and times the
    increment's micro-batch after the tick's ("in a running job"): history alone, at a
    micro-batch of a job that is already running."""
    made, truth = increment(root, profile)
    inc = sorted(made.glob("*.jsonl"))
    made_as = json.loads(truth.read_text())
    expected = made_as["valid_unique_events"]
    empty_input = root / "growth-landing"
    shutil.rmtree(empty_input, ignore_errors=True)
    empty_input.mkdir()
    lakes = {"empty": None, f"{lines:,} events": full}
    out: dict[str, dict[str, float]] = {}
    running: dict[str, float] = {}  # the increment's micro-batch, after the tick's in the same run
    for n, (name, primed) in enumerate(lakes.items()):
        if primed is None:  # prime: tables, checkpoints, state, history
            primed = (root / f"growth-primed-{n}", empty_input if name == "empty" else landing)
            shutil.rmtree(primed[0], ignore_errors=True)
            run_available_now(spark, bench_settings(*primed))
        closed = root / f"growth-closed-{n}"  # the same, after the tick
        shutil.rmtree(closed, ignore_errors=True)
        shutil.copytree(primed[0], closed)
        landed = land([tick(root, profile)], primed[1], prefix="tick-")
        try:
            run_available_now(spark, bench_settings(closed, primed[1]))
        finally:
            for f in landed:
                f.unlink()
        for label, lake in ((name, primed[0]), (f"{name}, closed first", closed)):
            out[label] = _increment_runs(spark, root, f"{n}", lake, primed[1], inc, expected,
                                         made_as["late_events"])
        running[name] = _increment_runs(spark, root, f"{n}", primed[0], primed[1], inc, expected + 1,
                                        made_as["late_events"], first=[tick(root, profile)])["micro-batches"]
    def ratio(label: str, of: str = "total") -> float:  # against the empty lake primed the same way
        closed = ", closed first" if label.endswith(", closed first") else ""
        return out[label][of] / out[f"empty{closed}"][of]
    console.print(rich_table(f"growth: the same {expected:,}-event increment, --available-now (median of 2)",
                         ["lake before", *QUERIES, "total s", "ratio", "its micro-batches s", "ratio"],
                         [[k, *(v[q] for q in QUERIES), v["total"], f"{ratio(k):.2f}x",
                           v["micro-batches"], f"{ratio(k, 'micro-batches'):.2f}x"] for k, v in out.items()]))
    console.print(rich_table("growth in a running job: the increment's micro-batch after the tick's "
                             "(median of 2)", ["lake before", "s", "ratio"],
                             [[k, v, f"{v / running['empty']:.2f}x"] for k, v in running.items()]))
    big, closed = f"{lines:,} events", f"{lines:,} events, closed first"
    return {"seconds": out, "ratio": ratio(big), "ratio_closed_first": ratio(closed),
            "batch_ratio": ratio(big, "micro-batches"),
            "batch_ratio_closed_first": ratio(closed, "micro-batches"),
            "running_job_s": running, "running_job_ratio": running[big] / running["empty"],
            "increment_events": expected}


def _increment_runs(spark: SparkSession, root: Path, tag: str, lake: Path, source: Path, inc: list[Path],
                    expected: int, may_be_late: int, first: list[Path] | None = None) -> dict[str, float]:
    """The increment, run twice on fresh copies of ``lake`` reading ``source``: median
    seconds, of each query's run and of the total, and (``micro-batches``) of the micro-batches
    that held it, as Spark timed them (``triggerExecution``): the run without the job's start
    (the query's start, the tables opened and checked), which a continuous job pays once.
    With ``first``, those files land before the increment, one file per micro-batch, and only
    the micro-batches after theirs are counted."""
    runs, batches = [], []
    first = first or []
    for i in range(2):  # each on its own copy (a reused path confuses Delta's log cache)
        s = bench_settings(root / f"growth-run-{tag}-{i}", source,
                           **({"stream": {"max_files_per_trigger": 1}} if first else {}))
        shutil.rmtree(s.lake, ignore_errors=True)
        shutil.copytree(lake, s.lake)
        before = _silver_rows(Path(s.lake))
        landed = land([*first, *inc], source, prefix="increment-")  # not the name of an input file
        try:
            ended, took = {}, {}
            for q in QUERIES:
                took[q] = timed(lambda s=s, q=q, ended=ended: ended.update(run_available_now(spark, s, [q])))
            runs.append(took)
            fed = [p for query in ended.values() for p in query.recentProgress if p["numInputRows"] > 0]
            batches.append(sum(p["durationMs"]["triggerExecution"] for p in fed[len(first):]) / 1000)
        finally:
            for f in landed:
                f.unlink()
        after = _silver_rows(Path(s.lake))
        added, late = after[0] - before[0], after[1] - before[1]
        if added != expected or late > may_be_late:  # on time but what it was made late: gold runs
            raise RuntimeError(f"the increment added {added} silver rows, {late} late; "
                               f"expected {expected}, at most {may_be_late} late")
        shutil.rmtree(s.lake, ignore_errors=True)
    out = {q: statistics.median(r[q] for r in runs) for q in QUERIES}
    out["total"] = statistics.median(sum(r.values()) for r in runs)
    out["micro-batches"] = statistics.median(batches)
    return out
