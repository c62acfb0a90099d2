"""Feed a Kafka topic with landing files' lines, as an upstream tracker would: one message per
line, keyed by ``user_id`` (so one user's events keep their order within a partition).

Lines that are not JSON objects, or lack a ``user_id``, are sent unkeyed: bronze keeps them and
silver quarantines them, exactly as for files.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from confluent_kafka import Producer
from rich.progress import Progress


def key_of(line: str) -> bytes | None:
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    user = doc.get("user_id") if isinstance(doc, dict) else None
    return str(user).encode() if user not in (None, "") else None


def produce(files: Iterable[Path], bootstrap: str, topic: str, progress: Progress | None = None) -> int:
    """Send every line of ``files`` (in order) to ``topic``; wait until all are acknowledged.
    Idempotent producer with ``acks=all``: a retried send is not written twice."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                         "linger.ms": 20, "compression.type": "lz4"})
    failures: list[str] = []

    def on_delivery(err, _msg) -> None:
        if err is not None:
            failures.append(str(err))

    files = list(files)
    task = progress.add_task(f"producing to {topic}", total=len(files)) if progress else None
    sent = 0
    for path in files:
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                line = line.rstrip("\n")
                while True:
                    try:
                        producer.produce(topic, line.encode(), key_of(line), on_delivery=on_delivery)
                        break
                    except BufferError:  # local queue full: let deliveries drain
                        producer.poll(0.1)
                sent += 1
        producer.poll(0)
        if progress is not None:
            progress.advance(task)
    left = producer.flush(120)
    if left or failures:
        raise RuntimeError(f"{left + len(failures)} of {sent} messages not delivered to {topic}: "
                           f"{(failures or ['flush timed out'])[0]}")
    return sent
