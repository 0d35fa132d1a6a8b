"""Caddy's config as data (runtime/caddy.build_config), and the admin client's errors."""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from runtime.caddy import (
    ADMIN_SOCKET_NAME,
    API_SOCKET_NAME,
    CONTAINER_RUN_DIR,
    TLS_LOG_NAME,
    Acme,
    CertificateEvent,
    CaddyAdmin,
    CaddyError,
    Route,
    build_config,
    certificate_events,
    certificate_problem,
    describe_certificate,
    read_certificate_events,
)

SHOP = Route(("www.shop.example", "shop.apps.example"), "disco-shop-web", 8000)


def server(config: dict) -> dict:
    return config["apps"]["http"]["servers"]["disco"]


def test_admin_api_stays_on_the_unix_socket_and_accepts_localhost():
    config = build_config([SHOP], tls=False)
    # /load replaces the admin block too: without it the admin API would move to :2019.
    assert config["admin"] == {"listen": f"unix/{CONTAINER_RUN_DIR}/{ADMIN_SOCKET_NAME}", "origins": ["localhost"]}


def test_a_route_resolves_the_service_name_in_caddy_and_retries_failed_dials():
    route = server(build_config([SHOP], tls=False))["routes"][0]
    assert route["match"] == [{"host": ["shop.apps.example", "www.shop.example"]}]
    assert route["terminal"] is True
    proxy = route["handle"][0]
    assert proxy["handler"] == "reverse_proxy"
    # Swarm swaps the tasks behind the name: a deploy never changes the config.
    assert proxy["dynamic_upstreams"] == {"source": "a", "name": "disco-shop-web", "port": "8000",
                                          "refresh": "100ms"}
    assert proxy["load_balancing"]["try_duration"] == "10s"  # a stopped task's dial is retried elsewhere


def test_an_unknown_host_gets_a_404_from_the_last_route():
    routes = server(build_config([SHOP], tls=False))["routes"]
    last = routes[-1]
    assert "match" not in last  # the catch-all; without it Caddy answers 200 with an empty body
    assert last["handle"][0]["handler"] == "static_response" and last["handle"][0]["status_code"] == 404


def test_plain_http_listens_on_80_without_automatic_https_and_tls_on_443():
    plain, tls = server(build_config([SHOP], tls=False)), server(build_config([SHOP], tls=True))
    assert plain["listen"] == [":80"] and plain["automatic_https"] == {"disable": True}
    assert tls["listen"] == [":443"] and "automatic_https" not in tls


def test_the_api_host_comes_first_and_goes_to_the_api_socket():
    routes = server(build_config([SHOP], tls=True, api_host="deploy.example.com"))["routes"]
    assert routes[0]["match"] == [{"host": ["deploy.example.com"]}]
    assert routes[0]["handle"][0]["upstreams"] == [{"dial": f"unix/{CONTAINER_RUN_DIR}/{API_SOCKET_NAME}"}]
    assert len(routes) == 3
    assert len(server(build_config([SHOP], tls=True))["routes"]) == 2  # no API route without a domain


def test_a_route_without_hosts_is_left_out():
    routes = server(build_config([Route((), "disco-x-web", 8000), SHOP], tls=False))["routes"]
    assert [r.get("match") for r in routes[:-1]] == [[{"host": ["shop.apps.example", "www.shop.example"]}]]


def test_loading_into_a_caddy_that_is_down_is_a_caddy_error(tmp_path: Path):
    with pytest.raises(CaddyError, match="cannot reach Caddy's admin API"):
        CaddyAdmin(tmp_path).load(build_config([SHOP], tls=False))


