"""The streaming job: one query, reader -> pure transforms -> writers.

``pipeline`` (``streams/pipeline.py``) reads the source (landing files or Kafka) once, and
each micro-batch writes, from one collected Spark pass:
- ``bronze``: every delivery -> ``bronze/events`` (``streams/bronze.py``);
- ``silver``: parsed, deduplicated (state) -> ``silver/events`` + ``silver/quarantine``
  (``streams/silver.py``);
- ``gold``: the on-time events silver kept -> the session, fraud and offer processors
  (state) -> every gold table (``streams/gold.py``).

Why this shape, with the measurements behind it: docs/performance.md. ``start_pipeline``
returns a started ``StreamingQuery``; with ``available_now`` it processes everything pending
and stops, otherwise it runs on ``stream.trigger_interval``.
"""

from pipelines.streams.base import CHECKPOINTS, QUERY
from pipelines.streams.pipeline import start_pipeline

QUERIES = {QUERY: start_pipeline}
__all__ = ["CHECKPOINTS", "QUERIES", "QUERY"]
