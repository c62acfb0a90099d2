"""``funnelhouse``: the console script. Each command parses flags, loads config and calls a job."""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from pipelines.config import REPO_ROOT, ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

app = typer.Typer(help="Funnelhouse: a streaming lakehouse for ad and shop clickstreams.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
console = Console(width=max(Console().width, 132))
SAMPLE_DIR = REPO_ROOT / "data" / "sample"

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML file over conf/base.yaml")]
LakeOpt = Annotated[Path | None, typer.Option("--lake", help="lake root (default data/lake)")]
InputOpt = Annotated[Path | None, typer.Option("--input", help="landing folder of JSON-lines")]


@contextmanager
def spark_for(s: Settings) -> Iterator[SparkSession]:
    """The project's session for a command, stopped when the command ends if the command
    started it (a session that was already running, e.g. a notebook's, is left alone)."""
    from pyspark.sql import SparkSession

    from pipelines.session import build_spark

    owned = SparkSession.getActiveSession() is None
    spark = build_spark(s.spark)
    try:
        yield spark
    finally:
        if owned:
            spark.stop()


def preflight(s: Settings) -> None:
    """Exit 2 with one line per problem ``preflight.problems`` finds, before Spark starts."""
    from pipelines.preflight import problems

    found = problems(s)
    for problem in found:
        console.print(f"[red]{problem}[/red]", soft_wrap=True)
    if found:
        raise typer.Exit(2)


def settings(config: Path | None, **overrides: object) -> Settings:
    try:
        return load_settings(config, overrides)
    except ConfigError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from None


@app.command()
def generate(
    out: Annotated[Path | None, typer.Option(
        help="folder to write the files into [default: data/landing, or data/kafka-sent with "
             "--to-kafka]")] = None,
    events: Annotated[int, typer.Option(help="valid journey events to generate")] = 14_000,
    seed: Annotated[int, typer.Option(help="random seed")] = 42,
    truth: Annotated[Path | None, typer.Option(help="ground truth file (default <out>.truth.json)")] = None,
    sample: Annotated[bool, typer.Option("--sample", help="copy the committed sample")] = False,
    to_kafka: Annotated[str | None, typer.Option(
        "--to-kafka", metavar="BOOTSTRAP", help="also produce every line to Kafka, keyed by user_id")] = None,
    topic: Annotated[str, typer.Option(help="Kafka topic for --to-kafka")] = "events",
    violations: Annotated[int, typer.Option(
        help="add N events per kind that break a quality expectation (price, quantity, future time)")] = 0,
) -> None:
    """Write a synthetic clickstream (rotated JSON-lines files) and its ground truth; with
    --to-kafka, also send each line to a topic in file order."""
    from pipelines.generate import Profile, land
    from pipelines.generate import generate as run_generator

    out = out or Path("data/kafka-sent" if to_kafka else "data/landing")
    truth = truth or out.with_name(out.name + ".truth.json")
    before = set(out.glob("*.jsonl"))
    if sample and violations == 0 and (SAMPLE_DIR / "events").is_dir():
        before -= set(land(sorted((SAMPLE_DIR / "events").glob("*.jsonl")), out))
        shutil.copy(SAMPLE_DIR / "ground_truth.json", truth)
        console.print(f"copied the sample from {SAMPLE_DIR} into {out}")
    else:
        profile = Profile.sample() if sample else Profile.large(events)
        result = run_generator(Profile(**{**profile.__dict__, "seed": seed, "violations": violations}),
                               out, truth)
        console.print(f"{result.lines:,} lines in {result.files} files -> {out}; truth -> {truth}")
    if to_kafka:
        from rich.progress import Progress

        from pipelines.io.produce import produce

        new = sorted(set(out.glob("*.jsonl")) - before)
        try:
            with Progress(console=console) as progress:
                sent = produce(new, to_kafka, topic, progress)
        except Exception as err:  # noqa: BLE001 - one clear line, non-zero exit
            console.print(f"[red]producing to {to_kafka}/{topic} failed: {err}[/red]")
            raise typer.Exit(1) from None
        console.print(f"{sent:,} messages -> kafka {to_kafka} topic {topic}")


@app.command()
def run(
    config: ConfigOpt = None,
    lake: LakeOpt = None,
    input: InputOpt = None,
    source: Annotated[str | None, typer.Option(help="files or kafka")] = None,
    available_now: Annotated[bool, typer.Option("--available-now",
                             help="process everything pending, then exit 0")] = False,
    master: Annotated[str | None, typer.Option(help="Spark master, e.g. spark://host:7077")] = None,
) -> None:
    """Run the streaming pipeline: landing -> bronze -> silver -> gold."""
    s = settings(config, lake=lake, input=input, source=source)
    if master:
        s = s.model_copy(update={"spark": s.spark.model_copy(update={"master": master})})
    preflight(s)  # a channel configured in part stops the job here too, before Spark starts
    # The job's modules (Great Expectations among them: ~6 s of CPU) load while the JVM starts.
    # PySpark is imported here first, whole: its package imports itself in a cycle, and two
    # threads importing it at once can each see the other's half-initialised module.
    importlib.import_module("pyspark.sql")
    loading = threading.Thread(target=importlib.import_module, args=("pipelines.jobs.run",))
    loading.start()
    with spark_for(s) as spark:
        loading.join()
        from pipelines import metrics
        from pipelines.jobs.run import StreamFailed, run_available_now, run_continuously
        from pipelines.tables import SchemaMismatch

        try:
            if available_now:
                if s.metrics.enabled and s.metrics.pushgateway:
                    metrics.listen(spark)
                run_available_now(spark, s)
                if s.metrics.enabled and s.metrics.pushgateway:
                    metrics.push(spark, s.metrics.pushgateway)
            else:
                if s.metrics.enabled:
                    serve_metrics(spark, s)
                console.print("streaming; Ctrl-C (SIGINT) or SIGTERM stops cleanly")
                run_continuously(spark, s)
        except (StreamFailed, SchemaMismatch) as err:
            console.print(f"[red]{err}[/red]", soft_wrap=True)
            raise typer.Exit(1) from None


def serve_metrics(spark: SparkSession, s: Settings) -> None:
    """Serve /metrics for the streaming job; exit 2 naming the setting when the port is taken."""
    from pipelines import metrics

    try:
        metrics.start(spark, s.metrics.host, s.metrics.port)
    except OSError as err:
        console.print(f"[red]metrics: cannot listen on {s.metrics.host}:{s.metrics.port} ({err.strerror}); "
                      "set metrics.port (FUNNELHOUSE__METRICS__PORT) or metrics.enabled: false[/red]")
        raise typer.Exit(2) from None
    console.print(f"metrics: http://{s.metrics.host}:{s.metrics.port}/metrics")


@app.command()
def summary(config: ConfigOpt = None, lake: LakeOpt = None) -> None:
    """Print rows per layer, quarantine by reason and, once gold exists, the funnel."""
    from pipelines.report import print_summary

    print_summary(settings(config, lake=lake), console)


@app.command()
def backfill(
    start: Annotated[str, typer.Option("--from", help="first event date, YYYY-MM-DD")],
    end: Annotated[str, typer.Option("--to", help="last event date, YYYY-MM-DD (inclusive)")],
    layers: Annotated[str, typer.Option(help="comma-separated, in order")] = "silver,gold",
    source: Annotated[str, typer.Option(help="silver is rebuilt from: bronze | landing-archive "
                                                 "(the files under --input)")] = "bronze",
    model_version: Annotated[int | None, typer.Option("--model-version", help="score sessions with "
                                                      "this registered version (default: champion)")] = None,
    input: InputOpt = None,
    config: ConfigOpt = None,
    lake: LakeOpt = None,
) -> None:
    """Rebuild a date range with the stream's transforms; idempotent; prints rows changed."""
    from datetime import date

    from pipelines.jobs.backfill import run_backfill

    try:
        first, last = date.fromisoformat(start), date.fromisoformat(end)
    except ValueError as err:
        console.print(f"[red]bad date: {err}[/red]")
        raise typer.Exit(2) from None
    s = settings(config, lake=lake, input=input)
    with spark_for(s) as spark:
        try:
            run_backfill(spark, s, first, last, [x.strip() for x in layers.split(",") if x.strip()],
                         console, source, model_version)
        except ValueError as err:
            console.print(f"[red]{err}[/red]")
            raise typer.Exit(2) from None
        except Exception as err:  # a scheduler needs a non-zero exit and one clear line
            console.print(f"[red]backfill failed: {type(err).__name__}: {str(err).splitlines()[0]}[/red]")
            raise typer.Exit(1) from None


@app.command()
def maintain(
    config: ConfigOpt = None,
    lake: LakeOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="compact nothing; list what VACUUM "
                                                            "would delete")] = False,
) -> None:
    """Delete bronze days older than maintenance.bronze_retention, compact every table's small
    files (OPTIMIZE), then VACUUM files older than maintenance.vacuum_retention. Safe beside a
    running stream; schedule it (cron, Airflow)."""
    from pipelines.jobs.maintain import maintain as run_maintenance
    from pipelines.report import print_maintenance

    s = settings(config, lake=lake)
    print_maintenance(console, run_maintenance(s, dry_run), dry_run)


