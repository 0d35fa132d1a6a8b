"""The overlay encryption choice (runtime/ipsec.py) and the networks it makes (runtime/docker_specs.py).
Encrypted overlays cannot run on this machine kind (its kernel has no ESP), so the choice is
tested as data, and the probe against this kernel."""

from __future__ import annotations

import os

import pytest

from runtime import ipsec
from runtime.docker_specs import overlay_network


def test_auto_encrypts_only_where_the_kernel_can_and_says_which():
    assert ipsec.choose("auto", True).on
    off = ipsec.choose("auto", False)
    assert not off.on and "no IPsec ESP" in off.why and "in clear" in off.why
    assert not ipsec.choose("off", True).on and "overlay_encryption = off" in ipsec.choose("off", True).why
    assert ipsec.choose("on", True).on


def test_on_where_the_kernel_cannot_is_refused_naming_the_fix():
    with pytest.raises(ValueError, match="no IPsec ESP.*AEAD algorithm not found.*set it to auto or off"):
        ipsec.choose("on", False, "Error: Requested AEAD algorithm not found.")


def test_networks_are_encrypted_only_when_chosen():
    labels = {"disco.instance": "t"}
    assert overlay_network(labels, encrypted=True) == {"driver": "overlay", "attachable": True, "labels": labels,
                                                       "options": {"encrypted": ""}}
    assert overlay_network(labels, encrypted=False)["options"] is None


@pytest.mark.skipif(os.geteuid() != 0, reason="the probe makes a network namespace: root only")
def test_the_probe_asks_this_kernel_and_says_what_it_answered():
    supported, said = ipsec.esp_supported()
    # This machine kind's kernel has no ESP (../shared/MACHINE-FACTS.md); elsewhere it may.
    assert supported or said, "a refusal names the kernel's reason"
    if not supported:
        assert ipsec.choose("auto", supported, said).on is False
