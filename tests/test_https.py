"""Automatic HTTPS against a real ACME server: Debian's Pebble (an RFC 8555 test CA) with real
HTTP-01 validation, its challenge DNS server (pebble-challtestsrv) pointing the test's names at
this machine, and the daemon's Caddy told to use it with --acme-ca and --acme-ca-root.

One Pebble and one daemon for the module. Pebble reaches Caddy on the daemon's HTTP port at
127.0.0.1; Caddy, in its container, reaches Pebble on the host through the swarm's bridge
gateway, so Pebble's own HTTPS listener gets a certificate (made here) for that address.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

import httpx
import pytest

from apps import new_version, web_app
from conftest import Disco, free_port, require_docker, run, shared_disco, wait_for

SHOP, BAD, API = "shop.example.test", "nowhere.example.test", "api.example.test"


def make_listener_certificate(folder: Path, address: str) -> tuple[Path, Path, Path]:
    """A CA and a certificate for Pebble's listener (localhost, 127.0.0.1 and `address`)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "disco test: Pebble listener CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
             x509.IPAddress(ipaddress.ip_address(address))]
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False).sign(ca_key, hashes.SHA256()))
    paths = folder / "listener-ca.pem", folder / "listener.pem", folder / "listener.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def bridge_gateway() -> str:
    """The host's address on the bridge that swarm containers (Caddy) reach the host through."""
    out = run(["/usr/bin/docker", "network", "inspect", "docker_gwbridge", "-f",
               "{{(index .IPAM.Config 0).Gateway}}"], check=True).stdout.strip()
    return out