@app.command()
def report(config: ConfigOpt = None, lake: LakeOpt = None) -> None:
    """Print the funnel per campaign, the drop-off alerts and the budget recommendation."""
    from pipelines.report import print_report

    print_report(settings(config, lake=lake), console)


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="DuckDB SQL; tables are views named layer_table, "
                                              "e.g. gold_session_funnel")],
    format: Annotated[Format, typer.Option("--format", help="table, csv or json")] = Format.table,
    config: ConfigOpt = None,
    lake: LakeOpt = None,
) -> None:
    """Query the lake's Delta tables with DuckDB (read through delta-rs; no JVM)."""
    import duckdb

    from pipelines.lake_sql import UnknownLake, print_table, write_csv
    from pipelines.lake_sql import query as run_query

    s = settings(config, lake=lake)
    try:
        answer = run_query(s.lake, query)
    except (UnknownLake, duckdb.Error) as err:
        console.print(f"[red]{str(err).splitlines()[0]}[/red]", highlight=False)
        raise typer.Exit(1) from None
    if format is Format.csv:
        write_csv(answer, sys.stdout)
    elif format is Format.json:
        import json

        print(json.dumps(answer.records(), default=str))
    else:
        print_table(answer, console)


@app.command()
def dashboard(
    out: Annotated[Path, typer.Option(help="HTML file to write")] = Path("report.html"),
    config: ConfigOpt = None,
    lake: LakeOpt = None,
) -> None:
    """Write the gold dashboard (funnel, conversion, alerts, budget, fraud, notices,
    throughput) as one self-contained HTML file. Reads with delta-rs + DuckDB; no JVM."""
    from pipelines.dashboard import write
    from pipelines.lake_sql import UnknownLake

    s = settings(config, lake=lake)
    try:
        console.print(f"dashboard: {write(s.lake, out).resolve()}")
    except UnknownLake as err:
        console.print(f"[red]{err}: run `funnelhouse run` first[/red]")
        raise typer.Exit(1) from None


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 8050,
    refresh: Annotated[int, typer.Option(help="seconds between the page's reloads")] = 10,
    config: ConfigOpt = None,
    lake: LakeOpt = None,
) -> None:
    """Serve the gold dashboard at http://127.0.0.1:PORT/, read from the lake on every load."""
    from pipelines.dashboard import serve as make_server

    s = settings(config, lake=lake)
    if not Path(s.lake).is_dir():
        console.print(f"[red]no lake at {s.lake}: run `funnelhouse run` first[/red]")
        raise typer.Exit(1)
    server = make_server(s.lake, port, refresh)
    console.print(f"serving {s.lake} at http://127.0.0.1:{port}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@app.command()
def train(
    start: Annotated[str | None, typer.Option("--from", help="first session date, YYYY-MM-DD")] = None,
    end: Annotated[str | None, typer.Option("--to", help="last session date, YYYY-MM-DD (inclusive)")] = None,
    truth: Annotated[Path | None, typer.Option(help="generator ground truth: labels for precision, "
                                                    "recall and ROC-AUC, and for promotion")] = None,
    promote: Annotated[bool, typer.Option("--promote", help="make this version champion "
                                                             "whatever its metrics")] = False,
    config: ConfigOpt = None,
    lake: LakeOpt = None,
) -> None:
    """Train the IsolationForest on closed sessions, log an MLflow run, register the model and
    move the champion alias when the new version is better (or with --promote)."""
    from datetime import date

    from pipelines.jobs.train import EmptyRange, run_train

    s = settings(config, lake=lake)
    try:
        first = date.fromisoformat(start) if start else None
        last = date.fromisoformat(end) if end else None
        done = run_train(s, first, last, truth, promote)
    except (EmptyRange, ValueError) as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from None
    shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(done.metrics.items()))
    console.print(f"trained {s.anomaly.model_name} version {done.version} on {done.sessions:,} sessions "
                  f"(run {done.run_id}): {shown}")
    console.print(f"champion: version {done.champion} ({done.reason})")


