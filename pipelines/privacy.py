"""Personal data: the raw IP address stays in bronze; silver and gold carry a keyed hash.

- ``ip_hash``: HMAC-SHA256 of the address under a secret key, as 32 hex characters. The
  same address always gives the same hash on one lake (so the IP fraud rule and the users
  per IP feature still work), and without the key nobody can test addresses against it (an
  unkeyed hash of the 2^32 IPv4 addresses is a lookup table away from the address).
- ``ip_prefix``: the network, ``a.b.c.0/24`` for IPv4 and the first 48 bits for IPv6
  (``2001:db8:1::/48``): coarse enough to name no household, fine enough for a rule that
  watches a network.

The key is ``FUNNELHOUSE_IP_SALT`` when set (production: a secret from the deployment's vault,
the same for every job on the lake). Otherwise the lake keeps its own random key in
``<lake>/_secrets/ip_salt`` (mode 0600), made on first use, so a local lake needs no setup and
its hashes stay stable across runs and backfills. A lake on object storage needs the variable.
Changing the key changes every hash: docs/operations.md says what to rebuild.

``hash_ip`` is the same function in plain Python (the tests check the two agree, and map the
generator's ground truth of IPs to hashes with it).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column
from pyspark.sql import functions as F

from pipelines.addresses import ANY_IPV4, IPV6, IPV6_BODY, ipv4_octets, java_whole_match, py_ipv4_octets

PSEUDONYM = ("ip_hash", "ip_prefix")  # the silver columns that replace ``ip``
SALT_VARIABLE = "FUNNELHOUSE_IP_SALT"
SALT_FILE = "_secrets/ip_salt"
HEX_CHARS = 32  # 128 bits of the HMAC: no collision among any realistic number of addresses
_BLOCK = 64  # SHA-256's block size, in bytes

# What ``redact`` hides in text: dotted quads anywhere (``ANY_IPV4``), and the value of an "ip" key.
_IP_VALUE = r'("ip"\s*:\s*")[^"]*(")'
REDACTED = "<ip>"


def ip_salt(lake: str, environ: Mapping[str, str] | None = None) -> bytes:
    """The key of ``ip_hash`` on ``lake``: ``FUNNELHOUSE_IP_SALT``, else the lake's own key
    (made on first use). A lake URI without the variable is an error that says so."""
    environ = os.environ if environ is None else environ
    if environ.get(SALT_VARIABLE):
        return environ[SALT_VARIABLE].encode()
    if "://" in lake:
        raise RuntimeError(f"{SALT_VARIABLE} is not set: a lake on {lake.split('://')[0]}:// needs the IP "
                           "hashing key from the environment (docs/operations.md)")
    path = Path(lake, SALT_FILE)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        os.replace(path.with_suffix(".tmp"), path)
    return path.read_text().strip().encode()


def hash_ip(ip: str | None, key: bytes) -> str | None:
    """The ``ip_hash`` of one address, in Python."""
    if ip is None:
        return None
    return hmac.new(key, ip.encode(), hashlib.sha256).hexdigest()[:HEX_CHARS]


def hash_ips(ips: list[str], key: bytes) -> list[str]:
    """``hash_ip`` of many addresses (none null): the keyed state is set up once."""
    keyed = hmac.new(key, digestmod=hashlib.sha256)
    out = []
    for ip in ips:
        h = keyed.copy()
        h.update(ip.encode())
        out.append(h.hexdigest()[:HEX_CHARS])
    return out


def ipv4_prefixes(octets: np.ndarray) -> pa.Array:
    """``py_ip_prefix`` of dotted quads, from their octets (rows of four): ``a.b.c.0/24``."""
    parts = [pa.array(octets[:, k]).cast(pa.string()) for k in range(3)]
    return pc.binary_join_element_wise(*parts, pa.scalar("0/24"), ".")


def ip_hash(ip: Column, key: bytes) -> Column:
    """HMAC-SHA256 of ``ip`` (its UTF-8 bytes) under ``key``, in Spark SQL (RFC 2104: two
    SHA-256 passes over the padded key): the first ``HEX_CHARS`` hex digits; null for null."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    inner_key = bytearray(b ^ 0x36 for b in key)
    outer_key = bytearray(b ^ 0x5C for b in key)
    inner = F.unhex(F.sha2(F.concat(F.lit(inner_key), ip.cast("binary")), 256))
    return F.when(ip.isNotNull(), F.substring(F.sha2(F.concat(F.lit(outer_key), inner), 256), 1, HEX_CHARS))


def ip_prefix(ip: Column) -> Column:
    """``a.b.c.0/24`` of an IPv4 address (its octets as numbers), ``g1:g2:g3::/48`` of an IPv6
    one (groups as written, lower case, ``::`` expanded where it falls in the first three);
    null for anything else."""
    octets = ipv4_octets(ip)
    v4 = F.concat_ws(".", *[octets.getItem(i).cast("string") for i in range(3)], F.lit("0/24"))
    head = F.filter(F.split(F.substring_index(F.lower(ip), "::", 1), ":"), lambda g: g != "")
    groups = F.when(ip.contains("::"), F.concat(head, F.array(*[F.lit("0")] * 3))).otherwise(head)
    v6 = F.concat(F.concat_ws(":", F.slice(groups, 1, 3)), F.lit("::/48"))
    six_ok = ip.rlike(IPV6) & (F.size(groups) >= 3)
    return F.when(octets.isNotNull(), v4).when(six_ok, v6)


def py_ip_prefix(ip: str | None) -> str | None:
    """``ip_prefix`` of one address, in Python (the stream's driver: ``silver.enrich_arrow``)."""
    if ip is None:
        return None
    octets = py_ipv4_octets(ip)
    if octets is not None:
        return ".".join(str(o) for o in octets[:3] if o is not None) + ".0/24"
    low = ip.lower()
    groups = [g for g in low.split("::", 1)[0].split(":") if g != ""]
    if "::" in low:
        groups += ["0"] * 3
    if java_whole_match(IPV6_BODY, ip) and len(groups) >= 3:
        return ":".join(groups[:3]) + "::/48"
    return None


def pseudonymize(key: bytes):
    """Events with ``ip`` -> the same events with ``ip_hash`` and ``ip_prefix`` and no ``ip``."""
    return lambda events: (events.withColumn("ip_hash", ip_hash(F.col("ip"), key))
                           .withColumn("ip_prefix", ip_prefix(F.col("ip"))).drop("ip"))


def redact(text: Column) -> Column:
    """Text (a quarantined raw line) with every dotted IPv4 address and the value of any
    ``"ip"`` key replaced by ``<ip>``; bronze keeps the original line."""
    return F.regexp_replace(F.regexp_replace(text, _IP_VALUE, f"$1{REDACTED}$2"), ANY_IPV4, REDACTED)
