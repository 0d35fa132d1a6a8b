"""The image registry that carries a deployment's images to the swarm's other nodes: what the
daemon's own registry is made of (its config, its certificate, its htpasswd line) as plain
data, and the little of the registry's HTTP API the daemon calls (deleting a pruned tag).

The daemon's own registry is Debian's `docker-registry` (distribution 2.x), run as a swarm
service on the daemon's node (runtime/docker_specs.registry_service). Docker engines only talk
TLS to a registry that is not on loopback, so it serves HTTPS with a self-signed certificate
for the manager's address; every node trusts it through /etc/docker/certs.d/HOST:PORT/ca.crt
(this daemon writes its own node's; `setup.sh join` writes a new node's from the join command).
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import secrets
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

if TYPE_CHECKING:
    import httpx  # at run time imported by the calls below: an idle daemon never loads httpx

USER = "disco"  # the one account of the daemon's own registry
CERTS_DIR = Path("/etc/docker/certs.d")  # where every Docker engine looks for a registry's certificate
CERT_DAYS = 3650  # each engine trusts it as its own root (certs.d): made again only when the address changes
CONTAINER_DIR = "/etc/disco-registry"  # where the service sees config.yml, the key pair and htpasswd
STORAGE_DIR = "/var/lib/registry"  # its volume
CONTAINER_PORT = 5000  # published on the node's host as settings.registry_port
MANIFEST_TYPES = ", ".join([  # a tag's manifest, whichever kind the engine pushed
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
])


class RegistryError(Exception):
    """The registry refused or could not be reached; the message says which and how to fix it."""


@dataclass(frozen=True)
class RegistryAccess:
    """Where a registry is and how to log in to it. `ca_pem` is its certificate when it is the
    daemon's own (self-signed); "" for a registry with a publicly trusted one."""

    address: str  # HOST:PORT, the prefix of every image reference pushed there
    username: str
    password: str = field(repr=False)  # a secret: never in output, logs or a repr
    ca_pem: str = ""

    def reference(self, tag: str) -> str:
        """A local image tag (`repository:tag`) as it is named in this registry."""
        return f"{self.address}/{tag}"

    def trust_file(self, certs_dir: Path = CERTS_DIR) -> Path:
        """Where a Docker engine looks for the certificate it trusts this registry with."""
        return certs_dir / self.address / "ca.crt"

    def trust(self, certs_dir: Path = CERTS_DIR) -> None:
        """Have this machine's Docker engine trust the registry's own certificate (none for a
        registry with a publicly trusted one)."""
        if not self.ca_pem:
            return
        path = self.trust_file(certs_dir)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.is_file() or path.read_text() != self.ca_pem:
                path.write_text(self.ca_pem)
        except OSError as err:
            raise RegistryError(f"cannot write {path}, where Docker looks for the registry's certificate: "
                                f"{err.strerror} (the daemon runs as root on a swarm of several nodes)") from None

    @property
    def ca_base64(self) -> str:
        """The certificate as one word (base64 of its DER) for a command line; "" if none."""
        if not self.ca_pem:
            return ""
        der = x509.load_pem_x509_certificate(self.ca_pem.encode()).public_bytes(serialization.Encoding.DER)
        return base64.b64encode(der).decode()


def new_password() -> str:
    return secrets.token_urlsafe(32)


def htpasswd_line(user: str, password: str) -> str:
    """The registry's htpasswd entry: distribution only accepts bcrypt hashes."""
    import bcrypt  # only when a registry is made: not a module an idle daemon carries
    return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()}\n"


def self_signed_certificate(host: str, now: datetime.datetime | None = None) -> tuple[str, str]:
    """(certificate PEM, private key PEM) for HOST (an IP address or a DNS name), self-signed
    and marked as a CA, so an engine can trust it as its own root in certs.d."""
    key = ec.generate_private_key(ec.SECP256R1())
    try:
        alt_name: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alt_name = x509.DNSName(host)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Disco registry at {host}")])
    start = (now or datetime.datetime.now(datetime.UTC)) - datetime.timedelta(minutes=5)  # clocks differ a little
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName([alt_name]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return certificate.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


def certificate_host(cert_pem: str) -> str:
    """The address a certificate made by self_signed_certificate is for."""
    names = x509.load_pem_x509_certificate(cert_pem.encode()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    found = [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] + names.get_values_for_type(x509.DNSName)
    return found[0] if found else ""


def own_config() -> str:
    """config.yml of the daemon's own registry (its paths are the service's, see CONTAINER_DIR).
    Deletes are on so pruned tags can go; the htpasswd file must exist (Debian's default config
    points it at a directory, which refuses everyone)."""
    return "\n".join([
        "version: 0.1",
        "log:",
        "  level: warn",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {STORAGE_DIR}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: :{CONTAINER_PORT}",
        "  tls:",
        f"    certificate: {CONTAINER_DIR}/cert.pem",
        f"    key: {CONTAINER_DIR}/key.pem",
        "  headers:",
        "    X-Content-Type-Options: [nosniff]",
        "auth:",
        "  htpasswd:",
        "    realm: disco",
        f"    path: {CONTAINER_DIR}/htpasswd",
        "",
    ])


def manifest_digest(access: RegistryAccess, reference: str, timeout: float = 30) -> str | None:
    """The digest of the manifest `reference` (HOST:PORT/REPOSITORY:TAG) names, or None if the
    registry has no such tag."""
    repository, _, tag = reference.removeprefix(f"{access.address}/").rpartition(":")
    with _client(access, timeout) as client:
        head = _asked(access, lambda: client.head(f"{_manifests(access, repository)}/{tag}",
                                                  headers={"Accept": MANIFEST_TYPES}))
        if head.status_code == 404:
            return None
        digest = head.headers.get("Docker-Content-Digest", "")
        if not digest:
            raise RegistryError(f"the registry at {access.address} gave no digest for {reference}")
        return digest


def delete_manifest(access: RegistryAccess, repository: str, digest: str, timeout: float = 30) -> bool:
    """Delete a manifest, and so every tag naming it (the registry's API deletes by digest only);
    False when it was not there. Its layers go at the next garbage collection."""
    with _client(access, timeout) as client:
        deleted = _asked(access, lambda: client.delete(f"{_manifests(access, repository)}/{digest}"))
        return deleted.status_code != 404


def _manifests(access: RegistryAccess, repository: str) -> str:
    return f"https://{access.address}/v2/{repository}/manifests"


def _client(access: RegistryAccess, timeout: float) -> httpx.Client:
    """An HTTPS client logged in to the registry, trusting its own certificate if it has one."""
    try:
        verify: ssl.SSLContext | bool = True
        if access.ca_pem:
            verify = ssl.create_default_context(cadata=access.ca_pem)
    except ssl.SSLError as err:
        raise RegistryError(f"the registry's certificate is unreadable: {err}") from None
    import httpx
    return httpx.Client(auth=(access.username, access.password), verify=verify, timeout=timeout)


def _asked(access: RegistryAccess, call: Callable[[], httpx.Response]) -> httpx.Response:
    """The registry's answer: found (2xx) or not there (404); anything else is refused."""
    import httpx
    try:
        response = call()
    except httpx.HTTPError as err:
        raise RegistryError(f"cannot reach the registry at {access.address}: {err}") from None
    if response.status_code != 404 and not response.is_success:
        raise RegistryError(f"the registry at {access.address} refused {response.request.method} "
                            f"{response.request.url.path}: HTTP {response.status_code}")
    return response
