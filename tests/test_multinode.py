"""More than one server (issue 14): the swarm's nodes through the daemon, images carried to them
by the daemon's own registry, services spread over them, volumes kept with their data, and a
node that fails; on a real swarm of several Docker engines on this machine (tests/multinode.py:
each dockerd in a network namespace of its own, apart from the host's dockerd and swarm).

One rig and one daemon for the whole module (its tests run in order and build on each other):
the daemon is pointed at the rig's manager with DOCKER_HOST, so it builds, runs its proxy and
its registry and deploys there; Caddy answers on the manager's address, 10.250.0.2. The rig's
engines share this machine's /etc/docker/certs.d, so each trusts the registry's certificate
once the daemon (or setup.sh join) wrote it there.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from apps import BASE, new_version, shell_cmd, web_app
from conftest import (
    CADDY_IMAGE,
    DISCO,
    Disco,
    Key,
    Poller,
    laptop_cli,
    require_docker,
    run,
    shared_disco,
    wait_for,
)
import multinode as rig_module
from multinode import NODE_SOCKET, Engine, Rig
from runtime import names
from runtime.secretbox import KEY_NAME as SECRETS_KEY_NAME
from runtime.registry import CONTAINER_DIR, STORAGE_DIR, htpasswd_line, own_config, self_signed_certificate
from runtime.secretbox import SecretBox

PROJECT = "spread"
HOST = f"{PROJECT}.localhost"
REGISTRY = "10.250.0.2:5000"  # the daemon's own, on the manager's address
TRUST_FILE = Path(f"/etc/docker/certs.d/{REGISTRY}/ca.crt")
REGISTRY_IMAGE = "disco-registry:debian"  # setup.sh builds it from Debian's docker-registry
DOCKER_CLI_IMAGE = "disco-docker-cli:debian"  # and this one from Debian's docker client
# Each task writes its container's hostname (its ID) to /www/who at start: which task answered.
WHO_AM_I = [*BASE, "COPY www /www", "EXPOSE 8000",
            shell_cmd("/bin/busybox hostname > /www/who && exec /bin/busybox httpd -f -p 8000 -h /www")]


@dataclass
class Cluster:
    rig: Rig
    disco: Disco
    key: Key
    cli: Callable[..., subprocess.CompletedProcess]  # `disco` on a laptop logged in as alice
    home: Path
    cleanups: list[Callable[[], None]] = field(default_factory=list)  # run when the module's rig goes

    def nodes(self) -> dict[str, dict]:
        """Node name -> the node as GET /nodes says it."""
        response = self.disco.api("GET", "/nodes")
        assert response.status_code == 200, response.text
        return {node["name"]: node for node in response.json()}

    def through_caddy(self, host: str = HOST, path: str = "/") -> httpx.Response:
        """A request to Caddy, which listens on the manager's address (in its namespace)."""
        return httpx.get(f"http://{self.rig.manager.address}:{self.disco.http_port}{path}", headers={"Host": host},
                         timeout=10)

    def registry_tags(self, project: str = PROJECT) -> list[str]:
        """The tags of the project's repository in the daemon's own registry, asked with its
        credentials (read as the daemon reads them)."""
        password = SecretBox(self.disco.data_dir / SECRETS_KEY_NAME).open(
            (self.disco.data_dir / "registry" / "password").read_text())
        repository = names.join(self.disco.instance, project)
        listed = httpx.get(f"https://{REGISTRY}/v2/{repository}/tags/list", auth=("disco", password),
                           verify=ssl.create_default_context(cafile=TRUST_FILE), timeout=10)
        assert listed.status_code == 200, listed.text
        return sorted(listed.json()["tags"] or [])

    def all_on_manager(self, service: str, replicas: int) -> bool:
        """Every running task of the service on mn1, and all its replicas running. Not "exactly
        `replicas`": when a node fails under load, swarm may run one slot twice for a while."""
        where = self.running_where(service)
        return set(where) == {"mn1"} and len(where) >= replicas

    def service(self, project: str, name: str = "web") -> str:
        return names.dns_label(names.join(self.disco.instance, project, name))

    def push(self, repo: Path, project: str = PROJECT) -> subprocess.CompletedProcess:
        pushed = self.disco.git(self.key, "push", self.disco.url(project), "main", cwd=repo, timeout=300)
        assert pushed.returncode == 0, pushed.stderr
        return pushed

    def tasks_on(self, engine: Engine, service: str) -> list[str]:
        """The IDs (12 characters: their hostnames) of the service's running containers on that engine."""
        listed = engine.docker("ps", "--filter", f"label=com.docker.swarm.service.name={service}",
                               "--format", "{{.ID}}")
        return listed.stdout.split()

    def running_where(self, service: str) -> list[str]:
        """The node of each running task of the service, sorted."""
        listed = self.rig.manager.docker("service", "ps", service, "--filter", "desired-state=running",
                                         "--format", "{{.Node}} {{.CurrentState}}").stdout.splitlines()
        return sorted(line.split()[0] for line in listed if line.split()[1:2] == ["Running"])


