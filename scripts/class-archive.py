"""Make the driver JVM's class-data sharing archive (AppCDS: JDK 17's dynamic archive).

Runs the pipeline once on one sample file in a JVM started with ``-XX:ArchiveClassesAtExit``,
then waits for that JVM to exit: it writes the classes it loaded, parsed and verified, as it
exits. ``pipelines/session.py`` maps the archive into every driver JVM it starts
(docs/performance.md, "Starting a JVM"). ``make setup`` runs this.

Usage: python scripts/class-archive.py [ARCHIVE]
"""

import shutil
import sys
import tempfile
from pathlib import Path

from pyspark import SparkContext

from pipelines.config import REPO_ROOT, load_settings
from pipelines.jobs.run import run_available_now
from pipelines.session import CLASS_ARCHIVE, build_spark


def main(archive: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "landing").mkdir()
        shutil.copy(REPO_ROOT / "data" / "sample" / "events" / "events-000001.jsonl", root / "landing")
        dump = root / "classes.jsa"
        # -Xlog:cds...=off: the dump lists every class it cannot keep (signed jars, classes
        # of Spark's own loader): a few hundred lines that report nothing wrong.
        s = load_settings(overrides={
            "lake": root / "lake", "input": root / "landing",
            "spark": {"jvm_options": f"-XX:ArchiveClassesAtExit={dump} -Xlog:cds=off -Xlog:cds+dynamic=off"}},
            environ={}, local=False)
        spark = build_spark(s.spark)
        run_available_now(spark, s)
        jvm = SparkContext._gateway.proc  # spark-submit execs the JVM: this is its process
        spark.stop()
        jvm.stdin.close()  # the JVM exits on the closed pipe, and writes the archive first
        jvm.wait(timeout=300)
        if not dump.is_file() or dump.stat().st_size == 0:
            sys.exit(f"the JVM wrote no class archive (exit code {jvm.returncode})")
        archive.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(dump, archive)
    print(f"class archive: {archive} ({archive.stat().st_size / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else CLASS_ARCHIVE)
