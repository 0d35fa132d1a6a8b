"""runtime/swarm_dns.py on its own: the query it sends, and a socket made in another network
namespace. The whole wait runs on real swarm DNS in tests/test_deploy.py."""

from __future__ import annotations

import os
import socket

import pytest

from runtime import swarm_dns


def test_the_query_has_room_for_every_address_of_an_update_of_20_replicas():
    query = swarm_dns.address_query("t-shop-web")
    assert [str(question.name) for question in query.question] == ["t-shop-web."]
    # Without EDNS, Docker's DNS cuts the answer at 512 bytes: about 28 of the 40 addresses.
    assert query.edns == 0 and query.payload >= 40 * 16 + 512


@pytest.mark.skipif(os.geteuid() != 0, reason="entering a network namespace needs root")
def test_a_resolver_made_in_a_namespace_without_docker_dns_times_out_instead_of_waiting_forever():
    with swarm_dns.resolver_in(os.getpid()) as resolver:  # this process's own namespace: allowed, and visible
        assert resolver.type == socket.SOCK_DGRAM
        assert not resolver.getblocking(), "dnspython's timeout holds only on a non-blocking socket"
        # No Docker DNS in the host's namespace: a timeout, which the engine asks again after.
        with pytest.raises(TimeoutError, match="did not answer for t-shop-web in 0.2 s"):
            swarm_dns.addresses(resolver, "t-shop-web", timeout=0.2)


def test_a_process_that_is_gone_gives_an_os_error_the_engine_falls_back_on():
    with pytest.raises(OSError):
        swarm_dns.resolver_in(2**22 + 1)  # above the kernel's pid_max on every default
