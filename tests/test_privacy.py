"""Personal data: the keyed IP hash (Spark == the standard library's HMAC), the network prefix,
the lake's own key, redaction of quarantined text, and no raw IP past bronze."""

import hashlib
import hmac
import os
import re
import stat

import pytest
from chispa import assert_df_equality
from helpers import sample_addresses
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.sql import functions as F

from pipelines import tables as T
from pipelines.config import load_settings
from pipelines.geo import Locator, ip_locations, locate, read_networks
from pipelines.io.delta_rs import read as delta_read
from pipelines.io.ledger import rs_uri
from pipelines.privacy import (
    SALT_FILE,
    SALT_VARIABLE,
    hash_ip,
    ip_hash,
    ip_prefix,
    ip_salt,
    pseudonymize,
    redact,
)
from pipelines.silver import address_values, enrich_arrow

IPS = ["10.0.0.1", "172.16.3.200", "255.255.255.255", "2001:db8:1:2::7", "2001:DB8::1", "::1",
       "10.300.1.1", "not an ip", "", None, "010.1.2.3"]


@pytest.mark.parametrize("key", [b"k", b"s3cr3t" * 20])  # shorter and longer than SHA-256's block
def test_spark_hash_is_hmac_sha256_of_the_address(spark, key):
    df = spark.createDataFrame([(ip,) for ip in IPS], "ip string")
    got = [r.h for r in df.select(ip_hash(F.col("ip"), key).alias("h")).collect()]
    expected = [None if ip is None else hmac.new(key, ip.encode(), hashlib.sha256).hexdigest()[:32]
                for ip in IPS]
    assert got == expected
    assert [hash_ip(ip, key) for ip in IPS] == expected


def test_network_prefix(spark):
    df = spark.createDataFrame([(ip,) for ip in IPS], "ip string")
    expected = spark.createDataFrame(list(zip(IPS, [
        "10.0.0.0/24", "172.16.3.0/24", "255.255.255.0/24", "2001:db8:1::/48", "2001:db8:0::/48",
        "0:0:0::/48", None, None, None, None, "10.1.2.0/24"], strict=True)), "ip string, ip_prefix string")
    assert_df_equality(df.withColumn("ip_prefix", ip_prefix(F.col("ip"))), expected, ignore_nullable=True)


# What Java's regex ``$`` and Spark's casts make of odd values: a line terminator after an
# address, spaces, leading zeros, too many parts, non-ASCII digits, bare colons.
ODD = ["1.2.3.4\n", "1.2.3.4\r\n", "1.2.3.4\r", "1.2.3.4\u2028", "1.2.3.4\u0085", "1.2.3.4\n\n",
       "1.2.3.4 ", " 1.2.3.4", "2001:DB8::1\n", "2001:db8:1:2:3::\r\n", "::", ":::", "a:b", "a:b:c",
       "1.2.3.4.5", "999.1.1.1", "1.2.3.04", "\u0661.2.3.4", "01.002.3.4", "1..2.3", "fe80::1%eth0"]


def _enriched_both_ways(spark, ips: list[str | None], key: bytes):
    """(the Spark forms' rows, the driver's) of ``ips``: location, hash and prefix. The driver
    enriches them twice, remembering 7 addresses, so most of the second pass comes from its
    memory, and that memory has dropped addresses on the way: the second pass is returned."""
    path = load_settings(environ={}).geo.ip_locations
    events = spark.createDataFrame([(i, ip) for i, ip in enumerate(ips)], "n int, ip string")
    expected = events.transform(locate(ip_locations(spark, path))).transform(pseudonymize(key))
    values = address_values(Locator(read_networks(path)), key, remembered=7)
    first = enrich_arrow(events.toArrow(), values)
    second = enrich_arrow(events.toArrow(), values)
    assert second.equals(first)
    assert values.cache_info().currsize <= 7
    return spark.createDataFrame(second, expected.schema), expected


def test_the_drivers_enrichment_equals_the_spark_forms_on_the_sample_and_odd_values(spark):
    """The stream enriches each distinct address on the driver (``enrich_arrow``); a backfill
    runs the Spark forms (``locate``, ``pseudonymize``). Same rows for every address of the
    sample and for odd values."""
    ips = [*sorted(sample_addresses()), *IPS, *ODD]
    actual, expected = _enriched_both_ways(spark, ips, b"k")
    assert expected.where("ip_country IS NOT NULL").count() > 100  # the sample's are located
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