model_app = typer.Typer(help="The anomaly model in the MLflow registry.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("review")
def model_review(config: ConfigOpt = None, lake: LakeOpt = None) -> None:
    """Print every registered version side by side: aliases, parameters and metrics."""
    from pipelines.jobs.train import review
    from pipelines.report import print_models

    s = settings(config, lake=lake)
    print_models(review(s), console, s.anomaly.model_name)


quality_app = typer.Typer(help="Data-quality results (Great Expectations) of the lake.",
                          no_args_is_help=True)
app.add_typer(quality_app, name="quality")


@quality_app.command("report")
def quality_report(
    last: Annotated[int, typer.Option(help="how many recent batches per suite")] = 5,
    config: ConfigOpt = None,
    lake: LakeOpt = None,
) -> None:
    """Print the expectation results of the last N validated batches per suite."""
    from pipelines.report import print_quality

    print_quality(settings(config, lake=lake), console, last)


@quality_app.command("docs")
def quality_docs(
    out: Annotated[Path | None, typer.Option(help="site folder [default: <lake>/_quality/docs]")] = None,
    config: ConfigOpt = None,
    lake: LakeOpt = None,
) -> None:
    """Build GX Data Docs (HTML): every suite validated against its table as it is now."""
    from pipelines.quality import build_docs

    s = settings(config, lake=lake)
    with spark_for(s) as spark:
        index = build_docs(spark, s, out)
    console.print(f"data docs: {index}")


notify_app = typer.Typer(help="Deliver the gold layer's notices (Slack, email, webhook) from the "
                         "outbox ops/notifications.", invoke_without_command=True)
app.add_typer(notify_app, name="notify")


def notify_channels(s: Settings) -> dict:
    """The channels that are on; exit 2 naming the variable when one is configured in part."""
    from pipelines.notify.channels import ChannelConfigError, channels

    try:
        return channels(s.notify)
    except ChannelConfigError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from None


@notify_app.callback()
def notify(ctx: typer.Context, config: ConfigOpt = None, lake: LakeOpt = None) -> None:
    """Catch up: record a notice for every alert, flag, offer and reminder the outbox lacks
    (e.g. rows a backfill inserted), then send everything pending. Idempotent."""
    if ctx.invoked_subcommand is not None:
        return
    from pipelines.jobs.notify import run_notify
    from pipelines.report import print_notifications

    s = settings(config, lake=lake)
    notify_channels(s)
    console.print(f"delivered: {run_notify(s)}")
    print_notifications(s, console)


@notify_app.command("retry")
def notify_retry(config: ConfigOpt = None, lake: LakeOpt = None) -> None:
    """Send the notices marked failed again (each gets notify.max_attempts more tries)."""
    from pipelines.jobs.notify import run_notify
    from pipelines.report import print_notifications

    s = settings(config, lake=lake)
    notify_channels(s)
    console.print(f"retried: {run_notify(s, retry=True)}")
    print_notifications(s, console)


def configure_logging(verbose: bool) -> None:
    """Our progress lines at INFO (DEBUG with ``-v``); every other library at WARNING (INFO
    with ``-v``). Logs go to stderr, so stdout holds only what a command prints."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("pipelines").setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("py4j").setLevel(logging.WARNING)  # one line per JVM call at INFO
    # MLflow gives its loggers a handler and a level of their own when it is imported.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "INFO" if verbose else "WARNING")


@app.callback()
def _options(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="library logs too (INFO), "
                                                   "and our own at DEBUG")] = False) -> None:
    configure_logging(verbose)


def main() -> None:
    configure_logging(False)
    app()


if __name__ == "__main__":  # spark-submit pipelines/cli.py run ...
    main()
