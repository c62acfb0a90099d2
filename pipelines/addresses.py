"""IP addresses in event text, parsed one way for every column that reads them: the location
join (``geo.locate``), the network prefix (``privacy.ip_prefix``) and the redaction of
quarantined lines (``privacy.redact``)."""

from __future__ import annotations

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
