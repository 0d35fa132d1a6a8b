"""Caddy: the edge proxy. Its config is generated from routes; its admin API is a unix socket.

With TLS on, Caddy obtains and renews a certificate for every public name it routes from the
ACME CA of the settings (Let's Encrypt by default), keeps them in its data volume (so restarts
never order again), redirects HTTP to HTTPS, and writes its certificate events to a log file in
the data dir's run/ (`read_certificate_events`); `served_certificate` reads the certificate it
serves for a name. Names no public CA can sign (localhost, IP addresses) keep Caddy's own CA.

A route points at a project's web service by its swarm DNS name, resolved by Caddy itself
(dynamic A upstreams, refreshed every 100 ms). A deploy therefore never changes the config:
swarm swaps the tasks behind the name. The config changes only when routes do (a project's
first deploy, a domain added, a port changed), because every change makes Caddy reload, and
a reload resets some keep-alive connections.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

ADMIN_SOCKET_NAME = "caddy-admin.sock"
API_SOCKET_NAME = "api.sock"  # the daemon's API, for Caddy to serve on the server's own domain
CONTAINER_RUN_DIR = "/run/disco"  # where the data dir's run/ is mounted in the Caddy container
TLS_LOG_NAME = "caddy-tls.log"  # Caddy's certificate events, in run/
ACME_ROOT_NAME = "acme-ca-root.pem"  # --acme-ca-root, copied into run/ for Caddy to read
# Caddy's loggers that tell what happens to certificates (obtain, renew, the ACME exchange).
TLS_LOGGERS = ["tls", "tls.obtain", "tls.renew", "tls.issuance.acme", "tls.cache.maintenance", "http.acme_client"]


# How often Caddy looks a service's tasks up again: once the old tasks of a swarm update left
# the name, the proxy drops them within this, and a deploy waits for that before it says live
# (hooks/deployment.py). A lookup is a query to Docker's DNS inside the network, made only when
# a request comes and the last answer is older than this: cheap, so short.
UPSTREAM_REFRESH_SECONDS = 0.1


class CaddyError(Exception):
    pass


@dataclass(frozen=True)
class Route:
    hosts: tuple[str, ...]
    upstream: str  # swarm service DNS name
    port: int
    static_root: str = ""  # a static site: the folder Caddy serves itself (in its container), not upstream


@dataclass(frozen=True)
class Acme:
    """Where certificates come from: an RFC 8555 CA's directory, the account's contact, and a
    root to trust for the CA's own HTTPS (a path in the Caddy container; "" for public CAs)."""

    ca: str
    email: str = ""
    ca_root: str = ""


def build_config(routes: list[Route], tls: bool, api_host: str = "", acme: Acme | None = None) -> dict:
    """The whole Caddy config; `api_host` (the server's own domain) serves the Disco API."""
    api = [_api_route(api_host)] if api_host else []
    server: dict = {
        "listen": [":443"] if tls else [":80"],
        "routes": api + [_route(r) for r in routes if r.hosts] + [_not_found()],
    }
    config: dict = {
        "admin": {
            "listen": f"unix/{CONTAINER_RUN_DIR}/{ADMIN_SOCKET_NAME}",
            # Caddy checks the Host of admin requests; ours send "localhost".
            "origins": ["localhost"],
        },
        "apps": {"http": {"servers": {"disco": server}}},
    }
    if not tls:
        server["automatic_https"] = {"disable": True}
        return config
    subjects = sorted({h for r in routes for h in r.hosts} | ({api_host} if api_host else set()))
    public = [h for h in subjects if certificate_problem(h, tls) is None]
    if public and acme is not None:
        config["apps"]["tls"] = {"automation": {"policies": [{"subjects": public, "issuers": [_issuer(acme)]}]}}
    config["logging"] = _tls_logging()
    return config


def _issuer(acme: Acme) -> dict:
    issuer: dict = {"module": "acme", "ca": acme.ca}
    if acme.email:
        issuer["email"] = acme.email
    if acme.ca_root:
        issuer["trusted_roots_pem_files"] = [acme.ca_root]
    return issuer


