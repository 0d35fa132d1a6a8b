"""runtime/dns.py: where a name points and whether that is this server (the warning of
domains:add). Addresses are judged by binding a socket to them, which sends nothing."""

from __future__ import annotations

import pytest

from runtime import dns


def test_local_addresses_are_the_ones_a_socket_can_bind():
    assert dns.is_local_address("127.0.0.1") and dns.is_local_address("127.0.0.53")
    assert not dns.is_local_address("203.0.113.9")  # TEST-NET-3: never this machine's


def test_a_name_pointing_here_needs_no_warning(monkeypatch: pytest.MonkeyPatch):
    assert dns.addresses_of("localhost")
    monkeypatch.setattr(dns, "is_local_address", lambda address: address == "192.0.2.7")
    monkeypatch.setattr(dns, "addresses_of", lambda name: ["192.0.2.7"])
    assert dns.problem("www.example.com") is None


def test_a_name_pointing_at_loopback_is_no_use_to_a_ca():
    found = dns.problem("localhost")
    assert found is not None and "which no CA can reach" in found


def test_a_name_that_does_not_resolve_or_points_elsewhere_is_named(monkeypatch: pytest.MonkeyPatch):
    assert dns.problem("nothing.invalid") == ("DNS for nothing.invalid does not resolve (yet): add an A or AAAA "
                                              "record pointing to this server")
    monkeypatch.setattr(dns, "addresses_of", lambda name: ["203.0.113.9"])
    found = dns.problem("www.example.com")
    assert found is not None and found.startswith("DNS for www.example.com points to 203.0.113.9, not this server")
    monkeypatch.setattr(dns, "addresses_of", lambda name: ["203.0.113.9", "127.0.0.2"])
    monkeypatch.setattr(dns, "is_local_address", lambda address: address == "203.0.113.9")
    assert dns.problem("www.example.com") is None  # one of them is here
