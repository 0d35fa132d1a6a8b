"""Where each domain's certificate stands, as people need to see it: issued (by whom, until
when), pending, failed (the CA's reason), or none (and why a name cannot have one).

Caddy obtains and renews the certificates (runtime/caddy.py); this reads what it serves for a
name and what it logged about it, and checks a new domain's DNS before it is added.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from hooks.platform import Platform
from runtime import dns
from runtime.caddy import CertificateEvent, certificate_problem, read_certificate_events, served_certificate

DNS_CHECK_SECONDS = 3.0


@dataclass(frozen=True)
class CertificateStatus:
    state: str  # "issued", "pending", "failed" or "none"
    issuer: str = ""
    expires_at: str = ""  # ISO 8601, UTC
    reason: str = ""  # why not issued (or what went wrong with a renewal), in one line

    def as_json(self) -> dict:
        return asdict(self)


def domain_statuses(platform: Platform, project: str) -> list[tuple[str, CertificateStatus]]:
    """Each domain of the project with its certificate's status."""
    domains = [d["domain"] for d in platform.store.domains(project)]
    if not domains:
        return []
    routed = set(platform.router.hosts_of(project))
    events = read_certificate_events(platform.settings.run_dir) if platform.settings.tls else {}
    return [(domain, _status(platform, domain, domain in routed, events.get(domain))) for domain in domains]


def _status(platform: Platform, host: str, routed: bool, event: CertificateEvent | None) -> CertificateStatus:
    problem = certificate_problem(host, platform.settings.tls)
    if problem:
        return CertificateStatus("none", reason=problem)
    if not routed:
        return CertificateStatus("pending", reason="Caddy asks for a certificate once the project has a live "
                                                   "deployment to route this name to")
    served = served_certificate(platform.settings.https_port, host) if platform.router.is_up else None
    if served is not None and host in served.names and not served.self_signed_by_caddy:
        expires = served.expires_at.isoformat(timespec="seconds")
        if served.expires_at <= datetime.now(UTC):
            return CertificateStatus("failed", served.issuer, expires,
                                     f"the certificate expired and was not renewed: {event.error if event else ''}"
                                     .rstrip(": "))
        renewal = f"the last renewal failed: {event.error}" if event and event.error else ""
        return CertificateStatus("issued", served.issuer, expires, renewal)
    if not platform.router.is_up:
        return CertificateStatus("pending", reason=platform.router.proxy_error or "the proxy is starting")
    if event is not None and event.error:  # failed, and Caddy may be trying again meanwhile
        retrying = " (Caddy is trying again)" if event.state == "pending" else ""
        return CertificateStatus("failed", reason=event.error + retrying)
    return CertificateStatus("pending", reason="Caddy is obtaining it from the CA")


def dns_warning(platform: Platform, domain: str) -> str:
    """Why the domain's DNS may not reach this server ("" when it does, or nothing can be said).
    A warning only: DNS may be set up after the domain is added, or point at a load balancer."""
    if certificate_problem(domain, platform.settings.tls):
        return ""
    pool = ThreadPoolExecutor(max_workers=1)  # a resolver that hangs must not hold the request
    try:
        return pool.submit(dns.problem, domain).result(timeout=DNS_CHECK_SECONDS) or ""
    except FutureTimeout:
        return f"DNS for {domain} did not answer within {DNS_CHECK_SECONDS:.0f} s"
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # the look-up ends on its own, unwaited
