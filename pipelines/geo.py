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

import csv
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.common import Transform

SCHEMA = "ip_first long, ip_last long, ip_country string, ip_region string"
COLUMNS = ("ip_country", "ip_region")


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


def ipv4_number(ip: Column) -> Column:
    """A dotted IPv4 address as its 32-bit number; null for anything else."""
    parts = F.split(ip, r"\.")
    octets = [parts.getItem(i).try_cast("int") for i in range(4)]
    shaped = ip.rlike(r"^[0-9]{1,3}(\.[0-9]{1,3}){3}$")
    in_range = F.greatest(*octets) <= 255
    number = sum((o.cast("long") * (256 ** (3 - i)) for i, o in enumerate(octets)), F.lit(0).cast("long"))
    return F.when(shaped & in_range, number)


def locate(locations: DataFrame) -> Transform:
    """Events with ``ip`` -> the same events with ``ip_country`` and ``ip_region`` (grain
    unchanged: networks do not overlap, so an address falls in at most one)."""
    def _(events: DataFrame) -> DataFrame:
        net = F.broadcast(locations).alias("net")
        located = events.withColumn("_ip_number", ipv4_number(F.col("ip")))
        joined = located.join(net, (F.col("_ip_number") >= F.col("net.ip_first"))
                              & (F.col("_ip_number") <= F.col("net.ip_last")), "left")
        return joined.drop("_ip_number", "ip_first", "ip_last")
    return _