ADDRESS_LIKE = st.one_of(
    st.text(alphabet="0123456789.:abcdefABCDEF \n\r\u2028\u0661x%", max_size=18),
    st.tuples(*[st.integers(0, 300)] * 4).map(lambda o: ".".join(map(str, o))),
    st.lists(st.text(alphabet="0123456789abcdef", max_size=5), min_size=1, max_size=9).map(":".join),
    st.none())


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(ADDRESS_LIKE, min_size=50, max_size=200))
def test_the_drivers_enrichment_equals_the_spark_forms_on_generated_values(spark, ips):
    actual, expected = _enriched_both_ways(spark, ips, b"s3cr3t")
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_the_lake_keeps_one_private_key_unless_the_environment_gives_one(tmp_path):
    lake = str(tmp_path / "lake")
    first = ip_salt(lake, environ={})
    assert len(first) == 64 and ip_salt(lake, environ={}) == first  # made once, then read
    assert stat.S_IMODE(os.stat(tmp_path / "lake" / SALT_FILE).st_mode) == 0o600
    assert ip_salt(str(tmp_path / "other"), environ={}) != first
    assert ip_salt(lake, environ={SALT_VARIABLE: "from-vault"}) == b"from-vault"
    with pytest.raises(RuntimeError, match=SALT_VARIABLE):
        ip_salt("s3a://bucket/lake", environ={})


def test_redaction_hides_addresses_and_the_ip_value_only(spark):
    lines = ['{"event_id": "e1", "ip": "2001:db8::1", "event_time": "2026-11-02T12:30:45Z"',
             'garbage 10.1.2.3 and 1.2.3.4.5 and price 12.50',
             '{"ip":"10.0.0.9","price":"x"}']
    df = spark.createDataFrame([(x,) for x in lines], "raw string")
    got = [r.r for r in df.select(redact(F.col("raw")).alias("r")).collect()]
    assert got == ['{"event_id": "e1", "ip": "<ip>", "event_time": "2026-11-02T12:30:45Z"',
                   'garbage <ip> and 1.2.3.4.5 and price 12.50',
                   '{"ip":"<ip>","price":"x"}']


def _texts(value) -> list[str]:
    """Every value in ``value`` (rows, lists, dicts) as text."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [t for v in value for t in _texts(v)]
    return [] if value is None else [str(value)]


def test_no_raw_ip_of_the_input_reaches_silver_or_gold(sample_lake):
    """Every address in the sample's lines, searched for in every column of every silver and
    gold table (every value as text: a raw line's, a list's items), and the key that hashes
    them nowhere either. The tables are read on the driver (delta-rs): a search, not a
    transform."""
    addresses = sample_addresses()
    assert len(addresses) > 100
    key = ip_salt(sample_lake.lake).decode()
    names = ["silver/events", "silver/quarantine", *[t.name for t in T.GOLD_STREAM]]
    # An address or the key, not inside a longer address, number or hash, nor a network
    # (``ip_prefix``: "10.1.2.0/24" is kept on purpose, and the sample holds a few x.y.z.0).
    longest_first = sorted([*addresses, key], key=len, reverse=True)
    secret = re.compile(f"(?<![0-9A-Za-z.:])({'|'.join(map(re.escape, longest_first))})(?![0-9A-Za-z.:/])")
    found, rows_of = {}, {}
    for name in names:
        rows = rows_of[name] = delta_read(rs_uri(sample_lake.table(name))).to_pylist()
        assert rows or name == T.ANOMALY_SCORES.name, name  # a search of an empty table proves nothing
        text = "\n".join(_texts(rows))
        if hits := sorted(set(secret.findall(text))):
            found[name] = hits[:5]
    assert found == {}, f"raw addresses in {found}"
    flags = [f for f in rows_of[T.FRAUD_FLAGS.name] if f["entity_type"] == "ip"]
    assert flags and all(len(f["entity_id"]) == 32 for f in flags)  # hashed addresses
