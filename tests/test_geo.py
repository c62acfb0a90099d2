"""IP -> location: the networks file, the join on hand-built addresses, and the shipped file
against the generator's address plan."""

import ipaddress

import numpy as np
import pyarrow as pa
import pytest
from chispa import assert_df_equality

from pipelines.addresses import dotted_quads
from pipelines.config import load_settings
from pipelines.geo import Locator, ip_locations, locate, read_networks
from pipelines.inject import home_ip


def _file(tmp_path, text: str):
    path = tmp_path / "networks.csv"
    path.write_text("network,country,region\n" + text)
    return path


def test_each_address_gets_its_networks_location_or_none(spark, tmp_path):
    networks = ip_locations(spark, _file(tmp_path, "10.0.0.0/12,US,California\n10.16.0.0/12,JP,Tokyo\n"))
    ips = ["10.0.0.1", "10.15.255.255", "10.16.0.0", "10.32.0.0", "192.168.1.1", "2001:db8::1",
           "10.300.1.1", "10.0.0", "not an ip", None]
    events = spark.createDataFrame([(f"e{i}", ip) for i, ip in enumerate(ips)], "event_id string, ip string")
    got = events.transform(locate(networks))
    expected = spark.createDataFrame([
        ("e0", "10.0.0.1", "US", "California"),
        ("e1", "10.15.255.255", "US", "California"),  # the /12's last address
        ("e2", "10.16.0.0", "JP", "Tokyo"),           # the next one's first
        ("e3", "10.32.0.0", None, None),              # in no network
        ("e4", "192.168.1.1", None, None),
        ("e5", "2001:db8::1", None, None),            # IPv6: not in an IPv4 table
        ("e6", "10.300.1.1", None, None),             # an octet above 255
        ("e7", "10.0.0", None, None),
        ("e8", "not an ip", None, None),
        ("e9", None, None, None),
    ], "event_id string, ip string, ip_country string, ip_region string")
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)


def test_a_bad_networks_file_is_refused_with_its_line(tmp_path):
    with pytest.raises(ValueError, match="networks.csv:3: not an IPv4 network: '10.1.2.3/40'"):
        read_networks(_file(tmp_path, "10.0.0.0/12,US,California\n10.1.2.3/40,US,Texas\n"))
    with pytest.raises(ValueError, match="2-letter code, got 'USA'"):
        read_networks(_file(tmp_path, "10.0.0.0/12,USA,California\n"))
    with pytest.raises(ValueError, match="networks overlap: 10.0.0.0 and 10.8.0.0"):
        read_networks(_file(tmp_path, "10.8.0.0/16,US,Texas\n10.0.0.0/12,US,California\n"))


def test_the_shipped_file_locates_every_region_of_the_generators_address_plan():
    networks = read_networks(load_settings(environ={}).geo.ip_locations)
    expected = [("US", "California"), ("US", "New York"), ("US", "Texas"), ("GB", "England"),
                ("GB", "Scotland"), ("DE", "Bavaria"), ("DE", "Berlin"), ("FR", "Ile-de-France"),
                ("NL", "North Holland"), ("IN", "Maharashtra"), ("IN", "Karnataka"), ("JP", "Tokyo"),
                ("AU", "New South Wales"), ("BR", "Sao Paulo"), ("CA", "Ontario")]

    def where(ip: str) -> tuple[str, str] | None:
        n = int(ipaddress.IPv4Address(ip))
        return next(((x.country, x.region) for x in networks if x.first <= n <= x.last), None)

    for region, place in enumerate(expected):
        assert {where(home_ip(u, region)) for u in (0, 1, 65_535, 65_536, 2**20 - 1)} == {place}
    assert where("172.16.3.1") == ("US", "Virginia")  # the bots' hosting network


def test_the_drivers_locator_of_many_addresses_gives_each_networks_location_or_none(tmp_path):
    """``Locator.many`` (numpy's binary search over the batch's dotted quads) on the addresses
    of the Spark test above: the same places, the networks' edges included."""
    locator = Locator(read_networks(_file(tmp_path, "10.0.0.0/12,US,California\n10.16.0.0/12,JP,\n")))
    ips = ["10.0.0.1", "10.15.255.255", "10.16.0.0", "10.32.0.0", "9.255.255.255", "0.0.0.0"]
    numbers = np.array([int(ipaddress.IPv4Address(ip)) for ip in ips], np.int64)
    country, region = locator.many(numbers)
    assert country.to_pylist() == ["US", "US", "JP", None, None, None]
    assert region.to_pylist() == ["California", "California", None, None, None, None]  # no region: None
    nowhere = Locator([]).many(numbers)
    assert nowhere[0].to_pylist() == [None] * 6 and nowhere[1].to_pylist() == [None] * 6


def test_plain_dotted_quads_are_parsed_in_arrow_and_every_other_value_is_left_out():
    ips = pa.array(["10.0.0.1", "010.002.3.4", "1.2.3.256", "1.2.3.4\n", " 1.2.3.4", "::1", None, "1.2.3",
                    "\u0661.2.3.4", "255.255.255.255"])
    quad, octets = dotted_quads(ips)
    assert quad.tolist() == [True, True, False, False, False, False, False, False, False, True]
    assert octets.tolist() == [[10, 0, 0, 1], [10, 2, 3, 4], [255, 255, 255, 255]]
