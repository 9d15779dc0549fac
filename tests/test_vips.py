"""Service Connect endpoint addresses: the block a network leaves, and who gets which (pure)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshlocal.errors import DataPlaneError
from meshlocal.vips import allocate, container_range, emulator_address, vip_block


def test_containers_get_the_lower_half_and_vips_the_last_24_outside_it() -> None:
    assert container_range("172.22.0.0/16") == "172.22.0.0/17"
    block = vip_block("172.22.0.0/16", "172.22.0.0/17", "172.22.0.1")
    # The last host is the SNS/SQS emulator's (emulator_address).
    assert block[0] == "172.22.255.1" and block[-1] == "172.22.255.253"
    assert len(block) == 253
    assert emulator_address("172.22.0.0/16") == "172.22.255.254"
    assert not set(block) & {str(a) for a in ipaddress.ip_network("172.22.0.0/17")}
    # Docker's /20 pools (192.168.x) work the same way.
    assert vip_block("192.168.16.0/20", "192.168.16.0/21", "192.168.16.1")[0] == "192.168.31.1"


def test_the_gateway_is_never_a_vip() -> None:
    assert "10.9.255.1" not in vip_block("10.9.0.0/16", "10.9.0.0/17", "10.9.255.1")


@pytest.mark.parametrize(
    ("subnet", "ip_range", "words"),
    [
        ("172.22.0.0/16", None, "no range reserved"),  # a network made by an older meshlocal
        ("172.22.0.0/24", "172.22.0.0/25", "too small"),
        ("", "172.22.0.0/17", "no IPv4 subnet"),
        ("fd00::/64", None, "no IPv4 subnet"),
        ("172.22.0.0/16", "fd00::/80", "not IPv4"),
    ],
)
def test_a_network_without_a_usable_block_is_a_clear_error(
    subnet: str, ip_range: str | None, words: str
) -> None:
    with pytest.raises(DataPlaneError, match=words) as info:
        vip_block(subnet, ip_range)
    assert info.value.hint  # says how to fix it


def test_previous_addresses_are_kept_and_new_names_get_the_lowest_free() -> None:
    block = ["10.0.255.1", "10.0.255.2", "10.0.255.3"]
    first = allocate(["web", "api"], block)
    assert first == {"api": "10.0.255.1", "web": "10.0.255.2"}
    # A new endpoint that sorts first does not move the others.
    second = allocate(["aaa", "api", "web"], block, first)
    assert second == {"aaa": "10.0.255.3", "api": "10.0.255.1", "web": "10.0.255.2"}
    # A removed endpoint frees its address.
    assert allocate(["aaa", "web"], block, second)["web"] == "10.0.255.2"


def test_a_damaged_previous_map_never_gives_two_endpoints_one_address() -> None:
    block = ["10.0.255.1", "10.0.255.2"]
    got = allocate(["a", "b"], block, {"a": "10.0.255.2", "b": "10.0.255.2"})
    assert sorted(got.values()) == block
    # An address outside the block is not kept either.
    assert allocate(["a"], block, {"a": "192.0.2.7"}) == {"a": "10.0.255.1"}


def test_running_out_of_addresses_is_a_clear_error() -> None:
    with pytest.raises(DataPlaneError, match="no Service Connect address left"):
        allocate(["a", "b", "c"], ["10.0.255.1", "10.0.255.2"])


names = st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True), max_size=12, unique=True)


@given(before=names, after=names)
def test_allocation_is_unique_within_the_block_and_stable(
    before: list[str], after: list[str]
) -> None:
    block = vip_block("172.30.0.0/16", "172.30.0.0/17")
    first = allocate(before, block)
    second = allocate(after, block, first)
    assert set(second) == set(after)
    assert len(set(second.values())) == len(second)
    assert set(second.values()) <= set(block)
    for name in set(before) & set(after):
        assert second[name] == first[name]
