"""``make bench`` restart: a new process reads back the open sessions of a steady rate and
goes on.

At 10,000 events/s with the default gap and watermark delay the session processor holds about
24M events (docs/production.md), and forty minutes of feeding is what it takes to get there.
This part writes such a state directly instead: ``--restart-events`` open events (the
generator's value shapes, every session closing within the next 30 minutes of event time),
stored the way a running job leaves it (a complete file, then three files of 28k changed
journeys each), through ``StateFiles``. Then a new Python process, as a restarted job,
loads it (``StateFiles.load``), runs ``--restart-batches`` micro-batches of 28k new events
(three seconds at that rate) through the session processor (``advance``) and stores each
batch's state file. Each step runs in a process of its own, so that its peak resident size is
its own.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.bench.common import console, peak_gib, rich_table

WATERMARK = 1_790_000_000_000  # epoch ms: 2026-09-21
GAP = 1_800_000  # ms
DELAY = 600_000  # ms
BATCH = 28_000  # new events a micro-batch, three seconds at 10k ev/s
LATEST = WATERMARK + DELAY  # the newest event time the state file records
WRITTEN = 3  # the state's files: a complete one (0), then what changed (1 to 3)


def restart(root: Path, events: int, batches: int) -> dict:
    """The state of ``events`` open events, written once under ``root``, then a restart."""
    folder = root / f"restart-{events}"
    if not (folder / "written").exists():
        _step("write", folder, events)
        (folder / "written").touch()
    got = _step("read", folder, batches)
    later = got["batches_s"][1:]
    rows = [["read back (StateFiles.load), s", got["load_s"], ""],
            ["first micro-batch (its tiers built), s", got["batches_s"][0], ""],
            ["later micro-batches (median), s", statistics.median(later) if later else float("nan"), ""],
            ["peak resident size of the process, GiB", got["peak_gib"], "4 GB (3.73 GiB)"],
            ["held events after, GiB (hot and cold)", got["held_gib"], ""]]
    console.print(rich_table(f"restart: {events:,} open events read back by a new process, then "
                             f"{batches} micro-batches of {BATCH:,}", ["", "value", "target"], rows))
    return {"events": events} | got


def _step(what: str, folder: Path, n: int) -> dict:
    done = subprocess.run([sys.executable, "-m", "pipelines.bench.restart", what, str(folder), str(n)],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"bench restart {what} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _processor():
    from pipelines.config import load_settings
    from pipelines.session import build_spark
    from pipelines.stateful import sessions

    s = load_settings(environ={})
    build_spark(s.spark)  # the processors parse their output schemas with Spark
    return sessions.processor(s)


def held_events(n: int, first_journey: int, seed: int, times: tuple[int, int]) -> pa.Table:
    """``n`` events of journeys of 8 (``sessions.HELD``), shaped as the generator's values:
    each journey's events within a minute of its start, the starts spread over ``times``;
    ``closes`` is the journey's last event time plus the gap."""
    from pipelines.stateful import sessions

    rng = np.random.default_rng(seed)
    journeys = first_journey + np.arange(n) // 8
    starts = rng.integers(*times, -(-n // 8))
    t = starts[journeys - first_journey] + rng.integers(0, 60_000, n)
    last = np.maximum.reduceat(t, np.arange(0, n, 8))

    def text(pattern: str, k: int) -> pa.Array:
        values = pa.array([pattern.format(i) for i in range(k)])
        return values.take(pa.array(rng.integers(0, k, n)))

    digits = pc.utf8_lpad(pc.cast(pa.array(journeys), pa.string()), 14, "0")
    return pa.table({
        "journey": journeys, "tracking_id": pc.binary_join_element_wise("t", digits, ""), "t": t,
        "step": pa.array(rng.integers(1, 7, n), pa.int8()), "tie": rng.integers(-2**62, 2**62, n),
        "user_id": text("u{:06d}", 200_000),
        "campaign_id": text("cmp_{}", 40), "product_id": text("p{:04d}", 500),
        "price": rng.integers(100, 20_000, n) / 100, "quantity": rng.integers(1, 4, n).astype(float),
        "ip_country": text("C{}", 30), "ip_hash": text("{:032x}", 200_000),
        "closes": last[journeys - first_journey] + GAP,
    }, schema=sessions.HELD)


def _write(folder: Path, n: int) -> dict:
    from pipelines.stateful import sessions
    from pipelines.stateful.gold import Held, Kept, by_key
    from pipelines.stateful.state_files import StateFiles
    from pipelines.stateful.tiers import Tiered

    p = _processor()
    files = StateFiles(folder, [p])
    # open: the sessions the watermark has not closed, whose last event is at most the gap
    # behind it, or up to the watermark delay ahead of it
    rows = by_key(held_events(n, 0, 7, (WATERMARK - GAP, WATERMARK + DELAY - 60_000)), "journey")
    table = pa.Table.from_batches(rows.to_batches(max_chunksize=262_144))
    held = Kept(Tiered(table, "journey", "closes"), sessions.encode, "journey", None, by_key=True)
    files.save(0, {"sessions": Held((held,), WATERMARK)}, LATEST)
    rng = np.random.default_rng(8)
    for batch in range(1, WRITTEN + 1):  # files of what changed, as a running job writes them
        changed = pa.array(np.unique(rng.integers(0, n // 8, BATCH)), pa.int64())
        files.save(batch, {"sessions": Held((held.changing(held.value, changed),), WATERMARK)}, LATEST)
    return {"files": WRITTEN + 1}


def _read(folder: Path, batches: int) -> dict:
    from pipelines.stateful.gold import advance
    from pipelines.stateful.state_files import StateFiles, state_ids

    p = _processor()
    files = StateFiles(folder, [p])
    for later in state_ids(files.dir):  # what an earlier read wrote: start where the write ended
        if later > WRITTEN:
            (files.dir / f"{later}.arrow").unlink()
    last = WRITTEN
    start = time.perf_counter()
    held, latest = files.load(last + 1)
    load = time.perf_counter() - start
    state, took = held.pop("sessions"), []
    for i in range(batches):
        new = held_events(BATCH, 10**12 + i * BATCH, 100 + i, (LATEST + i * 3000, LATEST + i * 3000 + 1))
        new = new.drop_columns(["closes"])  # as the stream gives them: Arrow
        before = latest - DELAY + i * 3000  # the watermark moves three seconds a batch
        start = time.perf_counter()
        _, state = advance(p, new, state, before, before + 3000)
        files.save(last + 1 + i, {"sessions": state}, latest + (i + 1) * 3000)
        took.append(time.perf_counter() - start)
    return {"load_s": load, "batches_s": took,
            "peak_gib": peak_gib(),  # VmHWM: ru_maxrss would carry the bench's own peak past exec
            "held_gib": state.values[0].value.nbytes / 2**30}


if __name__ == "__main__":
    what, folder, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    print(json.dumps((_write if what == "write" else _read)(folder, n)))
