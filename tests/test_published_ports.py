"""TCP services and health commands (issue 12, parts 4 and 5), end to end on one real daemon
(Docker, swarm, Caddy, git over SSH): a service that publishes a host port answers there from
the host and redeploys stop-first; a port another project or Disco itself has is refused before
the ref moves; a health command decides when a version is healthy, and one that never passes
fails the deploy naming it while the old version keeps serving.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from apps import BASE, BUSYBOX, shell_cmd
from conftest import Disco, Key, free_port, make_repo, commit, require_docker, run, server_ref, shared_disco, wait_for

STOP_FIRST = "its update stops the old task first (two tasks cannot share a host port)"


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory):
    require_docker()
    yield from shared_disco(tmp_path_factory.mktemp("published-ports"))


def push(disco: Disco, key: Key, repo: Path, project: str):
    return disco.git(key, "push", disco.url(project), "main", cwd=repo, timeout=300)


def swarm_spec(disco: Disco, project: str, service: str) -> dict:
    out = run(["/usr/bin/docker", "service", "inspect", f"{disco.instance}-{project}-{service}"], check=True).stdout
    return json.loads(out)[0]["Spec"]


def tcp_files(answer: str, publish: str) -> dict[str, str | bytes]:
    """A TCP service that says `answer` to every connection on port 7000 (busybox nc), published."""
    server = f'CMD ["/bin/busybox", "nc", "-ll", "-p", "7000", "-e", "/bin/busybox", "echo", "{answer}"]'
    return {"busybox": BUSYBOX.read_bytes(), "Dockerfile": "\n".join([*BASE, server]) + "\n",
            "disco.toml": f'[services.db]\nport = 7000\npublish = ["{publish}"]\n'}


def answer_on(port: int) -> str | None:
    """What the service on this host port says to a new connection, from the host."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
            sock.settimeout(3)
            return sock.recv(100).decode().strip() or None
    except OSError:
        return None


@pytest.fixture(scope="module")
def tcp_port(rig, tmp_path_factory: pytest.TempPathFactory) -> int:
    """Project tcpa's service db, publishing a free host port; its first deploy checked."""
    disco, alice = rig
    port = free_port()
    repo = make_repo(tmp_path_factory.mktemp("tcpa") / "tcpa", tcp_files("pong-v1", f"{port}:7000/tcp"))
    first = push(disco, alice, repo, "tcpa")
    assert first.returncode == 0, first.stderr
    assert f"remote: services.db publishes {port}/tcp: {STOP_FIRST}" in first.stderr
    return port


def test_a_tcp_service_answers_on_its_published_port_and_redeploys_stop_first(rig, tcp_port: int, tmp_path: Path):
    disco, alice = rig
    assert wait_for(f"an answer on {tcp_port}", lambda: answer_on(tcp_port), timeout=30) == "pong-v1"
    spec = swarm_spec(disco, "tcpa", "db")
    assert spec["EndpointSpec"]["Ports"] == [
        {"Protocol": "tcp", "PublishedPort": tcp_port, "TargetPort": 7000, "PublishMode": "host"}]
    assert spec["UpdateConfig"]["Order"] == "stop-first" and spec["RollbackConfig"]["Order"] == "stop-first"

    # A second version takes the port over: the old task stops first, then the new one binds it.
    repo = tmp_path / "tcpa"
    run(["git", "clone", "-q", str(disco.repo_dir("tcpa")), str(repo)], check=True)
    commit(repo, tcp_files("pong-v2", f"{tcp_port}:7000/tcp"), "v2")
    second = push(disco, alice, repo, "tcpa")
    assert second.returncode == 0, second.stderr
    assert f"remote: services.db publishes {tcp_port}/tcp: {STOP_FIRST}" in second.stderr
    assert "deployment #2 is live" in second.stderr
    assert wait_for("v2 on the port", lambda: answer_on(tcp_port) == "pong-v2", timeout=30)


def test_a_port_another_project_publishes_is_refused_before_the_ref_moves(rig, tcp_port: int, tmp_path: Path):
    disco, alice = rig
    repo = make_repo(tmp_path / "tcpb", tcp_files("other", f"{tcp_port}:7000"))
    result = push(disco, alice, repo, "tcpb")
    assert result.returncode != 0
    assert (f"services.db.publish: host port {tcp_port}/tcp is already published by project 'tcpa' "
            f"(swarm service {disco.instance}-tcpa-db); publish another host port, like \"{tcp_port + 1}:7000/tcp\"") \
        in result.stderr
    assert "[remote rejected]" in result.stderr
    assert server_ref(disco, "tcpb") is None  # the ref did not move, nothing deployed
    assert answer_on(tcp_port) in ("pong-v1", "pong-v2")  # tcpa keeps its port


def test_a_port_disco_itself_uses_is_refused_before_the_ref_moves(rig, tmp_path: Path):
    disco, alice = rig
    repo = make_repo(tmp_path / "tcpc", tcp_files("other", f"{disco.ssh_port}:7000"))
    result = push(disco, alice, repo, "tcpc")
    assert result.returncode != 0
    assert (f"services.db.publish: host port {disco.ssh_port}/tcp is the port of Disco's git-over-SSH server "
            "(ssh_port)") in result.stderr
    assert server_ref(disco, "tcpc") is None


HEALTH_APP = [*BASE, "COPY www /www", "EXPOSE 8000",
              # Ready only a few seconds after it listens: a TCP check would pass at once.
              shell_cmd("/bin/busybox httpd -p 8000 -h /www; /bin/busybox sleep 4; "
                        "/bin/busybox touch /www/ready; exec /bin/busybox sleep 100000")]


def health_files(text: str, command: str, timeout: int) -> dict[str, str | bytes]:
    return {"busybox": BUSYBOX.read_bytes(), "Dockerfile": "\n".join(HEALTH_APP) + "\n", "www/index.html": text,
            "disco.toml": f'[services.web]\nhealth = {{ command = "{command}" }}\nhealth_timeout = {timeout}\n'}


def test_a_health_command_decides_when_a_version_is_healthy(rig, tmp_path: Path):
    disco, alice = rig
    repo = make_repo(tmp_path / "ready", health_files("v1\n", "/bin/busybox test -f /www/ready", 60))
    first = push(disco, alice, repo, "ready")
    assert first.returncode == 0, first.stderr
    assert "(health command `/bin/busybox test -f /www/ready`, every 1 s, up to 60 s)" in first.stderr
    check = swarm_spec(disco, "ready", "web")["TaskTemplate"]["ContainerSpec"]["Healthcheck"]
    assert check["Test"] == ["CMD", "/bin/busybox", "test", "-f", "/www/ready"]
    assert disco.get("ready.localhost").text == "v1\n"
    # httpd answered at once, but the task became healthy only once the file was there.
    assert disco.api("GET", "/projects/ready/deployments/1").json()["timings"]["health"] >= 3

    # A version whose health command never passes: the deploy fails naming it, v1 keeps serving.
    commit(repo, health_files("v2\n", "/bin/busybox test -f /www/never", 5), "v2")
    second = push(disco, alice, repo, "ready")
    assert second.returncode != 0
    reason = f"health command `/bin/busybox test -f /www/never` of {disco.instance}-ready-web exited 1"
    assert reason in second.stderr, second.stderr
    assert "the previous version keeps serving" in second.stderr
    record = disco.api("GET", "/projects/ready/deployments/2").json()
    assert record["status"] == "failed" and reason in record["reason"]
    assert disco.get("ready.localhost").text == "v1\n"
