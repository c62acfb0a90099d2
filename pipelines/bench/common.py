"""What every part of ``make bench`` shares: timing, tables, settings, the generated input."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pipelines.config import REPO_ROOT, Settings, load_settings
from pipelines.generate import Profile, generate

console = Console()
RESULTS = REPO_ROOT / "bench" / "results"


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def peak_gib(pid: int | str = "self") -> float:
    """A process's peak resident size (``VmHWM``). Unlike ``ru_maxrss``, it starts afresh at
    ``exec``: a child the bench starts does not inherit the bench's own peak."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 2**20


def jvm_pid(spark) -> int:
    """The driver JVM's process id."""
    return spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()


# Threads by what they do, from their names (``/proc/<pid>/task/*/comm``): the Python
# driver's interpreter threads and delta-rs's Rust runtime; the JVM's Spark tasks, JIT
# compilers and garbage collector. Anything else is "other".
THREAD_KINDS = (("delta-rs", r"^tokio"), ("tasks", r"^Executor task"), ("JIT", r"^C[12] Compiler"),
                ("GC", r"^(GC Thread|G1|VM Thread|ParGC)"), ("python", r"^python"))


def cpu_seconds(pids: dict[str, int]) -> Counter:
    """The CPU time (user + system, core-seconds) each process's threads have used so far, by
    ``(process, kind)``. A thread gone since is not counted: take it around work whose threads
    outlive it (the JVM's and delta-rs's pools do)."""
    tick = os.sysconf("SC_CLK_TCK")
    used: Counter = Counter()
    for process, pid in pids.items():
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                name = (task / "comm").read_text().strip()
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # the thread ended meanwhile
                continue
            kind = next((k for k, pattern in THREAD_KINDS if re.match(pattern, name)), "other")
            used[(process, kind)] += (int(fields[11]) + int(fields[12])) / tick
    return used


def cpu_during(pids: dict[str, int], action: Callable[[], object]) -> tuple[float, dict[str, float]]:
    """``action``'s wall seconds, and the core-seconds each ``process: kind`` used meanwhile."""
    before = cpu_seconds(pids)
    wall = timed(action)
    after = cpu_seconds(pids)
    return wall, {f"{p}: {k}": round(after[p, k] - before[p, k], 2) for p, k in sorted(after)}


def rich_table(title: str, columns: list[str], rows: list[list[object]]) -> Table:
    out = Table(title=title)
    for i, col in enumerate(columns):
        out.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        out.add_row(*[f"{v:,.1f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)
                      for v in row])
    return out


def bench_settings(lake: Path, landing: Path, **overrides: object) -> Settings:
    return load_settings(overrides={"lake": lake, "input": landing, **overrides}, environ={})


def dataset(root: Path, events: int) -> tuple[Path, int, Profile]:
    """The generated input of ``events`` (made once, reused by later runs)."""
    profile = Profile.large(events)
    landing = root / f"landing-{events}"
    truth = landing.with_name(landing.name + ".truth.json")
    if not truth.exists():
        shutil.rmtree(landing, ignore_errors=True)
        generate(profile, landing, truth)
    return landing, json.loads(truth.read_text())["lines"], profile
