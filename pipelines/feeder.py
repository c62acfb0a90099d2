"""``python -m pipelines.feeder files|kafka TARGET RATE SECONDS``: funnel events at a steady
rate, each stamped with the time it is sent, for ``make bench``'s freshness run.

A separate process with light imports (the bench's own process holds the JVM and the GIL).
"""

from __future__ import annotations

import heapq
import json
import random
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from pipelines.steps import STEPS


def _journeys(rate: int, seconds: float, sink: Callable[[list[str]], None], tick: float = 0.2) -> int:
    """Funnel journeys, every event stamped with the time it is sent: a new journey starts at
    an impression and goes on a step every 1-4 s with a campaign's continuation odds. Campaign
    ``weak`` turns 5% of clicks into carts (the ``click_to_cart`` rule fires on it)."""
    rng = random.Random(11)
    campaigns = [f"cmp_{i:02d}" for i in range(20)] + ["weak"]
    pending: list[tuple[float, int, dict]] = []  # (when, journey number, journey) of next steps
    start, sent, n = time.time(), 0, 0
    while (now := time.time()) - start < seconds:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        ready = []
        while pending and pending[0][0] <= now:
            ready.append(heapq.heappop(pending))
        for _ in range(int((now - start) * rate) - sent - len(ready)):  # new journeys fill the rate
            n += 1
            user = rng.randrange(50_000)
            ready.append((now, n, {"tracking_id": f"t{uuid.uuid4().hex[:16]}", "step": 0,
                                   "campaign_id": rng.choice(campaigns), "user_id": f"u{user:06d}",
                                   "ip": f"10.{user // 65536}.{user // 256 % 256}.{user % 256}"}))
        lines = []
        for _, k, j in ready:
            ev = {"event_id": uuid.uuid4().hex, "event_type": STEPS[j["step"]], "event_time": stamp,
                  "user_id": j["user_id"], "tracking_id": j["tracking_id"], "ip": j["ip"],
                  "user_agent": "Mozilla/5.0 (X11; Linux) Chrome/131.0"}
            if j["step"] < 2:
                ev |= {"campaign_id": j["campaign_id"], "ad_id": "ad1"}
            if j["step"] >= 3:
                ev |= {"product_id": f"sku_{k % 400:04d}", "price": 19.5, "quantity": 1}
            lines.append(json.dumps(ev))
            go_on = 0.05 if (j["campaign_id"] == "weak" and j["step"] == 1) else 0.6
            if j["step"] < 5 and rng.random() < go_on:
                j["step"] += 1
                heapq.heappush(pending, (now + rng.uniform(1, 4), k, j))
        sent += len(lines)
        if lines:
            sink(lines)
        time.sleep(max(0.0, tick - (time.time() - now)))
    return sent


def feed(kind: str, target: str, rate: int, seconds: float) -> None:
    """Run the feeder into a landing folder (``kind`` ``files``) or a Kafka topic."""
    if kind == "files":
        out, count = Path(target), [0]
        out.mkdir(parents=True, exist_ok=True)

        def sink(lines: list[str]) -> None:
            tmp = out / f".part-{count[0]:06d}.tmp"
            tmp.write_text("\n".join(lines) + "\n")
            tmp.rename(out / f"part-{count[0]:06d}.jsonl")
            count[0] += 1
    else:
        from confluent_kafka import Producer
        servers, topic = target.split("/", 1)
        producer = Producer({"bootstrap.servers": servers, "linger.ms": 5})

        def sink(lines: list[str]) -> None:
            for line in lines:
                producer.produce(topic, line.encode())
            producer.poll(0)
    _journeys(rate, seconds, sink)
    if kind != "files":
        producer.flush()


if __name__ == "__main__":
    kind, target, rate, seconds = sys.argv[1:5]
    feed(kind, target, int(rate), float(seconds))