def wait_listening(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{process.args[0]} did not listen on {port}: {log.read_text()}") from None
            time.sleep(0.05)


class Pebble:
    def __init__(self, folder: Path, http_port: int, https_port: int) -> None:
        self.folder = folder
        self.gateway = bridge_gateway()
        self.listener_ca, cert, key = make_listener_certificate(folder, self.gateway)
        self.port, self.management, self.dns, self.dns_management = free_port(), free_port(), free_port(), free_port()
        self.log = folder / "pebble.log"
        config = {"pebble": {"listenAddress": f"0.0.0.0:{self.port}",
                             "managementListenAddress": f"127.0.0.1:{self.management}",
                             "certificate": str(cert), "privateKey": str(key),
                             # Validation comes to the daemon's Caddy, on its (test) ports.
                             "httpPort": http_port, "tlsPort": https_port,
                             "ocspResponderURL": "", "externalAccountBindingRequired": False}}
        (folder / "pebble.json").write_text(json.dumps(config))
        dns_log = folder / "challtestsrv.log"
        # No default address: a name resolves only once the test gives it an A record.
        self.dns_server = subprocess.Popen(
            ["pebble-challtestsrv", "-defaultIPv4", "", "-defaultIPv6", "", "-dns01", f"127.0.0.1:{self.dns}",
             "-http01", "", "-https01", "", "-tlsalpn01", "", "-management", f"127.0.0.1:{self.dns_management}"],
            stdout=dns_log.open("w"), stderr=subprocess.STDOUT)
        wait_listening(self.dns_management, self.dns_server, dns_log)
        # No random sleep before validating, no nonces refused for practice: every run alike.
        self.server = subprocess.Popen(
            ["pebble", "-config", str(folder / "pebble.json"), "-dnsserver", f"127.0.0.1:{self.dns}"],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT,
            env={**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"})
        wait_listening(self.port, self.server, self.log)

    @property
    def directory(self) -> str:
        return f"https://{self.gateway}:{self.port}/dir"

    def point(self, name: str, address: str = "127.0.0.1") -> None:
        response = httpx.post(f"http://127.0.0.1:{self.dns_management}/add-a",
                              json={"host": name + ".", "addresses": [address]}, timeout=5)
        assert response.status_code == 200, response.text

    def root(self) -> str:
        """Pebble's root CA, which every certificate it issues chains to (made at its start)."""
        trusted = ssl.create_default_context(cafile=str(self.listener_ca))
        return httpx.get(f"https://127.0.0.1:{self.management}/roots/0", verify=trusted, timeout=5).text

    def issued(self) -> int:
        return self.log.read_text().count("Issued certificate serial")

    def stop(self) -> None:
        for process in (self.server, self.dns_server):
            process.terminate()
            process.wait(10)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory):
    require_docker()
    if shutil.which("pebble") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("pebble is not installed, but CI=true requires it (./setup.sh test installs it)")
        pytest.skip("no pebble here; ./setup.sh test installs it")
    folder = tmp_path_factory.mktemp("https")
    ports = {"http_port": free_port(), "https_port": free_port()}
    pebble = Pebble(folder, **ports)
    for name in (SHOP, API):
        pebble.point(name)
    args = ["--tls", "--acme-ca", pebble.directory, "--acme-ca-root", str(pebble.listener_ca),
            "--acme-email", "ops@example.test", "--host", API]
    try:
        (folder / "daemon").mkdir()
        for disco, alice in shared_disco(folder / "daemon", args, ports=ports):
            disco.wait_for_proxy()
            yield disco, alice, pebble
    finally:
        pebble.stop()


class SniConnection(http.client.HTTPSConnection):
    """HTTPS to the daemon's Caddy on 127.0.0.1, asking for `name` (SNI and Host), verified
    against Pebble's root: what a browser resolving `name` to this server would do."""

    def __init__(self, port: int, name: str, root: str) -> None:
        super().__init__("127.0.0.1", port, timeout=10, context=ssl.create_default_context(cadata=root))
        self.name = name

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.name)  # type: ignore[attr-defined]

    def get(self, path: str = "/", headers: dict[str, str] | None = None) -> tuple[int, str]:
        self.request("GET", path, headers={"Host": self.name, **(headers or {})})
        response = self.getresponse()
        return response.status, response.read().decode()


def https_answer(disco: Disco, pebble: Pebble, name: str, path: str = "/",
                 headers: dict[str, str] | None = None) -> tuple[int, str] | None:
    """The answer over verified HTTPS, or None while the name has no certificate from Pebble."""
    try:
        connection = SniConnection(disco.https_port, name, pebble.root())
        try:
            return connection.get(path, headers)
        finally:
            connection.close()
    except (OSError, ssl.SSLError, http.client.HTTPException):
        return None


def certificate(disco: Disco, name: str) -> dict:
    return next(d["certificate"] for d in disco.api("GET", "/projects/shop/domains").json() if d["domain"] == name)


def served_serial(disco: Disco, name: str) -> int:
    from cryptography import x509

    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", disco.https_port), timeout=5) as sock, \
            context.wrap_socket(sock, server_hostname=name) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_a_domain_gets_a_certificate_from_the_ca_http_redirects_and_status_shows_it(rig, tmp_path: Path):
    disco, alice, pebble = rig
    repo = web_app(tmp_path / "shop", "v1\n")
    assert disco.git(alice, "push", disco.url("shop"), "main", cwd=repo, timeout=300).returncode == 0
    added = disco.api("POST", "/projects/shop/domains", {"domain": SHOP}).json()
    # This machine's resolver does not know the test's names: a warning, not a refusal.
    assert added["domain"] == SHOP and f"DNS for {SHOP} does not resolve" in added["warning"]
    assert wait_for("HTTPS on shop", lambda: https_answer(disco, pebble, SHOP)) == (200, "v1\n")

    status = wait_for("the status to say issued", lambda: (c := certificate(disco, SHOP))["state"] == "issued" and c)
    assert status["issuer"].startswith("Pebble Intermediate CA")
    expires = datetime.datetime.fromisoformat(status["expires_at"])
    assert expires > datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1) and status["reason"] == ""

    plain = httpx.get(f"http://127.0.0.1:{disco.http_port}/some/page?x=1", headers={"Host": SHOP}, timeout=10)
    assert plain.status_code in (301, 308) and plain.headers["location"] == f"https://{SHOP}/some/page?x=1"
    # The server's own --host serves the API over HTTPS.
    meta = wait_for("the API over HTTPS", lambda: https_answer(disco, pebble, API, "/api/v1/meta",
                                                               {"Authorization": f"Bearer {disco.api_key}"}))
    assert meta[0] == 200 and json.loads(meta[1])["user"]["name"] == "alice"