def require_root() -> None:
    if os.geteuid() != 0:
        message = "the multi-node rig makes network namespaces and starts dockerd: it needs root"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_docker()
    require_root()
    workdir = tmp_path_factory.mktemp("multinode")
    rig = Rig()
    try:  # taken down whatever happens, a failed test included (and a killed run's by the next up())
        rig.up()
        for image in (CADDY_IMAGE, REGISTRY_IMAGE, DOCKER_CLI_IMAGE):  # setup.sh's, as Docker Hub is out of reach
            rig.load_image(image, rig.manager)
        # One image kept per project: a second deploy prunes the first, from the registry too.
        for disco, key in shared_disco(workdir, extra_args=["--keep-images", "1", "--docker-socket", str(NODE_SOCKET)],
                                       extra_env={"DOCKER_HOST": rig.manager.docker_host}):
            disco.wait_for_proxy()
            home = workdir / "laptop"
            cluster = Cluster(rig, disco, key, laptop_cli(disco, home), home)
            try:
                yield cluster
            finally:
                for cleanup in cluster.cleanups:
                    cleanup()
    finally:
        rig.down()
        TRUST_FILE.unlink(missing_ok=True)
        if TRUST_FILE.parent.is_dir():
            TRUST_FILE.parent.rmdir()


def test_disco_nodes_lists_the_manager_and_the_worker(cluster: Cluster):
    nodes = cluster.nodes()
    assert set(nodes) == {"mn1", "mn2"}
    manager, worker = nodes["mn1"], nodes["mn2"]
    assert (manager["role"], manager["leader"], manager["here"], manager["address"], manager["state"]) == \
        ("manager", True, True, "10.250.0.2", "ready")
    assert manager["tasks"] == 1  # the proxy, pinned to the daemon's node
    assert (worker["role"], worker["here"], worker["address"], worker["state"], worker["availability"],
            worker["manager"], worker["tasks"]) == ("worker", False, "10.250.0.3", "ready", "active", None, 0)
    assert [node["name"] for node in cluster.disco.api("GET", "/nodes").json()][0] == "mn1"  # this server first

    listed = cluster.cli("nodes")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ADDRESS", "ROLE", "AVAILABILITY", "STATE", "TASKS", "LABELS"]
    assert lines[1].split() == ["mn1", "(this", "server)", "10.250.0.2", "manager", "(leader)", "active", "ready",
                                "1", "-"]
    assert lines[2].split() == ["mn2", "10.250.0.3", "worker", "active", "ready", "0", "-"]


