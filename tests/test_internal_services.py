"""Services shared between projects (issue 12, part 6), on one real daemon (Docker, swarm, Caddy,
git over SSH): each project has a network of its own; an `internal = true` service is also on
the instance network as `<project>-<service>`; anything else is private to its project.

Project alpha runs web, a private service `secret` and an internal service `shared`, each a
busybox httpd. Project beta runs web and a private worker. What one container reaches is
checked from inside it (`docker exec` busybox wget), by name and by address.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apps import BASE, BUSYBOX, SERVE
from conftest import Disco, Key, Poller, laptop_cli, make_repo, require_docker, run, shared_disco, wait_for
from runtime.docker_engine import Engine
from runtime.docker_specs import Attachment, ServiceSpec

DOCKER = "/usr/bin/docker"
TOML_A = """\
[services.web]
port = 8000

[services.secret]
command = "/bin/busybox httpd -f -p 9000 -h /secret"

[services.shared]
command = "/bin/busybox httpd -f -p 9100 -h /shared"
internal = true
"""
TOML_B = """\
[services.web]
port = 8000

[services.lonely]
command = "/bin/busybox sleep 100000"
"""


def app_files(toml: str, **pages: str) -> dict[str, str | bytes]:
    folders = sorted({path.split("/")[0] for path in pages})
    dockerfile = [*BASE, *(f"COPY {folder} /{folder}" for folder in folders), "EXPOSE 8000", SERVE]
    return {"busybox": BUSYBOX.read_bytes(), "Dockerfile": "\n".join(dockerfile) + "\n", "disco.toml": toml,
            **pages}


def push(disco: Disco, key: Key, repo: Path, project: str):
    return disco.git(key, "push", disco.url(project), "main", cwd=repo, timeout=300)


def container_of(disco: Disco, project: str, service: str) -> str:
    """A running task container of the project's service."""
    def found() -> str | None:
        out = run([DOCKER, "ps", "-q", "--filter", f"label=disco.instance={disco.instance}",
                   "--filter", f"label=disco.project={project}", "--filter", f"label=disco.service={service}"],
                  check=True).stdout.split()
        return out[0] if out else None
    return wait_for(f"a container of {project}'s {service}", found, timeout=120)


def fetch(container: str, url: str, timeout: int = 5):
    """busybox wget in the container (its -T segfaults in the static build: `timeout` instead)."""
    return run([DOCKER, "exec", container, "/bin/busybox", "timeout", str(timeout),
                "/bin/busybox", "wget", "-q", "-O", "-", url], timeout=60)


def address_on(container: str, network: str) -> str:
    inspected = json.loads(run([DOCKER, "inspect", container], check=True).stdout)[0]
    return inspected["NetworkSettings"]["Networks"][network]["IPAddress"]


def networks_of(swarm_service: str) -> dict[str, list[str]]:
    """The networks (by name) of a swarm service's spec, with their aliases."""
    spec = json.loads(run([DOCKER, "service", "inspect", swarm_service], check=True).stdout)[0]["Spec"]
    names = {}
    for attachment in spec["TaskTemplate"].get("Networks") or []:
        name = run([DOCKER, "network", "inspect", "-f", "{{.Name}}", attachment["Target"]], check=True).stdout.strip()
        names[name] = attachment.get("Aliases") or []
    return names


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory):
    require_docker()
    tmp = tmp_path_factory.mktemp("internal")
    for disco, alice in shared_disco(tmp):
        a = make_repo(tmp / "alpha", app_files(TOML_A, **{"www/index.html": "alpha web\n",
                                                          "secret/index.html": "alpha secret\n",
                                                          "shared/index.html": "alpha shared\n"}))
        b = make_repo(tmp / "beta", app_files(TOML_B, **{"www/index.html": "beta web\n"}))
        for repo, project in ((a, "alpha"), (b, "beta")):
            pushed = push(disco, alice, repo, project)
            assert pushed.returncode == 0, pushed.stderr
        yield disco, alice, tmp


def test_an_internal_service_is_reached_from_another_project_by_name_and_a_private_one_is_not(rig):
    disco, _, _ = rig
    instance = disco.instance
    beta_web = container_of(disco, "beta", "web")
    secret = container_of(disco, "alpha", "secret")
    container_of(disco, "alpha", "shared")

    # alpha's internal service, at its stable name on the instance network.
    reached = wait_for("alpha-shared from beta's web", lambda: fetch(beta_web, "http://alpha-shared:9100/").stdout
                       == "alpha shared\n", timeout=60)
    assert reached

    # alpha's private service: not by its swarm service name, its short name, nor its address.
    assert fetch(beta_web, f"http://{instance}-alpha-secret:9000/").returncode != 0
    assert fetch(beta_web, "http://secret:9000/").returncode != 0
    address = address_on(secret, f"{instance}-alpha-net")
    assert fetch(beta_web, f"http://{address}:9000/").returncode != 0
    # ...which answers there to its own project (so the refusals above are privacy, not a dead service).
    alpha_web = container_of(disco, "alpha", "web")
    assert fetch(alpha_web, f"http://{address}:9000/").stdout == "alpha secret\n"