class FakeAdmin(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Caddy's admin API as the client sees it: GET /config/ and POST /load on a unix socket,
    refusing any Host but localhost (admin.origins) and a /load that is not JSON."""

    daemon_threads = True

    def __init__(self, path: Path) -> None:
        self.config: dict = {}
        self.requests: list[tuple[str, str, str]] = []  # (method, path, Host)
        self.refusal = ""  # when set, /load answers 400 with it
        self.garbled = False  # when set, GET /config/ answers 200 with a body that is no JSON
        super().__init__(str(path), _AdminHandler)


class _AdminHandler(BaseHTTPRequestHandler):
    server: FakeAdmin

    def do_GET(self) -> None:
        self._record()
        if self._allowed() and self.path == "/config/":
            self._answer(200, b"<html>" if self.server.garbled else json.dumps(self.server.config or None).encode())

    def do_POST(self) -> None:
        self._record()
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if not self._allowed():
            return
        if self.path != "/load" or self.headers["Content-Type"] != "application/json":
            self._answer(400, b"not a JSON load")
        elif self.server.refusal:
            self._answer(400, self.server.refusal.encode())
        else:
            self.server.config = json.loads(body)
            self._answer(200, b"")

    def _record(self) -> None:
        self.server.requests.append((self.command, self.path, self.headers["Host"]))

    def _allowed(self) -> bool:
        if self.headers["Host"] == "localhost":
            return True
        self._answer(403, b"host not allowed")
        return False

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def fake_admin(tmp_path: Path) -> Iterator[FakeAdmin]:
    admin = FakeAdmin(tmp_path / ADMIN_SOCKET_NAME)
    thread = threading.Thread(target=admin.serve_forever, daemon=True)
    thread.start()
    yield admin
    admin.shutdown()
    admin.server_close()


def test_the_admin_client_loads_a_changed_config_only_and_says_why_caddy_refused(tmp_path: Path, fake_admin: FakeAdmin):
    admin = CaddyAdmin(tmp_path)
    assert admin.is_up()
    config = build_config([SHOP], tls=False)
    assert admin.load(config) is True
    assert fake_admin.config == config
    assert admin.load(config) is False  # the same config: no reload
    assert [r for r in fake_admin.requests if r[0] == "POST"] == [("POST", "/load", "localhost")]
    assert {host for _, _, host in fake_admin.requests} == {"localhost"}  # what admin.origins accepts
    fake_admin.refusal = "loading config: unknown module"
    with pytest.raises(CaddyError, match="Caddy refused the config: loading config: unknown module"):
        admin.load(build_config([], tls=False))
    fake_admin.garbled = True  # a known failure (CaddyError, said), not a bug of the deploy
    with pytest.raises(CaddyError, match="answered its config with no JSON: '<html>'"):
        admin.load(build_config([], tls=False))


ACME = Acme(ca="https://ca.example/dir", email="ops@shop.example", ca_root=f"{CONTAINER_RUN_DIR}/acme-ca-root.pem")
LOCAL = Route(("blog.localhost", "10.0.0.7"), "disco-blog-web", 8000)


def test_public_names_get_certificates_from_the_configured_ca_and_local_ones_do_not():
    config = build_config([SHOP, LOCAL], tls=True, api_host="deploy.shop.example", acme=ACME)
    (policy,) = config["apps"]["tls"]["automation"]["policies"]
    # The API's own host too; localhost names and IPs keep Caddy's own CA.
    assert policy["subjects"] == ["deploy.shop.example", "shop.apps.example", "www.shop.example"]
    assert policy["issuers"] == [{"module": "acme", "ca": "https://ca.example/dir", "email": "ops@shop.example",
                                  "trusted_roots_pem_files": [f"{CONTAINER_RUN_DIR}/acme-ca-root.pem"]}]
    # Automatic HTTPS stays on: Caddy redirects HTTP to HTTPS and answers the HTTP-01 challenge.
    assert "automatic_https" not in server(config)
    logs = config["logging"]["logs"]
    assert logs["tls"]["writer"]["filename"] == f"{CONTAINER_RUN_DIR}/{TLS_LOG_NAME}"
    assert "tls.obtain" in logs["tls"]["include"] and "tls.obtain" in logs["default"]["exclude"]


def test_a_public_ca_needs_no_root_or_email_and_no_names_no_policy():
    config = build_config([SHOP], tls=True, acme=Acme(ca="https://acme-v02.api.letsencrypt.org/directory"))
    assert config["apps"]["tls"]["automation"]["policies"][0]["issuers"] == [
        {"module": "acme", "ca": "https://acme-v02.api.letsencrypt.org/directory"}]
    assert "tls" not in build_config([LOCAL], tls=True, acme=ACME)["apps"]
    assert "tls" not in build_config([SHOP], tls=False, acme=ACME)["apps"]


@pytest.mark.parametrize("host, problem", [
    ("www.shop.example", None), ("a.b.example.test", None),
    ("localhost", "a local name"), ("shop.localhost", "a local name"), ("printer.local", "a local name"),
    ("192.0.2.1", "an IP address"), ("[::1]", "an IP address"), ("intranet", "a name without a dot"),
])
def test_which_names_can_get_a_public_certificate(host: str, problem: str | None):
    found = certificate_problem(host, tls=True)
    assert (found is None) if problem is None else (found is not None and found.startswith(problem))
    assert certificate_problem(host, tls=False) == "HTTPS is off on this server (--no-tls)"


def test_certificate_events_keep_the_latest_per_name_with_the_cas_reason(tmp_path: Path):
    lines = [
        '{"level":"info","ts":10.0,"logger":"tls.obtain","msg":"obtaining certificate","identifier":"a.example"}',
        '{"level":"info","ts":11.0,"logger":"tls.obtain","msg":"obtaining certificate","identifier":"b.example"}',
        '{"level":"info","ts":12.0,"logger":"tls.obtain","msg":"certificate obtained successfully",'
        '"identifier":"a.example"}',
        '{"level":"error","ts":13.0,"logger":"tls.obtain","msg":"could not get certificate from issuer",'
        '"identifier":"b.example","issuer":"ca","error":"HTTP 400 urn:ietf:params:acme:error:dns -\\n DNS problem"}',
        'not json', '[1, 2]', '{"msg": "obtaining certificate", "identifier": 5}',
        '{"level":"info","ts":14.0,"logger":"tls.renew","msg":"renewing certificate","identifier":"c.example"}',
    ]
    events = certificate_events(lines)
    assert {name: e.state for name, e in events.items()} == {"a.example": "issued", "b.example": "failed",
                                                             "c.example": "pending"}
    assert events["b.example"].error == "HTTP 400 urn:ietf:params:acme:error:dns - DNS problem"  # one line
    retrying = certificate_events([*lines, '{"logger":"tls.obtain","msg":"obtaining certificate",'
                                           '"identifier":"b.example"}'])
    assert retrying["b.example"] == CertificateEvent("pending", events["b.example"].error)  # the reason stays
    renewed = certificate_events([*lines, '{"msg":"certificate obtained successfully","identifier":"b.example"}'])
    assert renewed["b.example"] == CertificateEvent("issued", "")
    (tmp_path / TLS_LOG_NAME).write_text("\n".join(lines) + "\n")
    assert read_certificate_events(tmp_path) == events
    assert read_certificate_events(tmp_path, tail_bytes=120) != events  # only the tail is read
    assert read_certificate_events(tmp_path / "missing") == {}


def test_describe_certificate_reads_issuer_expiry_and_names():
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    expiry = datetime.datetime(2027, 3, 1, 12, 0, tzinfo=datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.shop.example")]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Pebble Intermediate CA 1a2b")]))
            .public_key(key.public_key()).serial_number(1).not_valid_before(expiry - datetime.timedelta(days=90))
            .not_valid_after(expiry)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("www.shop.example")]), critical=False)
            .sign(key, hashes.SHA256()))
    described = describe_certificate(cert.public_bytes(Encoding.DER))
    assert described.issuer == "Pebble Intermediate CA 1a2b" and described.expires_at == expiry
    assert described.names == ("www.shop.example",) and not described.self_signed_by_caddy
