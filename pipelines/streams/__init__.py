"""The streaming queries, one per layer and module: reader -> pure transforms -> writer.

- ``bronze``: the source (landing files or Kafka) -> ``bronze/events``, every delivery.
- ``silver``: the source -> parse -> dedupe (state) -> ``silver/events`` + ``silver/quarantine``,
  then gold in the same micro-batch (``streams/gold.py``): its on-time events -> the session,
  fraud and offer processors (state) -> every gold table, committed with delta-rs. It reads
  the source itself rather than bronze, so silver and gold are one hop from arrival.

Why this shape, with the measurements behind it: docs/performance.md. Each ``start_*``
returns a started ``StreamingQuery``; with ``available_now`` it processes everything pending
and stops, otherwise it runs on ``stream.trigger_interval``.
"""

from pipelines.streams.base import CHECKPOINTS, GOLD_QUERY
from pipelines.streams.bronze import start_bronze
from pipelines.streams.silver import start_silver

LAYERS = {"bronze": start_bronze, "silver": start_silver}
__all__ = ["CHECKPOINTS", "GOLD_QUERY", "LAYERS"]
