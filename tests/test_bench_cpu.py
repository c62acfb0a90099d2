"""``make bench``'s CPU accounting: core-seconds land under the process and thread kind that
used them."""

import os
import threading
import time

from pipelines.bench.common import cpu_during


def test_a_busy_python_thread_is_counted_as_the_pythons_own():
    spun, release = threading.Event(), threading.Event()

    def spin() -> None:  # a pool thread, as the driver's writers are: it outlives the work
        end = time.thread_time() + 0.5
        while time.thread_time() < end:
            pass
        spun.set()
        release.wait()

    worker = threading.Thread(target=spin)
    try:
        wall, used = cpu_during({"Python": os.getpid()}, lambda: (worker.start(), spun.wait()))
    finally:
        release.set()
        worker.join()

    assert 0.45 <= used["Python: python"] <= wall + 0.05
    assert used.get("Python: delta-rs", 0.0) < 0.05  # no Rust runtime ran
