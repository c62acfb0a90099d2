"""Hostile input at volume: Hypothesis writes 10,000+ lines meant to break the parser (invalid
UTF-8, odd Unicode, 1 MB lines, deep nesting, numbers as strings, zone-less and far-off
times, NaN and Infinity, duplicate keys, empty lines, a BOM, garbage, redeliveries), the
stream runs over them in several micro-batches, and:

- the stream finishes (it never stops on a line);
- bronze holds every line; each is in silver, in the quarantine with a reason, or a removed
  redelivery of a line that is in silver (conservation);
- silver holds only contract-valid values (no NaN or infinite price, a zoned time) and each
  ``event_id`` once;
- a far-future event does not drag the watermark forward (no later event is marked late).
"""

import json
import re
from pathlib import Path

import pytest
from helpers import read
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.sql import functions as F

from pipelines.jobs.run import run_available_now

LINES_PER_FILE = 100
FILES = 101  # 10,100 lines
FUTURE = ["9999-12-31T23:59:59Z", "2999-01-01T00:00:00Z", "2027-11-02T10:00:00Z"]
PAST = ["0001-01-01T00:00:00Z", "1970-01-01T00:00:00Z"]
NOT_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80\x80"]  # a stray byte, a bad pair, a surrogate
STEPS = ["ad_impression", "ad_click", "landing_page_view", "add_to_cart", "checkout_start", "purchase"]

# Text with no line break Spark's reader would split on (\n, \r), anything else allowed:
# control characters, lone surrogates (escaped by json.dumps), emoji, right-to-left marks.
odd_text = st.text(st.characters(blacklist_characters="\n\r", blacklist_categories=()), max_size=40)
# Valid but odd user ids (a pool: drawing free text for every line costs Hypothesis seconds).
ODD_IDS = ["u1", "\u202eevil", "\U0001f600", "a\u0000b", "\ud800", "\u200b", "x" * 300, "\u00e9\u0301",
           "\\\"'"]
PRICES = [0.0, 0.01, 5e-324, 19.99, 1e308]


@st.composite
def event(draw, n: int) -> dict:
    """A contract-valid event; ``n`` makes its id unique. Times within five minutes of one
    another, so nothing valid is ever behind the 10-minute watermark."""
    step = draw(st.sampled_from(STEPS))
    ms = draw(st.integers(0, 299_999))
    e = {"event_id": f"f{n}", "event_type": step,
         "event_time": f"2026-11-02T10:{ms // 60_000:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}Z",
         "user_id": draw(st.sampled_from(ODD_IDS)), "tracking_id": f"t{n % 97}",
         "ip": draw(st.sampled_from(["10.16.0.1", "2001:db8::1", "", "not an ip"]))}
    if step in ("add_to_cart", "checkout_start", "purchase"):
        e |= {"product_id": f"p{draw(st.integers(0, 9))}", "price": draw(st.sampled_from(PRICES)),
              "quantity": draw(st.integers(1, 5))}
    return e


def _dump(e: dict) -> bytes:
    return json.dumps(e).encode()


@st.composite
def hostile_line(draw, n: int) -> tuple[str, bytes]:
    """(kind, line bytes) for line ``n``."""
    e = draw(event(n))
    huge = n == 7 and draw(st.integers(0, 9)) == 0  # about ten 1 MB lines in all, not 600
    kind = "huge" if huge else draw(st.sampled_from([
        "valid", "numbers_as_strings", "no_zone", "far_future", "far_past", "nan", "infinity", "nan_string",
        "duplicate_keys", "empty", "bom", "invalid_utf8", "deep", "garbage", "array", "null_fields"]))
    if kind == "numbers_as_strings":
        return kind, _dump(e | {"price": "12.50", "quantity": "3"})
    if kind == "no_zone":
        return kind, _dump(e | {"event_time": "2026-11-02T10:00:00"})
    if kind == "far_future":
        return kind, _dump(e | {"event_time": draw(st.sampled_from(FUTURE))})
    if kind == "far_past":
        return kind, _dump(e | {"event_time": draw(st.sampled_from(PAST))})
    if kind in ("nan", "infinity"):
        value = "NaN" if kind == "nan" else draw(st.sampled_from(["Infinity", "-Infinity"]))
        return kind, _dump(e | {"price": 0.0}).replace(b'"price": 0.0', f'"price": {value}'.encode())
    if kind == "nan_string":
        return kind, _dump(e | {"price": draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "nan"]))})
    if kind == "duplicate_keys":
        return kind, f'{{"event_id": "dup{n}", '.encode() + _dump(e)[1:]
    if kind == "empty":
        return kind, draw(st.sampled_from([b"", b" ", b"\t"]))
    if kind == "bom":
        return kind, "\ufeff".encode() + _dump(e)
    if kind == "invalid_utf8":
        cut = draw(st.integers(1, len(_dump(e)) - 1))
        line = _dump(e)
        return kind, line[:cut] + draw(st.sampled_from(NOT_UTF8)) + line[cut:]
    if kind == "huge":
        return kind, _dump(e | {"user_agent": "x" * 1_048_576})
    if kind == "deep":
        depth = draw(st.integers(500, 5000))
        return kind, b'{"event_id": "deep", "a": ' + b"[" * depth + b"]" * depth + b"}"
    if kind == "garbage":
        return kind, draw(odd_text).encode("utf-8", "surrogatepass")
    if kind == "array":
        return kind, b"[" + _dump(e) + b"]"
    if kind == "null_fields":
        return kind, _dump({k: None for k in e})
    return kind, _dump(e)


