"""Checks a job runs before it starts Spark, so an operator's mistake is one line naming the
problem and a non-zero exit (never a JVM stack trace, never a half-written commit):

- the lake is writable (a local folder: a probe file is written and removed);
- the landing folder exists (the files source);
- the Delta and Kafka jars are there (``make setup`` fetches them);
- the Kafka brokers answer a TCP connect (the kafka source), within ``timeout`` seconds;
- the lake's IP hashing key is available (``privacy.ip_salt``);
- no alert channel is configured in part (``notify.channels``: the variable it lacks).

What it cannot see before Spark runs (a corrupt checkpoint, a full disk mid-run) fails the
query, and ``funnelhouse run`` reports it in one line too (``jobs/run.StreamFailed``).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pipelines.config import Settings
from pipelines.notify.channels import ChannelConfigError, channels
from pipelines.privacy import ip_salt


def problems(s: Settings, jars_dir: Path | None = None, timeout: float = 5.0) -> list[str]:
    """What stops ``s`` from running, one line each; empty when nothing does."""
    from pipelines.session import JARS_DIR

    found = []
    if "://" not in s.lake:
        probe = Path(s.lake, f".write-probe-{os.getpid()}")
        try:
            probe.parent.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            found.append(f"cannot write the lake at {s.lake}: {err.strerror or err}")
    if s.source == "files" and "://" not in s.input and not Path(s.input).is_dir():
        found.append(f"the landing folder {s.input} does not exist (create it, or pass --input)")
    jars_dir = jars_dir or JARS_DIR
    jars = sorted(p.name for p in jars_dir.glob("*.jar"))
    needed = ["delta-spark", "delta-storage"] + (["spark-sql-kafka"] if s.source == "kafka" else [])
    missing = [n for n in needed if not any(j.startswith(n) for j in jars)]
    if missing:
        found.append(f"missing jars in {jars_dir}: {', '.join(missing)} (run `make setup`, or point "
                     "FUNNELHOUSE_JARS at a folder that holds them)")
    if s.source == "kafka":
        for server in s.kafka.bootstrap_servers.split(","):
            host, _, port = server.strip().rpartition(":")
            try:
                socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
            except (OSError, ValueError) as err:
                why = getattr(err, "strerror", None) or err
                found.append(f"Kafka broker {server.strip()} is unreachable: {why} (is it running? "
                             "`make kafka-up` starts a local one)")
    try:
        channels(s.notify)
    except ChannelConfigError as err:
        found.append(str(err))
    if not any(p.startswith("cannot write the lake") for p in found):
        try:
            ip_salt(s.lake)
        except (RuntimeError, OSError) as err:
            found.append(str(err))
    return found
