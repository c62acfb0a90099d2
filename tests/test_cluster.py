"""The same pipeline on a Spark standalone cluster (a master and a worker started with
``spark-class``), submitted with ``spark-submit`` and the jars passed explicitly. Its gold
tables must equal the ``local[2]`` run of the same sample with the same settings (the whole
sample in one micro-batch per query, as ``whole_lake``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import assert_same_rows, copy_sample, read

from pipelines import tables
from pipelines.config import REPO_ROOT, load_settings
from pipelines.session import class_archive, jar_paths

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
BIN = Path(sys.executable).parent
MASTER = "spark://127.0.0.1:7077"


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{proc.args} exited with {proc.returncode}"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on {port}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A master on 127.0.0.1:7077 and one worker (2 cores, 2 GiB), as `spark-class` starts them."""
    work = tmp_path_factory.mktemp("cluster")
    env = {**os.environ, "SPARK_WORKER_DIR": str(work / "worker"), "SPARK_LOCAL_IP": "127.0.0.1",
           "PYSPARK_PYTHON": sys.executable}
    log = (work / "cluster.log").open("w")
    master = subprocess.Popen([BIN / "spark-class", "org.apache.spark.deploy.master.Master",
                               "--host", "127.0.0.1", "--port", "7077", "--webui-port", "18080"],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    worker = None
    try:
        _wait_port(7077, master)
        worker = subprocess.Popen([BIN / "spark-class", "org.apache.spark.deploy.worker.Worker", MASTER,
                                   "--host", "127.0.0.1", "-c", "2", "-m", "2g", "--webui-port", "18081"],
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
        _wait_port(18081, worker)
        yield work / "worker"
    finally:
        for proc in (worker, master):
            if proc is not None:
                proc.terminate()
                proc.wait(30)
        log.close()


def test_spark_submit_on_a_standalone_cluster_matches_local(spark, cluster, whole_lake, tmp_path):
    """``cluster`` is the worker's folder: each application it ran leaves an ``app-*`` there."""
    s = load_settings(overrides={"lake": tmp_path / "lake", "input": tmp_path / "landing"},
                      environ={}, local=False)
    copy_sample(s.input)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_GATEWAY")}
    env["PYSPARK_PYTHON"] = sys.executable
    # C1-only JIT, as conf/demo.yaml: a short job warms up faster; and the class archive
    # of make setup, which spark-submit maps only when told (docs/production.md).
    submit = [BIN / "spark-submit", "--master", MASTER, "--deploy-mode", "client",
              "--driver-java-options", f"-XX:TieredStopAtLevel=1 {class_archive()}".strip(),
              "--conf", "spark.executor.extraJavaOptions=-XX:TieredStopAtLevel=1",
              "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.executor.memory=1g",
              "--jars", ",".join(jar_paths()),
              REPO_ROOT / "pipelines" / "cli.py", "run",
              "--input", s.input, "--lake", s.lake, "--available-now"]
    done = subprocess.run([str(a) for a in submit], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    apps = list(cluster.glob("app-*"))
    assert len(apps) == 1 and list(apps[0].glob("*/stderr")), "the job did not run on the worker"

    for table in (tables.SILVER_EVENTS, tables.SILVER_QUARANTINE, *tables.GOLD):
        keep = [c for c in table.columns if c not in ("created_at", "ingest_time", "quarantine_time",
                                                      "source_file", "ingest_date")]
        on_cluster = read(spark, s, table.name).select(keep)
        local = read(spark, whole_lake, table.name).select(keep)
        assert local.count() > 0, table.name
        # Sums of doubles may differ in the last bits with another partitioning: rtol.
        assert_same_rows(on_cluster, local, precision=1e-6)