def test_nodes_add_makes_the_registry_and_prints_the_join_command_whose_token_joins_a_third_machine(
        cluster: Cluster):
    shown = cluster.cli("nodes:add")
    assert shown.returncode == 0, shown.stderr
    token = cluster.rig.join_token()
    joining = cluster.disco.api("POST", "/nodes/join").json()
    assert joining["registry"] == REGISTRY and joining["registry_ca"]
    assert f"./setup.sh join 10.250.0.2:2377 {token} --registry {REGISTRY} {joining['registry_ca']}" in shown.stdout

    # The registry runs on the manager, over TLS with the certificate the daemon made and trusts,
    # and lets nobody in without the password (kept sealed, as a bcrypt hash in its htpasswd).
    assert TRUST_FILE.read_text().startswith("-----BEGIN CERTIFICATE-----")
    anonymous = httpx.get(f"https://{REGISTRY}/v2/", verify=ssl.create_default_context(cafile=TRUST_FILE), timeout=10)
    assert anonymous.status_code == 401
    own = cluster.disco.data_dir / "registry"
    assert (own / "htpasswd").read_text().startswith("disco:$2b$")
    assert (own / "password").read_text().startswith("enc:v1:")  # sealed (runtime/secretbox.py)
    assert stat.S_IMODE((own / "key.pem").stat().st_mode) == 0o600
    assert cluster.rig.manager.docker("service", "ps", f"{cluster.disco.instance}-registry", "--format",
                                      "{{.Node}}").stdout.split()[0] == "mn1"
    assert "2377/tcp, 7946/tcp and udp, 4789/udp" in shown.stdout and "keep it secret" in shown.stderr
    assert f"it must reach the registry at {REGISTRY}" in shown.stdout
    audited = cluster.disco.api("GET", "/audit", limit=5).json()
    assert any(entry["action"] == "nodes:join-command" and entry["target"] == "10.250.0.2:2377" for entry in audited)
    assert token not in json.dumps(audited)

    # --ssh runs setup.sh join on the new machine over the user's own ssh. No sshd here: a
    # stand-in `ssh` runs the remote command in the third engine's namespace, as its shell would.
    third = cluster.rig.add_engine()
    fake = cluster.home / "bin"
    fake.mkdir()
    (fake / "ssh").write_text(
        "#!/bin/sh\n"
        'while [ "$1" != "--" ]; do shift; done; shift  # its options\n'
        f'echo "$1" > {fake}/host; shift\n'
        f"exec nsenter --net=/run/netns/{third.netns} env DOCKER_HOST={third.docker_host} \"$@\"\n")
    (fake / "ssh").chmod(stat.S_IRWXU)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "HOME": str(cluster.home),
           "XDG_CONFIG_HOME": str(cluster.home / "xdg")}
    joined = run([DISCO, "nodes:add", "--ssh", "root@mn3"], cwd=cluster.home, env=env, timeout=180)
    assert joined.returncode == 0, joined.stdout + joined.stderr
    assert (fake / "host").read_text().strip() == "root@mn3"
    assert f"trusting the registry at {REGISTRY}" in joined.stderr
    assert "joining the swarm at 10.250.0.2:2377 as 10.250.0.4" in joined.stderr
    assert token not in (fake / "host").read_text()  # the token went on stdin, not on a command line
    third_node = wait_for("mn3 ready in disco nodes", lambda: cluster.nodes().get("mn3", {}).get("state") == "ready"
                          and cluster.nodes()["mn3"])
    assert (third_node["address"], third_node["role"]) == ("10.250.0.4", "worker")

    again = run([DISCO, "nodes:add", "--ssh", "root@mn3"], cwd=cluster.home, env=env, timeout=180)
    assert again.returncode == 0 and "already a node of the swarm at 10.250.0.2:2377" in again.stderr


def test_a_node_whose_engine_stops_shows_down_and_ready_once_it_is_back(cluster: Cluster):
    third = cluster.rig.engines[2]
    cluster.rig.stop_engine(third)
    wait_for("mn3 down in disco nodes", lambda: cluster.nodes()["mn3"]["state"] == "down", timeout=90)
    cluster.rig.start_engine(third)  # it rejoins by itself
    wait_for("mn3 ready again", lambda: cluster.nodes()["mn3"]["state"] == "ready", timeout=90)