@pytest.mark.slow  # streams 10,000+ lines through a fresh lake
def test_ten_thousand_hostile_lines_never_stop_the_stream_and_none_is_lost(spark, lake_settings):
    files: list[list[tuple[str, bytes]]] = []

    @settings(max_examples=FILES, database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def write(data):  # ids are per file here; the file's number makes them unique below
        lines = [data.draw(hostile_line(i)) for i in range(LINES_PER_FILE)]
        redelivered = data.draw(st.lists(st.sampled_from(lines), max_size=5))  # producer retries
        files.append(lines + redelivered)

    write()
    files = [[(kind, line.replace(b'"event_id": "f', f'"event_id": "f{i}-'.encode())
               .replace(b'"event_id": "dup', f'"event_id": "dup{i}-'.encode())) for kind, line in lines]
             for i, lines in enumerate(files)]
    s = lake_settings.model_copy(update={"stream": lake_settings.stream.model_copy(
        update={"max_files_per_trigger": 34})})  # three micro-batches: the watermark moves twice
    for i, lines in enumerate(files):
        Path(s.input, f"fuzz-{i:04d}.jsonl").write_bytes(b"\n".join(line for _, line in lines) + b"\n")
    every = [line for lines in files for line in lines]
    kinds = {k for k, _ in every}
    assert len(every) >= 10_000 and {"huge", "deep", "invalid_utf8", "far_future", "nan"} <= kinds

    run_available_now(spark, s)  # raises if any query stopped

    bronze = read(spark, s, "bronze/events").count()
    silver = read(spark, s, "silver/events")
    quarantine = read(spark, s, "silver/quarantine")
    assert bronze == len(every)
    ids = [r.event_id for r in silver.select("event_id").collect()]
    assert len(ids) == len(set(ids))  # each event once
    # Dedupe keeps the first delivery of each contract-valid event: the ones in silver, and
    # the ones the quality suite then dropped to the quarantine (their raw is the event's JSON).
    dropped = quarantine.where(F.col("reason").startswith("expectation:")).select(
        F.get_json_object("raw", "$.event_id").alias("event_id"))
    kept = set(ids) | {r.event_id for r in dropped.collect()}
    # A redelivered line of such an event is a removed duplicate; nothing else is.
    seen: set[bytes] = set()
    removed = 0
    for lines in files:
        for kind, line in lines:
            if line in seen and kind != "empty" and _event_ids(line) & kept:
                removed += 1
            seen.add(line)
    assert silver.count() + quarantine.count() + removed == bronze  # conservation
    assert quarantine.where(F.col("reason").isNull()).count() == 0
    bad = silver.where(F.isnan("price") | (F.abs("price") == float("inf")) | F.col("event_time").isNull()
                       | (F.year("event_time") != 2026))
    assert bad.count() == 0, bad.select("event_id", "price", "event_time").limit(5).collect()
    assert silver.where("late").count() == 0  # no far-future event moved the watermark


def _event_ids(line: bytes) -> set[str]:
    """Every ``event_id`` value written in the line (a line with duplicate keys has two)."""
    return set(re.findall(r'"event_id": "([^"]*)"', line.decode("utf-8", "replace")))
