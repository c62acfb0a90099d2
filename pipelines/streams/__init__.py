"""The streaming queries, one per layer and module: reader -> pure transforms -> writer.

- ``bronze``: the source (landing files or Kafka) -> ``bronze/events``, every delivery.
- ``silver``: the source -> parse -> dedupe (state) -> ``silver/events`` + ``silver/quarantine``.
  It reads the source itself rather than bronze, so silver is one hop from arrival.
- ``gold``: on-time ``silver/events`` -> the session, fraud and offer processors (state) ->
  every gold table, each micro-batch's changes committed with delta-rs.

Why this shape, with the measurements behind it: docs/performance.md. Each ``start_*``
returns a started ``StreamingQuery``; with ``available_now`` it processes everything pending
and stops, otherwise it runs on ``stream.trigger_interval``.
"""

from pipelines.streams.base import CHECKPOINTS
from pipelines.streams.bronze import start_bronze
from pipelines.streams.gold import start_gold
from pipelines.streams.silver import start_silver

LAYERS = {"bronze": start_bronze, "silver": start_silver, "gold": start_gold}
__all__ = ["CHECKPOINTS", "LAYERS"]