def test_a_node_that_still_answers_is_removed_and_told_how_to_stop_asking_back(cluster: Cluster):
    removed = cluster.cli("nodes:remove", "mn3", "--force")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert "mn3 drained" in removed.stdout and "is no longer a node of the swarm" in removed.stdout
    assert "run `docker swarm leave` on mn3" in removed.stderr
    assert set(cluster.nodes()) == {"mn1", "mn2"}
    actions = [(e["action"], e["target"]) for e in cluster.disco.api("GET", "/audit", limit=5).json()]
    assert ("nodes:remove", "mn3") in actions and ("nodes:drain", "mn3") in actions


def test_labels_are_set_and_removed_and_shown(cluster: Cluster):
    labelled = cluster.cli("nodes:label", "mn2", "zone=b", "disk=ssd")
    assert labelled.returncode == 0, labelled.stderr
    assert labelled.stdout.strip() == "mn2: disk=ssd zone=b"
    assert cluster.cli("nodes:label", "mn2", "disk-").returncode == 0
    assert cluster.nodes()["mn2"]["labels"] == {"zone": "b"}
    assert "zone=b" in next(line for line in cluster.cli("nodes").stdout.splitlines() if line.startswith("mn2"))
    refused = cluster.cli("nodes:label", "mn2", "disco.volume=x")
    assert refused.returncode == 1 and "Disco's own" in refused.stderr
    missing = cluster.cli("nodes:label", "nope", "a=b")
    assert missing.returncode == 1 and "no node named 'nope'" in missing.stderr
    assert cluster.disco.api("GET", "/audit", limit=3).json()[0]["action"] == "nodes:label"


def test_a_deploy_pushes_its_image_and_its_replicas_answer_from_both_nodes(cluster: Cluster, tmp_path: Path):
    repo = web_app(tmp_path / "app", "v1\n", WHO_AM_I, **{"disco.toml": "[services.web]\nreplicas = 2\n"})
    pushed = cluster.push(repo)
    assert f"pushing 1 image(s) to the registry at {REGISTRY}, where every node pulls them from" in pushed.stderr
    assert "push " in pushed.stderr and ": pushed" in pushed.stderr  # each layer, as it goes
    assert cluster.through_caddy().text == "v1\n"

    web = cluster.service(PROJECT)
    assert cluster.running_where(web) == ["mn1", "mn2"]  # spread: one task on each node
    # Caddy on the manager reaches both over the overlay network: each answers with its hostname.
    on_manager, on_worker = cluster.tasks_on(cluster.rig.manager, web), cluster.tasks_on(cluster.rig.worker, web)
    assert len(on_manager) == len(on_worker) == 1
    seen: set[str] = set()
    wait_for("answers from both tasks", lambda: seen.add(cluster.through_caddy(path="/who").text.strip())
             or seen >= {on_manager[0], on_worker[0]}, timeout=30, every=0.05)

    # The worker pulled the image from the registry with the credentials swarm handed it; without
    # them the registry refuses.
    image = cluster.rig.manager.docker("service", "inspect", web, "--format",
                                       "{{.Spec.TaskTemplate.ContainerSpec.Image}}").stdout.strip()
    assert image.startswith(f"{REGISTRY}/") and "@sha256:" in image  # pinned to the digest pushed
    assert cluster.rig.worker.docker("image", "inspect", image, check=False).returncode == 0
    # (by tag: a digest the worker holds already is not asked of the registry)
    refused = cluster.rig.worker.docker("pull", image.split("@")[0], check=False)
    assert refused.returncode != 0 and "no basic auth credentials" in refused.stderr, refused.stderr
    assert cluster.registry_tags() == [image.split("@")[0].rpartition(":")[2]]


