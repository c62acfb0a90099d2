"""IP -> location: a table of IPv4 networks (``geo.ip_locations``, by default
``data/geo/ip_locations.csv``), joined to each silver event by its address.

The file has one row per network: ``network`` (CIDR), ``country`` (ISO 3166-1 alpha-2) and
``region``. Networks may not overlap. It is small (a country-level export holds a few
hundred thousand rows), so Spark broadcasts it and joins on the address's number falling in
a network's [first, last] range. An address in no network, an IPv6 address, a missing one
or one that is not an address gets null ``ip_country`` and ``ip_region``: the event is kept,
its location unknown (docs/bad-input.md).
"""

from __future__ import annotations

import bisect
import csv
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.addresses import ipv4_number, ipv4_octets, py_ipv4_number, py_ipv4_octets
from pipelines.common import Transform

SCHEMA = "ip_first long, ip_last long, ip_country string, ip_region string"
COLUMNS = ("ip_country", "ip_region")
_PLACES = pa.schema([("country", pa.string()), ("region", pa.string())])
BLOCK_BITS = 16  # ``locate`` joins on the address's /16 block


@dataclass(frozen=True)
class Network:
    first: int
    last: int
    country: str
    region: str


def read_networks(path: str | Path) -> list[Network]:
    """The file's networks, sorted; a clear ValueError for a bad row or an overlap."""
    out = []
    with open(path, newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            try:
                net = ipaddress.IPv4Network(row["network"].strip())
            except (ValueError, KeyError, AttributeError) as err:
                raise ValueError(f"{path}:{line}: not an IPv4 network: {row.get('network')!r} "
                                 f"({err})") from None
            country, region = (row.get("country") or "").strip(), (row.get("region") or "").strip()
            if len(country) != 2:
                raise ValueError(f"{path}:{line}: country must be a 2-letter code, got {country!r}")
            out.append(Network(int(net.network_address), int(net.broadcast_address), country, region or None))
    out.sort(key=lambda n: n.first)
    for a, b in zip(out, out[1:], strict=False):
        if b.first <= a.last:
            raise ValueError(f"{path}: networks overlap: {ipaddress.IPv4Address(a.first)} and "
                             f"{ipaddress.IPv4Address(b.first)}")
    return out


def ip_locations(spark: SparkSession, path: str | Path) -> DataFrame:
    """The networks as a small DataFrame (``SCHEMA``), ready to broadcast."""
    rows = [(n.first, n.last, n.country, n.region) for n in read_networks(path)]
    return spark.createDataFrame(rows, SCHEMA)


def locate(locations: DataFrame) -> Transform:
    """Events with ``ip`` -> the same events with ``ip_country`` and ``ip_region`` (grain
    unchanged: networks do not overlap, so an address falls in at most one).

    A range join alone is a nested loop (every event against every network). So both sides
    also carry the /16 block of the address (a network: each block it spans), the join is
    an equi-join on the block, and the range condition picks the network within it."""
    def _(events: DataFrame) -> DataFrame:
        blocks = F.sequence(F.shiftright("ip_first", BLOCK_BITS), F.shiftright("ip_last", BLOCK_BITS))
        net = F.broadcast(locations.withColumn("_net_block", F.explode(blocks))).alias("net")
        located = events.withColumn("_ip_octets", ipv4_octets(F.col("ip"))).withColumn(
            "_ip_number", ipv4_number(F.col("_ip_octets"))).withColumn(
            "_ip_block", F.shiftright("_ip_number", BLOCK_BITS))
        joined = located.join(net, (F.col("_ip_block") == F.col("net._net_block"))
                              & (F.col("_ip_number") >= F.col("net.ip_first"))
                              & (F.col("_ip_number") <= F.col("net.ip_last")), "left")
        return joined.drop("_ip_octets", "_ip_number", "_ip_block", "_net_block", "ip_first", "ip_last")
    return _


class Locator:
    """``locate`` for one address at a time, in Python: the networks sorted by first address,
    searched by bisection (the stream's driver: ``silver.enrich_arrow``)."""

    def __init__(self, networks: list[Network]):
        self.networks = networks
        self.firsts = [n.first for n in networks]
        self._firsts = np.array(self.firsts, np.int64)
        self._lasts = np.array([n.last for n in networks], np.int64)
        self._places = pa.table({"country": [n.country for n in networks],
                                 "region": [n.region for n in networks]}, schema=_PLACES)

    def many(self, numbers: np.ndarray) -> tuple[pa.Array, pa.Array]:
        """``ip_country`` and ``ip_region`` of many IPv4 numbers at once (numpy's binary
        search; null where no network holds one)."""
        if not self.networks:
            return pa.nulls(len(numbers), pa.string()), pa.nulls(len(numbers), pa.string())
        i = np.searchsorted(self._firsts, numbers, side="right") - 1
        held = (i >= 0) & (numbers <= self._lasts[np.maximum(i, 0)])
        places = self._places.take(pa.array(np.where(held, i, 0), pa.int64(), mask=~held))
        return places["country"].combine_chunks(), places["region"].combine_chunks()

    def __call__(self, ip: str | None) -> tuple[str | None, str | None]:
        number = py_ipv4_number(py_ipv4_octets(ip))
        if number is None:
            return None, None
        i = bisect.bisect_right(self.firsts, number) - 1
        if i < 0 or number > self.networks[i].last:
            return None, None
        return self.networks[i].country, self.networks[i].region