def test_a_domain_whose_dns_points_elsewhere_fails_with_the_cas_reason_and_others_keep_theirs(rig):
    disco, _, pebble = rig
    assert disco.api("POST", "/projects/shop/domains", {"domain": BAD}).status_code == 201
    failed = wait_for("the status to say failed", lambda: (c := certificate(disco, BAD))["state"] == "failed" and c)
    assert BAD in failed["reason"] and "urn:ietf:params:acme:error" in failed["reason"]
    assert "\n" not in failed["reason"]
    assert certificate(disco, SHOP)["state"] == "issued"
    assert https_answer(disco, pebble, SHOP) == (200, "v1\n")
    assert disco.api("POST", "/projects/shop/domains", {"domain": "intranet.local"}).json()["warning"] == ""
    listed = {d["domain"]: d["certificate"] for d in disco.api("GET", "/projects/shop/domains").json()}
    assert set(listed) == {SHOP, BAD, "intranet.local"}
    assert listed["intranet.local"]["state"] == "none" and "a local name" in listed["intranet.local"]["reason"]


def test_restarts_of_caddy_and_the_daemon_order_nothing_again(rig):
    disco, _, pebble = rig
    issued, serial = pebble.issued(), served_serial(disco, SHOP)
    # Not detached: returns once the new Caddy task runs (the old one is gone: stop-first).
    run(["/usr/bin/docker", "service", "update", "--force", "--detach=false", "--quiet", f"{disco.instance}-caddy"],
        check=True, timeout=120)
    assert wait_for("Caddy back", lambda: https_answer(disco, pebble, SHOP), timeout=90) == (200, "v1\n")
    disco.stop()
    disco.start()
    disco.wait_for_proxy()
    assert wait_for("HTTPS after the daemon's restart", lambda: https_answer(disco, pebble, SHOP)) == (200, "v1\n")
    assert served_serial(disco, SHOP) == serial
    assert pebble.issued() == issued


def test_a_deploy_under_https_keep_alive_load_fails_no_request(rig, tmp_path: Path):
    disco, alice, pebble = rig
    repo = web_app(tmp_path / "shop2", "v1\n")
    new_version(repo, "v2\n")
    root = pebble.root()
    bodies: list[str] = []
    errors: list[str] = []
    stop = threading.Event()

    def load() -> None:
        connection = SniConnection(disco.https_port, SHOP, root)
        while not stop.is_set():
            try:
                status, text = connection.get()
                (bodies if status == 200 else errors).append(text if status == 200 else f"{status} {text[:60]}")
            except (OSError, ssl.SSLError, http.client.HTTPException) as err:
                errors.append(repr(err))
                connection.close()
                connection = SniConnection(disco.https_port, SHOP, root)
            time.sleep(0.05)
        connection.close()

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    pushed = disco.git(alice, "push", "--force", disco.url("shop"), "main", cwd=repo, timeout=300)
    time.sleep(1)
    stop.set()
    worker.join(15)
    assert pushed.returncode == 0, pushed.stderr
    assert errors == [] and len(bodies) > 20
    assert bodies[-1] == "v2\n" and set(bodies) <= {"v1\n", "v2\n"}


def test_the_dashboard_over_https_sets_secure_cookies_and_sees_the_browsers_address(rig):
    disco, _alice, pebble = rig
    wait_for("the API over HTTPS", lambda: https_answer(disco, pebble, API, "/sign-in"))
    connection = SniConnection(disco.https_port, API, pebble.root())
    try:
        connection.request("GET", "/sign-in", headers={"Host": API})
        form = connection.getresponse()
        body = form.read().decode()
        first = form.getheader("set-cookie") or ""
        assert form.status == 200 and "Secure" in first and "HttpOnly" in first
        assert first.startswith("__Host-disco_signin=") and "Path=/;" in first + ";"  # only this host may set it
        token = re.search(r'name="csrf" value="([^"]+)"', body).group(1)
        cookie = first.split(";")[0]
        connection.request("POST", "/sign-in", body=urllib.parse.urlencode({"csrf": token, "key": disco.api_key}),
                           headers={"Host": API, "Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"})
        signed = connection.getresponse()
        signed.read()
        session = next(h for k, h in signed.getheaders() if k.lower() == "set-cookie" and "disco_session" in h)
        assert signed.status == 303 and "Secure" in session and "SameSite=strict" in session
        assert session.startswith("__Host-disco_session=")
    finally:
        connection.close()
    listed = disco.api("GET", "/sessions").json()
    # The browser's address as Caddy saw it (here Docker's bridge gateway in front of Caddy's
    # published port), forwarded: not "unknown", which would put every browser in one rate limit.
    ipaddress.ip_address(listed[-1]["address"])