def test_a_deploy_across_both_nodes_drops_no_request(cluster: Cluster, tmp_path: Path):
    repo = tmp_path / "app"
    run(["git", "clone", "-q", str(cluster.disco.repo_dir(PROJECT)), str(repo)], check=True)
    new_version(repo, "v2\n", WHO_AM_I, **{"disco.toml": "[services.web]\nreplicas = 2\n"})
    v1_image = cluster.rig.manager.docker("service", "inspect", cluster.service(PROJECT), "--format",
                                          "{{.Spec.TaskTemplate.ContainerSpec.Image}}").stdout.strip()
    with Poller(cluster.disco, HOST, address=cluster.rig.manager.address) as poller:
        wait_for("the poller's first answers", lambda: len(poller.bodies) >= 5)
        cluster.push(repo)
        wait_for("v2 answering", lambda: poller.bodies[-1] == "v2\n", timeout=30)
    assert poller.errors == [], poller.errors[:5]
    assert set(poller.bodies) == {"v1\n", "v2\n"}
    # v1's image is pruned (--keep-images 1) from the registry too, and its layers collected,
    # and from the worker, which pulled it for v1's task there.
    assert cluster.rig.worker.docker("image", "inspect", v1_image, check=False).returncode == 0
    live = cluster.disco.api("GET", f"/projects/{PROJECT}/deployments/2").json()
    wait_for("v1's tag gone from the registry", lambda: cluster.registry_tags() == [live["image"].rpartition(":")[2]])
    output = cluster.disco.finished_deployment(PROJECT, 2)
    log = cluster.disco.api("GET", f"/projects/{PROJECT}/deployments/2/output").text
    assert "registry: 1 image(s) deleted;" in log and "eligible for deletion" in log, log[-1500:]
    assert "pruning unused images on the other nodes" in log
    wait_for("v1's image gone from the worker",
             lambda: cluster.rig.worker.docker("image", "inspect", v1_image, check=False).returncode != 0, timeout=60)
    assert output["status"] == "live"
    # An env change runs the same image under a new tag, so the same digest: pruning v2's tag
    # must not delete the manifest the live deployment's tag names (the registry deletes by
    # digest, every tag of it at once).
    changed = cluster.cli("env:set", "GREETING=hi", "-p", PROJECT)
    assert changed.returncode == 0, changed.stdout + changed.stderr
    third = cluster.disco.finished_deployment(PROJECT, 3)
    assert third["status"] == "live", third
    third_tag = third["image"].rpartition(":")[2]
    assert sorted(cluster.registry_tags()) == sorted({live["image"].rpartition(":")[2], third_tag})
    assert "image(s) deleted" not in cluster.disco.api("GET", f"/projects/{PROJECT}/deployments/3/output").text
    pinned = cluster.rig.manager.docker("service", "inspect", cluster.service(PROJECT), "--format",
                                        "{{.Spec.TaskTemplate.ContainerSpec.Image}}").stdout.strip()
    assert pinned.startswith(f"{REGISTRY}/") and f":{third_tag}@sha256:" in pinned  # pulled by digest
    # Where the new tasks run is swarm's choice: a rolling update does not spread them
    # (moby/moby#34414), so both may land on one node until a scale or a failure moves them.
    wait_for("the old tasks gone", lambda: len(cluster.running_where(cluster.service(PROJECT))) == 2)
    assert "v2\n" == cluster.through_caddy().text


