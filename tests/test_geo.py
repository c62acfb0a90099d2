"""IP -> location: the networks file, the join on hand-built addresses, and the shipped file
against the generator's address plan."""

import ipaddress

import pytest
from chispa import assert_df_equality

from pipelines.config import load_settings
from pipelines.geo import ip_locations, locate, read_networks
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