def _tls_logging() -> dict:
    """Certificate events to run/caddy-tls.log as JSON (rolled at 10 MB), the rest to stderr."""
    return {"logs": {
        "default": {"exclude": TLS_LOGGERS},
        "tls": {
            "writer": {"output": "file", "filename": f"{CONTAINER_RUN_DIR}/{TLS_LOG_NAME}", "roll_size_mb": 10,
                       "roll_keep": 2},
            "encoder": {"format": "json"},
            "include": TLS_LOGGERS,
        },
    }}


_LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".home.arpa")


def certificate_problem(host: str, tls: bool) -> str | None:
    """Why `host` cannot get a certificate from a public CA, or None if it can."""
    if not tls:
        return "HTTPS is off on this server (--no-tls)"
    try:
        ipaddress.ip_address(host.strip("[]"))
        return "an IP address gets no certificate from an ACME CA here; use a domain"
    except ValueError:
        pass
    if host == "localhost" or host.endswith(_LOCAL_SUFFIXES):
        return "a local name gets no public certificate (Caddy signs it with its own CA)"
    if "." not in host:
        return "a name without a dot gets no public certificate"
    return None


def _route(route: Route) -> dict:
    if route.static_root:
        return {
            "match": [{"host": sorted(route.hosts)}],
            # The root is a link a deploy replaces (runtime/staticsites.py): this config never changes.
            "handle": [{"handler": "file_server", "root": route.static_root}],
            "terminal": True,
        }
    return {
        "match": [{"host": sorted(route.hosts)}],
        "handle": [
            {
                "handler": "reverse_proxy",
                "dynamic_upstreams": {
                    "source": "a",
                    "name": route.upstream,
                    "port": str(route.port),
                    "refresh": f"{int(UPSTREAM_REFRESH_SECONDS * 1000)}ms",
                },
                # A dial that fails (a task just stopped) is retried on another task, inside
                # Caddy, so the client never sees it.
                "load_balancing": {
                    "selection_policy": {"policy": "round_robin"},
                    "try_duration": "10s",
                    "try_interval": "100ms",
                },
                "health_checks": {"passive": {"fail_duration": "2s"}},
                "transport": {"protocol": "http", "dial_timeout": "1s"},
            }
        ],
        "terminal": True,
    }


def _api_route(host: str) -> dict:
    return {
        "match": [{"host": [host]}],
        "handle": [{"handler": "reverse_proxy",
                    "upstreams": [{"dial": f"unix/{CONTAINER_RUN_DIR}/{API_SOCKET_NAME}"}]}],
        "terminal": True,
    }


def _not_found() -> dict:
    return {
        "handle": [
            {
                "handler": "static_response",
                "status_code": 404,
                "headers": {"Content-Type": ["text/plain; charset=utf-8"]},
                "body": "404 Not Found: no app is deployed at {http.request.host}\n",
            }
        ]
    }