def test_a_service_with_a_volume_stays_on_the_node_that_holds_its_data(cluster: Cluster, tmp_path: Path):
    toml = '[services.web]\nreplicas = 1\nvolumes = ["data:/data"]\n'
    # It counts its starts in the volume, and serves the count: the data is there after a deploy.
    counting = [*BASE, "COPY www /www", "EXPOSE 8000", shell_cmd(
        "echo x >> /data/starts && /bin/busybox wc -l < /data/starts > /www/index.html && "
        "exec /bin/busybox httpd -f -p 8000 -h /www")]
    repo = web_app(tmp_path / "app", "unused\n", counting, **{"disco.toml": toml})
    pushed = cluster.push(repo, "keeper")
    assert "services.web runs on mn1, where its volume data lives" in pushed.stderr
    volume = names.join(cluster.disco.instance, "keeper", "data")
    assert cluster.nodes()["mn1"]["labels"][f"disco.volume.{volume}"] == "true"
    assert cluster.through_caddy("keeper.localhost").text.strip() == "1"

    new_version(repo, "still unused\n", counting, **{"disco.toml": toml + "# again\n"})
    cluster.push(repo, "keeper")
    web = cluster.service("keeper")
    assert cluster.running_where(web) == ["mn1"]
    assert cluster.through_caddy("keeper.localhost").text.strip() == "2"  # the same volume, on the same node
    constraints = cluster.rig.manager.docker("service", "inspect", web, "--format",
                                             "{{json .Spec.TaskTemplate.Placement.Constraints}}").stdout
    assert json.loads(constraints) == [f"node.labels.disco.volume.{volume}==true"]
    info = cluster.cli("projects:info", "-p", "keeper")
    assert "runs      web: 1 on mn1; kept to mn1 (its volume data)" in info.stdout, info.stdout + info.stderr


def test_scale_puts_tasks_on_every_active_node(cluster: Cluster):
    scaled = cluster.cli("scale:set", "web=4", "-p", PROJECT)
    assert scaled.returncode == 0, scaled.stderr
    web = cluster.service(PROJECT)
    wait_for("2 tasks on each node", lambda: cluster.running_where(web) == ["mn1", "mn1", "mn2", "mn2"], timeout=90)
    info = cluster.cli("projects:info", "-p", PROJECT)
    # Swarm may move a task meanwhile (a health check failing on a busy machine): both nodes, 4 tasks.
    shown = re.search(r"^runs      web: (\d) on mn1, (\d) on mn2$", info.stdout, re.MULTILINE)
    assert shown and sum(map(int, shown.groups())) == 4, info.stdout + info.stderr


def test_when_the_workers_engine_stops_its_tasks_run_on_the_manager_and_traffic_follows(cluster: Cluster):
    rig, web = cluster.rig, cluster.service(PROJECT)
    # Swarm may have moved a task since (one failing its health check on a busy machine): the
    # worker must run some of them for this to test anything.
    wait_for("tasks on the worker", lambda: "mn2" in cluster.running_where(web))
    rig.stop_engine(rig.worker)
    wait_for("mn2 down in disco nodes", lambda: cluster.nodes()["mn2"]["state"] == "down", timeout=90)
    wait_for("all tasks running on the manager", lambda: cluster.all_on_manager(web, 4), timeout=90)
    with Poller(cluster.disco, HOST, address=rig.manager.address) as poller:
        wait_for("20 answers", lambda: len(poller.bodies) >= 20, timeout=30)
    assert poller.errors == [] and set(poller.bodies) == {"v2\n"}  # the route follows the moved tasks

    rig.start_engine(rig.worker)  # it rejoins by itself
    wait_for("mn2 ready again", lambda: cluster.nodes()["mn2"]["state"] == "ready", timeout=90)