def test_inside_a_project_services_reach_each_other_by_their_short_names(rig):
    disco, _, _ = rig
    alpha_web = container_of(disco, "alpha", "web")
    secret = wait_for("secret from alpha's web",
                      lambda: (r := fetch(alpha_web, "http://secret:9000/")).returncode == 0 and r, timeout=60)
    assert secret.stdout == "alpha secret\n"
    assert fetch(alpha_web, "http://shared:9100/").stdout == "alpha shared\n"
    # The routed web is served through Caddy, which is on the instance network only.
    assert disco.get("alpha.localhost").text == "alpha web\n"
    assert disco.get("beta.localhost").text == "beta web\n"


def test_a_private_service_of_another_project_reaches_no_internal_service(rig):
    """beta's worker is on beta's network only: it reaches beta's web by its short name, but no
    other project's internal service (those are on the instance network, which it is not on)."""
    disco, _, _ = rig
    lonely = container_of(disco, "beta", "lonely")
    assert wait_for("web from beta's worker", lambda: fetch(lonely, "http://web:8000/").stdout == "beta web\n",
                    timeout=60)
    assert fetch(lonely, "http://alpha-shared:9100/").returncode != 0


def test_the_networks_of_each_kind_of_service(rig):
    disco, _, _ = rig
    i = disco.instance
    assert networks_of(f"{i}-alpha-web") == {f"{i}-alpha-net": ["web"], f"{i}-net": []}
    assert networks_of(f"{i}-alpha-secret") == {f"{i}-alpha-net": ["secret"]}
    assert networks_of(f"{i}-alpha-shared") == {f"{i}-alpha-net": ["shared"], f"{i}-net": ["alpha-shared"]}
    labels = json.loads(run([DOCKER, "network", "inspect", f"{i}-alpha-net"], check=True).stdout)[0]["Labels"]
    assert labels == {"disco.instance": i, "disco.project": "alpha"}


def test_one_off_commands_reach_their_project_by_short_names_and_internal_services(rig):
    disco, _, tmp = rig
    cli = laptop_cli(disco, tmp / "laptop")
    wget = ["--", "/bin/busybox", "timeout", "5", "/bin/busybox", "wget", "-q", "-O", "-"]
    own = cli("run", "-p", "beta", *wget, "http://web:8000/")
    assert own.returncode == 0 and own.stdout == "beta web\n", own.stderr
    other = cli("run", "-p", "beta", *wget, "http://alpha-shared:9100/")
    assert other.returncode == 0 and other.stdout == "alpha shared\n", other.stderr
    private = cli("run", "-p", "beta", *wget, f"http://{disco.instance}-alpha-secret:9000/")
    assert private.returncode != 0


def test_projects_info_prints_the_stable_names(rig):
    disco, _, tmp = rig
    cli = laptop_cli(disco, tmp / "info")
    shown = cli("projects:info", "-p", "alpha")
    assert shown.returncode == 0, shown.stderr
    assert "internal  shared as alpha-shared" in shown.stdout
    assert "internal" not in cli("projects:info", "-p", "beta").stdout
    described = disco.api("GET", "/projects/alpha").json()
    assert described["internal"] == [{"service": "shared", "name": "alpha-shared"}]


def test_services_made_before_project_networks_move_on_their_next_deploy_without_downtime(rig, tmp_path: Path):
    """An earlier version put every service on the instance network only, and made no project
    network: gamma's web is put back in that state, then redeployed under load."""
    disco, alice, _ = rig
    i = disco.instance
    repo = make_repo(tmp_path / "gamma", app_files("[services.web]\nport = 8000\n", **{"www/index.html": "gamma\n"}))
    assert push(disco, alice, repo, "gamma").returncode == 0
    engine, service = Engine(i), f"{i}-gamma-web"
    engine.remove_service(service)
    assert engine.remove_project_network("gamma") == f"{i}-gamma-net"  # waits until its containers are gone
    image = disco.api("GET", "/projects/gamma/deployments/1").json()["image"]
    old = ServiceSpec(name=service, image=image, networks=(Attachment(f"{i}-net"),), env={"PORT": "8000"},
                      labels=engine.labels(project="gamma", service="web", deployment="1"), replicas=1, port=8000)
    engine.wait_rollout(old, engine.apply(old), timeout=120, on_wait=lambda line: None)
    assert networks_of(service) == {f"{i}-net": []}
    assert wait_for("the old-style gamma through Caddy", lambda: disco.get("gamma.localhost").text == "gamma\n")

    with Poller(disco, "gamma.localhost") as poller:
        queued = disco.api("POST", "/projects/gamma/deployments", {})
        assert queued.status_code == 202, queued.text
        finished = disco.finished_deployment("gamma", queued.json()["number"], timeout=300)
        assert finished["status"] == "live", finished["reason"]
        wait_for("a few answers after the switch", lambda: len(poller.bodies) > 20, timeout=60)
    assert poller.errors == [] and set(poller.bodies) == {"gamma\n"}
    assert networks_of(service) == {f"{i}-gamma-net": ["web"], f"{i}-net": []}


def test_deleting_a_project_removes_its_network(rig, tmp_path: Path):
    disco, alice, _ = rig
    repo = make_repo(tmp_path / "delta", app_files("", **{"www/index.html": "delta\n"}))
    assert push(disco, alice, repo, "delta").returncode == 0
    network = f"{disco.instance}-delta-net"
    assert run([DOCKER, "network", "inspect", network]).returncode == 0
    removed = disco.api("DELETE", "/projects/delta")
    assert removed.is_success, removed.text
    assert run([DOCKER, "network", "inspect", network]).returncode != 0
