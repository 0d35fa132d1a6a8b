"""More than one server (issue 14, first step): the swarm's nodes through the daemon, on a real
swarm of several Docker engines on this machine (tests/multinode.py: each dockerd in a network
namespace of its own, apart from the host's dockerd and swarm).

One rig and one daemon for the whole module (its tests run in order and build on each other):
the daemon is pointed at the rig's manager with DOCKER_HOST, so it builds, runs its proxy and
deploys there; Caddy answers on the manager's address, 10.250.0.2.

What does not run here yet, because it is the next step: images reaching other nodes through a
registry. Until then the daemon pins every project service to its own node (so a deploy never
lands a task where its image is missing), and the test stands in for a spread project service
with a service it makes itself, of an image it copies to every engine.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from apps import web_app
from conftest import CADDY_IMAGE, DISCO, Disco, Key, laptop_cli, require_docker, run, shared_disco, wait_for
from multinode import BUSYBOX_IMAGE, Rig, import_busybox

PROJECT = "spread"
HOST = f"{PROJECT}.localhost"


@dataclass
class Cluster:
    rig: Rig
    disco: Disco
    key: Key
    cli: Callable[..., subprocess.CompletedProcess]  # `disco` on a laptop logged in as alice
    home: Path

    def nodes(self) -> dict[str, dict]:
        """Node name -> the node as GET /nodes says it."""
        response = self.disco.api("GET", "/nodes")
        assert response.status_code == 200, response.text
        return {node["name"]: node for node in response.json()}

    def through_caddy(self, host: str = HOST) -> httpx.Response:
        """A request to Caddy, which listens on the manager's address (in its namespace)."""
        return httpx.get(f"http://{self.rig.manager.address}:{self.disco.http_port}/", headers={"Host": host},
                         timeout=10)


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
        rig.load_image(CADDY_IMAGE, rig.manager)  # setup.sh's image, where no registry is reachable
        for disco, key in shared_disco(workdir, extra_env={"DOCKER_HOST": rig.manager.docker_host}):
            disco.wait_for_proxy()
            home = workdir / "laptop"
            yield Cluster(rig, disco, key, laptop_cli(disco, home), home)
    finally:
        rig.down()


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


def test_nodes_add_prints_the_join_command_and_its_token_joins_a_third_machine(cluster: Cluster):
    shown = cluster.cli("nodes:add")
    assert shown.returncode == 0, shown.stderr
    token = cluster.rig.join_token()
    assert f"./setup.sh join 10.250.0.2:2377 {token}" in shown.stdout
    assert "2377/tcp, 7946/tcp and udp, 4789/udp" in shown.stdout and "keep it secret" in shown.stderr
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


def test_a_deploy_runs_on_the_daemons_node_until_images_reach_the_others(cluster: Cluster, tmp_path: Path):
    repo = web_app(tmp_path / "app", "v1\n", **{"disco.toml": "[services.web]\nreplicas = 2\n"})
    pushed = cluster.disco.git(cluster.key, "push", cluster.disco.url(PROJECT), "main", cwd=repo, timeout=300)
    assert pushed.returncode == 0, pushed.stderr
    assert cluster.through_caddy().text == "v1\n"
    nodes = cluster.nodes()
    assert (nodes["mn1"]["tasks"], nodes["mn2"]["tasks"]) == (3, 0)  # both replicas and the proxy


def test_nodes_remove_drains_the_worker_its_tasks_move_and_it_leaves_the_list(cluster: Cluster):
    rig = cluster.rig
    # What a project service spread over both nodes will be once images travel: a service of
    # this instance, replicas 2, of an image both engines have. Swarm spreads it: one task each.
    for engine in rig.engines[:2]:
        import_busybox(engine)
    service = f"{cluster.disco.instance}-stand-in"
    rig.manager.docker("service", "create", "--detach", "--name", service, "--replicas", "2", "--no-resolve-image",
                       "--label", f"disco.instance={cluster.disco.instance}", BUSYBOX_IMAGE,
                       "/bin/busybox", "sleep", "3600")
    wait_for("a task on each node", lambda: (cluster.nodes()["mn2"]["tasks"], cluster.nodes()["mn1"]["tasks"]) == (1, 4),
             timeout=90)

    started = time.monotonic()
    removed = cluster.cli("nodes:remove", "mn2")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    lines = removed.stdout.splitlines()
    assert lines[0].startswith("mn2 drained")
    assert any(line.startswith("waiting: ") for line in lines), lines  # its task had to stop there first
    assert lines[-1].startswith("mn2 (") and lines[-1].endswith("is no longer a node of the swarm")
    assert time.monotonic() - started < 60

    assert list(cluster.nodes()) == ["mn1"]

    def both_running_on_the_manager() -> bool:  # the moved task may still be starting there
        running = rig.manager.docker("service", "ps", service, "--filter", "desired-state=running",
                                     "--format", "{{.Node}} {{.CurrentState}}").stdout.split("\n")
        return [line.split()[:2] for line in running if line] == [["mn1", "Running"], ["mn1", "Running"]]

    wait_for("both tasks running on the manager", both_running_on_the_manager, timeout=60)
    assert cluster.through_caddy().text == "v1\n"  # the app served throughout on the manager


def test_the_daemons_own_node_is_not_removed(cluster: Cluster):
    refused = cluster.cli("nodes:remove", "mn1")
    assert refused.returncode == 1 and "the node this server runs on" in refused.stderr
    response = cluster.disco.api("DELETE", "/nodes/mn1")
    assert response.status_code == 409, response.text
    assert cluster.nodes()["mn1"]["availability"] == "active"  # refused before anything changed
