"""What the tests share besides fixtures: the committed sample, landing it, reading a table,
and comparing DataFrames (chispa, so a failure prints the differing rows)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from chispa import assert_approx_df_equality, assert_df_equality
from pyspark.sql import DataFrame, SparkSession

from pipelines import tables
from pipelines.config import REPO_ROOT, Settings
from pipelines.generate import land
from pipelines.io.folds import fold_spark

SAMPLE = REPO_ROOT / "data" / "sample"


def copy_sample(dest: str | Path, files: slice = slice(None)) -> list[Path]:
    """Land (some of) the committed sample's files into ``dest``, in arrival order."""
    return land(sorted((SAMPLE / "events").glob("*.jsonl"))[files], Path(dest))


def lake_copy(s: Settings, dest: Path) -> Settings:
    """A private copy of a streamed lake and its landing folder under ``dest``, for a test that
    changes it (the session's sample lake is shared). The copied checkpoints' file-source logs
    and offsets name the copy's landing folder (their checksums go: Hadoop reads a file without
    one), so the copy streams on from where the original stopped."""
    shutil.copytree(s.lake, dest / "lake")
    shutil.copytree(s.input, dest / "landing")
    old, new = str(Path(s.input).resolve()), str((dest / "landing").resolve())
    for f in (dest / "lake" / "_checkpoints").glob("**/*"):
        logs = f.parent.name == "offsets" or f.parent.parent.name == "sources"
        if f.is_file() and logs and not f.name.endswith(".crc"):
            text = f.read_bytes()
            if old.encode() in text:
                f.write_bytes(text.replace(old.encode(), new.encode()))
                f.with_name(f".{f.name}.crc").unlink(missing_ok=True)
    return s.model_copy(update={"lake": str(dest / "lake"), "input": str(dest / "landing")})


def read(spark: SparkSession, s: Settings, table: str) -> DataFrame:
    """A table as its readers see it: a table whose rows add up (the profiles) folded, one
    row per key (``io/folds.py``)."""
    rows = spark.read.format("delta").load(s.table(table))
    declared = next((t for t in tables.ALL if t.name == table), None)
    return rows.transform(fold_spark(declared)) if declared is not None and declared.fold else rows


def assert_same_rows(actual: DataFrame, expected: DataFrame, precision: float | None = 1e-9) -> None:
    """Same schema (nullability aside) and the same rows in any order; doubles equal within
    ``precision`` (exactly when None). Identical rows pass after one collect of each side;
    anything else goes to chispa, which allows the precision and prints the differing rows
    (its row-by-row comparison doubled the cost of every comparison that passes)."""
    if _identical(actual, expected):
        return
    if precision is None:
        assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True,
                           allow_nan_equality=True)
    else:
        assert_approx_df_equality(actual, expected, precision, ignore_row_order=True,
                                  ignore_nullable=True, allow_nan_equality=True)


def _identical(actual: DataFrame, expected: DataFrame) -> bool:
    """The same column names and types (``simpleString`` leaves nullability out), and the
    same multiset of rows, value for value."""
    if actual.schema.simpleString() != expected.schema.simpleString():
        return False
    rows = [sorted(map(tuple, df.collect()), key=repr) for df in (actual, expected)]
    return rows[0] == rows[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


class Prometheus:
    """A real Prometheus on 127.0.0.1:``port`` scraping 127.0.0.1:``target`` every second,
    asked through its HTTP query API."""

    def __init__(self, port: int, target: int):
        self.port, self.target = port, target

    def query(self, expr: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def value(self, expr: str) -> float | None:
        """The first series' current value (None when there is none)."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def series(self, expr: str, label: str) -> dict[str, float]:
        """label value -> current value, for every series of ``expr``."""
        return {r["metric"][label]: float(r["value"][1]) for r in self.query(expr)}


def sample_addresses() -> set[str]:
    """Every ``ip`` value of the committed sample's lines (the ones that parse as JSON)."""
    import json

    found = set()
    for f in sorted((SAMPLE / "events").rglob("*")):
        for line in f.read_text(errors="replace").splitlines() if f.is_file() else []:
            try:
                ip = json.loads(line).get("ip")
            except (ValueError, AttributeError):
                continue
            if isinstance(ip, str) and ip:
                found.add(ip)
    return found


# Columns that say when or from which path a row was written, not what it holds: left out
# when two runs of the same input are compared.
WHEN = ("created_at", "ingest_time", "quarantine_time", "source_file", "ingest_date", "validated_at",
        "sent_at", "scored_at")


def what_it_holds(table) -> list[str]:
    """``table``'s columns without ``WHEN``."""
    return [c for c in table.columns if c not in WHEN]


class Receiver:
    """An HTTP server that records each POST (path, headers, JSON body); 503 while ``down``."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict, dict]] = []
        self.down = False
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts.append((self.path, dict(self.headers), json.loads(body)))
                self.send_response(503 if receiver.down else 200)
                self.end_headers()
                self.wfile.write(b"unavailable" if receiver.down else b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self, path: str) -> list[dict]:
        return [b for p, _, b in self.posts if p == path]


def run_failing_at(spark: SparkSession, s: Settings, monkeypatch, owner, name: str, message: str) -> None:
    """``run_available_now`` with ``owner.name`` raising ``OSError(message)`` wherever it is
    called (a writer thread included): the run must fail with that message. ``owner.name`` is
    itself again afterwards."""
    import pytest

    from pipelines.jobs.run import StreamFailed, run_available_now

    def refuse(*args, **kwargs):
        raise OSError(message)

    with monkeypatch.context() as m:
        m.setattr(owner, name, refuse)
        with pytest.raises(StreamFailed, match=re.escape(message)):
            run_available_now(spark, s)


def is_delta(files, batch: int) -> bool:
    """Whether micro-batch ``batch``'s gold state file holds only what changed (one processor)."""
    import pyarrow as pa

    with pa.ipc.open_file(files.dir / f"{batch}.arrow") as reader:
        return reader.read_all()["delta"].to_pylist() == [True]