def test_an_external_registry_named_at_start_carries_the_images_instead(cluster: Cluster, tmp_path: Path):
    # The registry of an admin who runs one: Debian's docker-registry on the bridge's address,
    # with a certificate the nodes were told to trust and a user of its own.
    external, password = f"{rig_module.SUBNET}.1:5443", "external-registry-password"
    trust = Path(f"/etc/docker/certs.d/{external}/ca.crt")
    cert_pem, key_pem = self_signed_certificate(f"{rig_module.SUBNET}.1")
    for name, text in {"cert.pem": cert_pem, "key.pem": key_pem, "htpasswd": htpasswd_line("ci", password),
                       "password": password + "\n"}.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "config.yml").write_text(own_config().replace(CONTAINER_DIR, str(tmp_path)).replace(
        STORAGE_DIR, str(tmp_path / "storage")).replace(":5000", external))
    trust.parent.mkdir(parents=True, exist_ok=True)
    trust.write_text(cert_pem)
    served = subprocess.Popen(["/usr/bin/docker-registry", "serve", str(tmp_path / "config.yml")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop_serving() -> None:  # once the module is done: the app's tasks pull from it from now on
        served.terminate()
        served.wait(30)
        trust.unlink(missing_ok=True)
        trust.parent.rmdir()

    cluster.cleanups.append(stop_serving)
    disco = cluster.disco
    disco.stop()
    disco.extra_args += ["--registry", external, "--registry-user", "ci",
                         "--registry-password-file", str(tmp_path / "password")]
    disco.start()
    disco.wait_for_log(f"images reach other nodes through the registry at {external}")

    repo = tmp_path / "app"
    run(["git", "clone", "-q", str(disco.repo_dir(PROJECT)), str(repo)], check=True)
    new_version(repo, "v3\n", WHO_AM_I, **{"disco.toml": "[services.web]\nreplicas = 2\n"})
    pushed = cluster.push(repo)
    assert f"pushing 1 image(s) to the registry at {external}" in pushed.stderr
    assert cluster.through_caddy().text == "v3\n"
    image = cluster.rig.manager.docker("service", "inspect", cluster.service(PROJECT), "--format",
                                       "{{.Spec.TaskTemplate.ContainerSpec.Image}}").stdout.strip()
    assert image.startswith(f"{external}/") and "@sha256:" in image
    listed = httpx.get(f"https://{external}/v2/{names.join(disco.instance, PROJECT)}/tags/list",
                       auth=("ci", password), verify=ssl.create_default_context(cadata=cert_pem), timeout=10)
    assert listed.json()["tags"] == [image.split("@")[0].rpartition(":")[2]]
    # The worker pulls it from there: a new task on it (scale) runs it.
    assert cluster.cli("scale:set", "web=3", "-p", PROJECT).returncode == 0
    wait_for("a task on the worker", lambda: "mn2" in cluster.running_where(cluster.service(PROJECT)), timeout=90)
    assert cluster.rig.worker.docker("image", "inspect", image, check=False).returncode == 0


def test_nodes_remove_drains_the_worker_its_tasks_move_and_it_leaves_the_list(cluster: Cluster):
    rig, service = cluster.rig, cluster.service(PROJECT)
    assert "mn2" in cluster.running_where(service)  # the last test put one there: it must move
    started = time.monotonic()
    removed = cluster.cli("nodes:remove", "mn2", timeout=240)  # the server gives up after 180 s
    if removed.returncode != 0:
        print(rig.manager.docker("service", "ps", "--no-trunc", service).stdout)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    lines = removed.stdout.splitlines()
    assert lines[0].startswith("mn2 drained")
    assert any(line.startswith("waiting: ") for line in lines), lines  # its task had to stop there first
    assert lines[-1].startswith("mn2 (") and lines[-1].endswith("is no longer a node of the swarm")
    assert time.monotonic() - started < 150  # not the whole REMOVE_TIMEOUT (180 s): it went on once they moved

    assert list(cluster.nodes()) == ["mn1"]

    replicas = int(rig.manager.docker("service", "inspect", service, "--format",
                                      "{{.Spec.Mode.Replicated.Replicas}}").stdout)
    wait_for("all tasks running on the manager", lambda: cluster.all_on_manager(service, replicas), timeout=60)
    assert cluster.through_caddy().text == "v3\n"  # the app served throughout on the manager


def test_the_daemons_own_node_is_not_removed(cluster: Cluster):
    refused = cluster.cli("nodes:remove", "mn1")
    assert refused.returncode == 1 and "the node this server runs on" in refused.stderr
    response = cluster.disco.api("DELETE", "/nodes/mn1")
    assert response.status_code == 409, response.text
    assert cluster.nodes()["mn1"]["availability"] == "active"  # refused before anything changed
