"""DNS as this server sees it: where a name points, and whether that is here."""

from __future__ import annotations

import ipaddress
import socket


def addresses_of(name: str) -> list[str]:
    """The addresses `name` resolves to (none if it does not resolve)."""
    try:
        found = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []
    return sorted({str(info[4][0]) for info in found})


def is_local_address(address: str) -> bool:
    """Whether `address` is one of this machine's: only then can a socket be bound to it."""
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, 0))
        except OSError:
            return False
    return True


def problem(name: str) -> str | None:
    """Why `name` may not reach this server, or None when it points here."""
    addresses = addresses_of(name)
    if not addresses:
        return f"DNS for {name} does not resolve (yet): add an A or AAAA record pointing to this server"
    if all(ipaddress.ip_address(address).is_loopback or ipaddress.ip_address(address).is_unspecified
           for address in addresses):
        return f"DNS for {name} points to {', '.join(addresses)}, which no CA can reach: point it at this server"
    if not any(is_local_address(address) for address in addresses):
        return (f"DNS for {name} points to {', '.join(addresses)}, not this server "
                "(fine behind a load balancer or NAT; otherwise the certificate cannot be issued)")
    return None
