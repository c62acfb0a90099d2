"""What every streaming query shares: its checkpoint, its source, its writer, and the
``foreachBatch`` handler base (the app id and the ledger)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.streaming import DataStreamWriter

from pipelines.config import Settings, spark_interval
from pipelines.io import sinks, sources
from pipelines.io.ledger import Ledger

# The one streaming query (``streams/pipeline.py``), and its checkpoint under <lake>/_checkpoints/:
# Spark's offsets and commits, silver's dedupe state and gold's processors' state.
QUERY = "pipeline"
CHECKPOINTS = {QUERY: "pipeline"}


def query_id(checkpoint: Path) -> str:
    """A streaming query's id: written in its checkpoint, the same across restarts."""
    return json.loads((checkpoint / "metadata").read_text())["id"]


def app_id(name: str, checkpoint: Path) -> str:
    """The app id query ``name`` marks its table commits with (``io/ledger.py``)."""
    return f"{name}-{query_id(checkpoint)}"


def source(spark: SparkSession, s: Settings) -> DataFrame:
    if s.source == "kafka":
        return sources.read_kafka(spark, s.kafka, streaming=True)
    return sources.read_landing(spark, s.input, streaming=True,
                                max_files_per_trigger=s.stream.max_files_per_trigger,
                                max_bytes_per_trigger=s.stream.max_bytes_per_trigger,
                                clean_source=s.stream.clean_source, archive_dir=s.source_archive)


def writer(df: DataFrame, name: str, s: Settings, available_now: bool) -> DataStreamWriter:
    """The writer of the query ``name``, with its checkpoint and trigger."""
    return sinks.stream_writer(df, name, s.checkpoint(CHECKPOINTS[name]), available_now,
                               spark_interval(s.stream.trigger_interval))


class Handler:
    """What a ``foreachBatch`` body knows: its query's checkpoint (for the app id, stable
    across restarts) and the ledger of batches each table holds (rebuilt from the tables
    after a restart). ``name`` (bronze, silver, gold) marks its commits; ``query`` is the
    query it runs in."""

    def __init__(self, s: Settings, name: str, query: str = QUERY):
        self.s = s
        self.checkpoint = Path(s.checkpoint(CHECKPOINTS[query]))
        self.name = name
        self.ledger = Ledger()

    def app_id(self) -> str:
        return app_id(self.name, self.checkpoint)


def counts(rows: pa.Table, column: str) -> dict[str, int]:
    return {c["values"]: c["counts"] for c in pc.value_counts(rows[column]).to_pylist()}
