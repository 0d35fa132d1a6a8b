"""Swarm's DNS as a container sees it: Docker's embedded resolver, asked from its network.

Caddy finds a project's tasks by looking its service name up (runtime/caddy.py), as a project's
tasks find each other, and swarm drops an old task from that name a moment after an update
completes, not when it says so. Only a socket inside a container's network namespace reaches the
resolver that container asks (127.0.0.11 there), so a deploy can wait for what Caddy (or the
project) will see instead of guessing how long that takes. Entering the namespace needs root
(CAP_SYS_ADMIN); without it, `resolver_in` fails and the caller falls back to a fixed wait.

dnspython is imported when a deploy first asks: an idle daemon does not need it.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dns.message

EMBEDDED_RESOLVER = "127.0.0.11"  # Docker's DNS, in every container on a user-defined network
CLONE_NEWNET = 0x40000000  # setns(2): the namespace is a network namespace


def resolver_in(pid: int) -> socket.socket:
    """A UDP socket that lives in process `pid`'s network namespace; OSError if it cannot be made.

    setns moves only the calling thread, so a short-lived thread enters the namespace and makes
    the socket there: a socket stays in the namespace it was made in, whichever thread uses it,
    and the daemon's own threads never leave the host's network. Close it when done: while it is
    open, it keeps the namespace alive.
    """
    made: list[socket.socket] = []
    failed: list[OSError] = []

    def make() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            namespace = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        except OSError as err:
            failed.append(err)
            return
        try:
            if libc.setns(namespace, CLONE_NEWNET) != 0:
                errno = ctypes.get_errno()
                failed.append(OSError(errno, f"cannot enter the network of process {pid}: {os.strerror(errno)}"))
                return
            resolver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            resolver.setblocking(False)  # dnspython's timeout holds only then: a blocking one waits forever
            made.append(resolver)
        finally:
            os.close(namespace)

    thread = threading.Thread(target=make, name="swarm-dns-setns")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]


def addresses(resolver: socket.socket, name: str, timeout: float) -> frozenset[str]:
    """The IPv4 addresses `name` has now, asked through `resolver` (none if it does not
    resolve); TimeoutError if the resolver does not answer in `timeout`, OSError if it answers
    nonsense."""
    import dns.exception
    import dns.query
    import dns.rdatatype

    try:  # a stray datagram (the late answer to a query that timed out) is skipped, not taken for this one
        answer = dns.query.udp(address_query(name), EMBEDDED_RESOLVER, timeout=timeout, sock=resolver,
                               ignore_unexpected=True, ignore_errors=True)
    except dns.exception.Timeout:
        raise TimeoutError(f"Docker's DNS did not answer for {name} in {timeout} s") from None
    except dns.exception.DNSException as err:
        raise OSError(f"Docker's DNS gave no usable answer for {name}: {err}") from None
    return frozenset(str(record) for rrset in answer.answer if rrset.rdtype == dns.rdatatype.A for record in rrset)


def address_query(name: str) -> dns.message.Message:
    """The A query for `name`, with EDNS: Docker's DNS truncates an answer to 512 bytes
    otherwise (about 28 addresses), and an update of 20 replicas has 40 while it completes."""
    import dns.message

    return dns.message.make_query(name, "A", use_edns=0, payload=4096)
