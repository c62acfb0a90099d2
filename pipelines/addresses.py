"""IP addresses in event text, parsed one way for every column that reads them: the location
join (``geo.locate``), the network prefix (``privacy.ip_prefix``) and the redaction of
quarantined lines (``privacy.redact``).

Each parse has a Spark form (the batch build, and the stream's redaction) and a Python form
(``py_``: the stream's driver enriches each distinct address of a micro-batch once,
``silver.enrich_arrow``); ``tests/test_privacy.py`` holds the two to the same values, odd
input included."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column
from pyspark.sql import functions as F

IPV4 = r"^[0-9]{1,3}(\.[0-9]{1,3}){3}$"  # a whole value: four dotted numbers
IPV6 = r"^[0-9A-Fa-f:]*:[0-9A-Fa-f:]*$"
ANY_IPV4 = r"(?<![0-9.])[0-9]{1,3}(\.[0-9]{1,3}){3}(?![0-9.])"  # a dotted quad anywhere in text


def ipv4_octets(ip: Column) -> Column:
    """The four numbers of a dotted IPv4 address, as ``array<int>``; null for anything else
    (IPv6, an octet above 255, three parts, text, null)."""
    octets = F.split(ip, r"\.", 5).try_cast("array<int>")
    return F.when(ip.rlike(IPV4) & (F.array_max(octets) <= 255), octets)


def ipv4_number(octets: Column) -> Column:
    """``ipv4_octets`` as the address's 32-bit number (null stays null)."""
    parts = [octets.getItem(i).cast("long") for i in range(4)]
    return parts[0] * 16777216 + parts[1] * 65536 + parts[2] * 256 + parts[3]


# Java's ``$`` (the Spark patterns above) also matches before one line terminator that ends the
# text; Python's only before ``\n``. The Python forms match the patterns' bodies whole, with
# that one terminator allowed.
_LINE_END = re.compile(r"(?:\r\n|[\n\r\u0085\u2028\u2029])\Z")
IPV4_BODY = re.compile(IPV4[1:-1])
IPV6_BODY = re.compile(IPV6[1:-1])


def java_whole_match(body: re.Pattern, text: str) -> bool:
    """``text`` rlike ``^body$`` as Java (so Spark) matches it."""
    if body.fullmatch(text):
        return True
    end = _LINE_END.search(text)
    return bool(end and body.fullmatch(text[:end.start()]))


def py_ipv4_octets(ip: str | None) -> list[int | None] | None:
    """``ipv4_octets`` in Python: the four numbers, None for anything else (an octet that is
    not a number after Spark's cast, as one with the line terminator, is None in the list)."""
    if ip is None or not java_whole_match(IPV4_BODY, ip):
        return None
    octets = [_spark_int(part) for part in ip.split(".", 4)]
    top = max((o for o in octets if o is not None), default=None)  # array_max skips nulls
    return octets if top is not None and top <= 255 else None


def py_ipv4_number(octets: list[int | None] | None) -> int | None:
    if octets is None or any(o is None for o in octets):
        return None
    return octets[0] * 16777216 + octets[1] * 65536 + octets[2] * 256 + octets[3]


def _spark_int(text: str) -> int | None:
    """Spark's cast of a string of digits (and surrounding whitespace) to int."""
    digits = text.strip()
    return int(digits) if digits.isascii() and digits.isdigit() else None


# A plain dotted quad (ASCII digits, nothing around them): RE2's ``$`` is the end of the text,
# so the values a line terminator follows are left to ``py_ipv4_octets``.
_QUAD = r"^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$"


def dotted_quads(ips: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Which of ``ips`` are plain dotted quads of octets up to 255, and their octets (one row
    of four per such address), in Arrow: the values ``py_ipv4_octets`` gives them, with no
    Python per address. Every other value (IPv6, a line terminator after the quad, an octet
    above 255, null) is left out, for ``py_ipv4_octets``."""
    quad = pc.fill_null(pc.match_substring_regex(ips, _QUAD), False).to_numpy(zero_copy_only=False)
    parts = pc.split_pattern(ips.filter(pa.array(quad)), ".")
    octets = pc.cast(pc.list_flatten(parts), pa.int64()).to_numpy().reshape(-1, 4)
    small = (octets <= 255).all(axis=1)
    where = np.flatnonzero(quad)
    quad[where[~small]] = False
    return quad, octets[small]
