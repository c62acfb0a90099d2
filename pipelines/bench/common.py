"""What every part of ``make bench`` shares: timing, tables, settings, the generated input."""

from __future__ import annotations

import json
import shutil
import time
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
