"""The image registry as data (runtime/registry.py, runtime/docker_specs.py): the daemon's own
registry's certificate, htpasswd and service, and where a project service may run with and
without one. The registry itself, pushing and pulling across real engines, is tested in
tests/test_multinode.py.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
from dataclasses import replace
from pathlib import Path

import bcrypt
import pytest
from cryptography import x509

from hooks import registry
from runtime.docker_specs import placement, prune_job, registry_service, volume_label
from runtime.registry import (
    RegistryAccess,
    certificate_host,
    htpasswd_line,
    own_config,
    self_signed_certificate,
)
from runtime.settings import Settings
from runtime.store import Store


@pytest.mark.parametrize(("host", "kind"), [("10.250.0.2", x509.IPAddress), ("fd00::2", x509.IPAddress),
                                            ("manager.example.com", x509.DNSName)])
def test_the_own_registrys_certificate_is_for_the_managers_address_and_is_its_own_root(host: str, kind: type):
    now = datetime.datetime(2026, 12, 2, tzinfo=datetime.UTC)
    cert_pem, key_pem = self_signed_certificate(host, now=now)
    certificate = x509.load_pem_x509_certificate(cert_pem.encode())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    wanted = ipaddress.ip_address(host) if kind is x509.IPAddress else host
    assert names.get_values_for_type(kind) == [wanted]  # Go checks the SAN, not the common name
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca  # trusted as a root
    assert certificate.issuer == certificate.subject
    assert certificate.not_valid_before_utc < now < certificate.not_valid_after_utc
    assert certificate.not_valid_after_utc - now > datetime.timedelta(days=3000)
    assert certificate_host(cert_pem) == host
    assert "PRIVATE KEY" in key_pem and "PRIVATE KEY" not in cert_pem


def test_the_certificate_travels_as_one_word_of_base64_der():
    cert_pem, _ = self_signed_certificate("10.0.0.1")
    access = RegistryAccess("10.0.0.1:5000", "disco", "pw", ca_pem=cert_pem)
    der = base64.b64decode(access.ca_base64, validate=True)
    assert x509.load_der_x509_certificate(der) == x509.load_pem_x509_certificate(cert_pem.encode())
    assert RegistryAccess("r.example.com", "u", "pw").ca_base64 == ""


def test_access_names_images_in_the_registry_and_hides_its_password():
    access = RegistryAccess("10.0.0.1:5000", "disco", "s3cret-password")
    assert access.reference("disco-x-shop:3-abc") == "10.0.0.1:5000/disco-x-shop:3-abc"
    assert access.trust_file(Path("/etc/docker/certs.d")) == Path("/etc/docker/certs.d/10.0.0.1:5000/ca.crt")
    assert "s3cret" not in repr(access)


def test_the_htpasswd_entry_is_a_bcrypt_hash_of_the_password():
    line = htpasswd_line("disco", "the-password")
    user, _, hashed = line.rstrip("\n").partition(":")
    assert user == "disco" and hashed.startswith("$2b$") and line.endswith("\n")
    assert bcrypt.checkpw(b"the-password", hashed.encode())
    assert not bcrypt.checkpw(b"another", hashed.encode())
    assert "the-password" not in line


def test_the_own_registry_serves_tls_with_htpasswd_and_allows_deleting_pruned_tags():
    config = own_config().splitlines()
    assert "  tls:" in config and "    certificate: /etc/disco-registry/cert.pem" in config
    assert "    key: /etc/disco-registry/key.pem" in config
    assert "    path: /etc/disco-registry/htpasswd" in config  # a file: Debian's default is a directory
    assert config[config.index("  delete:") + 1] == "    enabled: true"
    assert "  addr: :5000" in config


def test_the_registry_service_stays_on_the_daemons_node_with_its_files_read_only():
    spec = registry_service("disco", "disco-registry:debian", Path("/var/lib/disco/registry"), 5443, "node1")
    template = spec["task_template"]
    assert template["Placement"]["Constraints"] == ["node.id==node1"]
    container = template["ContainerSpec"]
    assert container["Args"] == ["docker-registry", "serve", "/etc/disco-registry/config.yml"]
    files, data = container["Mounts"]
    assert (files["Source"], files["Target"], files["ReadOnly"], files["Type"]) == \
        ("/var/lib/disco/registry", "/etc/disco-registry", True, "bind")
    assert (data["Source"], data["Target"], data["Type"]) == ("disco-registry-data", "/var/lib/registry", "volume")
    assert spec["endpoint_spec"]["Ports"] == [
        {"Protocol": "tcp", "PublishedPort": 5443, "TargetPort": 5000, "PublishMode": "host"}]  # on the manager
    assert spec["labels"]["disco.role"] == "registry" and spec["labels"]["disco.instance"] == "disco"
    moved = registry_service("disco", "disco-registry:debian", Path("/var/lib/disco/registry"), 5000, "node1")
    assert moved["labels"]["disco.spec"] != spec["labels"]["disco.spec"]  # a new port restarts it
    elsewhere = registry_service("disco", "disco-registry:debian", Path("/var/lib/disco/registry"), 5443, "node2")
    assert elsewhere["labels"]["disco.spec"] == spec["labels"]["disco.spec"]
    new_files = registry_service("disco", "disco-registry:debian", Path("/var/lib/disco/registry"), 5443, "node1",
                                 files="another-certificate")
    assert new_files["labels"]["disco.spec"] != spec["labels"]["disco.spec"]  # it reads them at start only


def test_a_project_service_runs_anywhere_only_when_a_registry_carries_its_image():
    assert placement("node1", registry=False, volumes=[]) == ("node.id==node1",)
    assert placement("node1", registry=False, volumes=["disco-shop-data"]) == ("node.id==node1",)
    assert placement("node1", registry=True, volumes=[]) == ()
    assert placement("node1", registry=True, volumes=[], publishes=True) == ("node.id==node1",)  # host ports: here
    assert placement("node1", registry=True, volumes=["disco-shop-data", "disco-shop-cache"]) == (
        "node.labels.disco.volume.disco-shop-data==true", "node.labels.disco.volume.disco-shop-cache==true")
    assert volume_label("disco-shop-data") == "disco.volume.disco-shop-data"


def test_an_external_registry_is_used_as_given_and_a_missing_piece_is_named(tmp_path: Path):
    store = Store(tmp_path / "disco.sqlite3")
    password_file = tmp_path / "registry-password"
    password_file.write_text("hunter2-but-long\n")
    settings = Settings(data_dir=tmp_path, registry="registry.example.com:443", registry_user="ci",
                        registry_password_file=str(password_file))
    assert registry.configured(settings, store) == RegistryAccess("registry.example.com:443", "ci", "hunter2-but-long")
    with pytest.raises(registry.RegistryProblem, match="needs --registry-user and --registry-password-file"):
        registry.configured(replace(settings, registry_user=""), store)
    with pytest.raises(registry.RegistryProblem, match="cannot read --registry-password-file: No such file") as err:
        registry.configured(replace(settings, registry_password_file=str(tmp_path / "nope")), store)
    assert "hunter2" not in str(err.value)
    assert registry.pushed_to(replace(settings, registry_user=""), store) is None  # a cleanup goes on without it


def test_no_registry_until_the_daemon_made_its_own(tmp_path: Path):
    store = Store(tmp_path / "disco.sqlite3")
    settings = Settings(data_dir=tmp_path, registry_port=5443)
    assert registry.configured(settings, store) is None
    made = registry._make_own(settings, store, "10.0.0.7")
    assert (made.address, made.username) == ("10.0.0.7:5443", "disco") and certificate_host(made.ca_pem) == "10.0.0.7"
    folder = tmp_path / "registry"
    assert made.password not in (folder / "password").read_text()  # sealed
    assert bcrypt.checkpw(made.password.encode(), (folder / "htpasswd").read_text().split(":", 1)[1].strip().encode())
    assert registry.configured(settings, store) == made  # read back as made
    assert {p.name for p in folder.iterdir()} == {"cert.pem", "key.pem", "htpasswd", "config.yml", "password"}


def test_the_prune_job_runs_once_on_every_other_node_with_that_nodes_docker():
    spec = prune_job("disco", "10.0.0.1:5000/disco-docker-cli:debian@sha256:ab", "node1", "/var/run/docker.sock")
    assert spec["mode"] == {"GlobalJob": {}}  # once per node, then done
    template = spec["task_template"]
    assert template["Placement"]["Constraints"] == ["node.id!=node1"]  # the daemon's node prunes itself
    assert template["RestartPolicy"]["Condition"] == "none"
    container = template["ContainerSpec"]
    socket, busybox = container["Mounts"]
    assert (socket["Source"], socket["Target"]) == ("/var/run/docker.sock", "/var/run/docker.sock")
    assert busybox["ReadOnly"] and container["Command"][:3] == ["/.disco/busybox", "sh", "-c"]
    script = container["Command"][3]
    # Stopped task containers first (they hold their images), then unused images: only this instance's.
    assert script == ("docker container prune --force --filter label=disco.instance=disco && "
                      "docker image prune --all --force --filter label=disco.instance=disco")