class CaddyAdmin:
    """Client of Caddy's admin API over the unix socket in the data dir.

    The standard library's http.client, not httpx: a few local requests need no connection pool
    or TLS, and an idle daemon then does without httpx (~4 MB of RSS, issue 15) and without the
    TLS context (and CA bundle) an httpx client builds each time (~20 ms, ~1 MB).
    """

    def __init__(self, run_dir: Path) -> None:
        self.socket = run_dir / ADMIN_SOCKET_NAME

    def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """(status, body) of one request; OSError or http.client.HTTPException if Caddy does not answer."""
        connection = _UnixHTTPConnection(self.socket, timeout=ADMIN_TIMEOUT_SECONDS)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def is_up(self) -> bool:
        try:
            return self._request("GET", "/config/")[0] == 200
        except ADMIN_ERRORS:
            return False

    def wait_until_up(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.is_up():
            if time.monotonic() > deadline:
                raise CaddyError(f"Caddy's admin API did not answer on {self.socket} within {timeout:.0f} s")
            time.sleep(0.2)

    def current_config(self) -> dict:
        status, body = self._request("GET", "/config/")
        if status != 200:
            raise CaddyError(f"Caddy's admin API answered {status} for its config: {body.decode(errors='replace')[:300]}")
        try:
            return json.loads(body) or {}
        except ValueError:
            raise CaddyError(f"Caddy's admin API answered its config with no JSON: {body.decode(errors='replace')[:300]!r}") from None

    def load(self, config: dict) -> bool:
        """Replace the config if it differs; return whether Caddy had to reload."""
        try:
            if _normalise(self.current_config()) == _normalise(config):
                return False
            status, body = self._request("POST", "/load", json.dumps(config).encode())
        except ADMIN_ERRORS as err:  # Caddy down or restarting: a known failure, not a bug
            raise CaddyError(f"cannot reach Caddy's admin API on {self.socket}: {err}") from None
        if status != 200:
            raise CaddyError(f"Caddy refused the config: {body.decode(errors='replace').strip()[:500]}")
        return True


ADMIN_TIMEOUT_SECONDS = 30
# What a request to an admin API that is down, restarting or not yet listening raises.
ADMIN_ERRORS = (OSError, http.client.HTTPException)


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a unix socket; the Host header stays `localhost`, which the admin API's
    origin check (admin.origins) accepts."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _normalise(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


# -- certificates: what Caddy logged and what it serves ------------------------------------------

@dataclass(frozen=True)
class CertificateEvent:
    """The latest thing Caddy logged about a name's certificate, and the last failure since it
    last got one (kept while Caddy tries again)."""

    state: str  # "pending" (obtaining or renewing), "issued", "failed"
    error: str = ""  # the CA's reason, as Caddy reports it


_EVENT_STATES = {
    "obtaining certificate": "pending",
    "renewing certificate": "pending",
    "certificate obtained successfully": "issued",
    "certificate renewed successfully": "issued",
    "could not get certificate from issuer": "failed",
}


def certificate_events(lines: Iterable[str]) -> dict[str, CertificateEvent]:
    """Per name, the latest certificate event in Caddy's JSON log lines (others are skipped)."""
    latest: dict[str, CertificateEvent] = {}
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut by the tail, or not JSON
        if not isinstance(entry, dict):
            continue
        state = _EVENT_STATES.get(str(entry.get("msg", "")))
        name = entry.get("identifier")
        if state is None or not isinstance(name, str):
            continue
        if state == "failed":
            error = _one_line(str(entry.get("error", ""))) or "the CA refused it"
        elif state == "pending" and name in latest:
            error = latest[name].error  # trying again: the last failure still says why
        else:
            error = ""
        latest[name] = CertificateEvent(state, error)
    return latest


def read_certificate_events(run_dir: Path, tail_bytes: int = 1 << 20) -> dict[str, CertificateEvent]:
    """certificate_events of the last `tail_bytes` of Caddy's TLS log (none if it has none yet)."""
    path = run_dir / TLS_LOG_NAME
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - tail_bytes))
            text = handle.read().decode(errors="replace")
    except FileNotFoundError:
        return {}
    return certificate_events(text.splitlines())


def _one_line(error: str) -> str:
    return " ".join(error.split())[:500]


@dataclass(frozen=True)
class ServedCertificate:
    issuer: str
    expires_at: datetime
    names: tuple[str, ...]
    self_signed_by_caddy: bool  # Caddy's own CA (a local name, or no certificate yet)


def served_certificate(port: int, host: str, timeout: float = 3) -> ServedCertificate | None:
    """The certificate Caddy serves on 127.0.0.1:`port` for `host` (by SNI), or None when the
    handshake fails (Caddy has none for it yet). Not verified: this reads, it does not trust."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock, \
                context.wrap_socket(sock, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None
    return describe_certificate(der) if der else None


def describe_certificate(der: bytes) -> ServedCertificate:
    cert = x509.load_der_x509_certificate(der)
    issuer = _name(cert.issuer)
    try:
        names = tuple(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                      .get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    return ServedCertificate(issuer=issuer, expires_at=cert.not_valid_after_utc.astimezone(UTC), names=names,
                             self_signed_by_caddy=issuer.startswith("Caddy Local Authority"))


def _name(name: x509.Name) -> str:
    for oid in (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME):
        found = name.get_attributes_for_oid(oid)
        if found:
            return str(found[0].value)
    return name.rfc4514_string()
