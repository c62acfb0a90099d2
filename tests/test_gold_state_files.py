"""The gold processors' state files: a round trip, the batch a replay starts from, and a
refusal (never a silent empty start) when the state a batch needs is missing or unreadable."""

import pyarrow as pa
import pytest

from pipelines.config import load_settings
from pipelines.stateful.gold import Held, StateFiles
from pipelines.streams import gold_processors


@pytest.fixture
def files(spark, tmp_path):  # the processors parse their schemas with Spark
    return StateFiles(tmp_path / "gold", gold_processors(load_settings(environ={}, local=False)))


def test_a_batch_starts_from_the_state_of_the_batch_before(files):
    files.save(0, {"sessions": Held((b"zero",), 10), "fraud": Held(('["a"]',), 20)}, 1_000)
    files.save(1, {"sessions": Held((b"one",), 11), "offers": Held(None, None)}, 2_000)
    held, latest = files.load(1)  # a replay of batch 1 must not see batch 1's own output
    assert held == {"sessions": Held((b"zero",), 10), "fraud": Held(('["a"]',), 20)}
    assert latest == 1_000
    held, latest = files.load(2)
    assert held == {"sessions": Held((b"one",), 11)} and latest == 2_000
    assert files.load(0) == ({}, None)


def test_missing_state_after_batch_zero_is_refused(files):
    (files.dir.parent / "state").mkdir(parents=True)  # Spark operator state: the layout before
    with pytest.raises(RuntimeError, match="no state to start from.*layout before.*to rebuild"):
        files.load(5)


def test_an_unknown_layout_is_refused(files):
    files.dir.mkdir(parents=True)
    schema = pa.schema([("processor", pa.string())]).with_metadata({"layout": "driver-state-0"})
    with pa.ipc.new_file(files.dir / "0.arrow", schema) as writer:
        writer.write_table(schema.empty_table())
    with pytest.raises(RuntimeError, match="layout driver-state-0, not driver-state-2"):
        files.load(1)
