"""dockerd stopped and started again under a running daemon: while idle, and during a deploy.

The daemon is not restarted: it notices Docker going and coming back by itself (and says so in
its log), refuses at once what needs Docker while it is away, settles the deployment Docker's
stop interrupted, and the apps and the proxy come back with Docker. This restarts the machine's
one dockerd, so every other test's objects must be gone by then: it only relies on its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from apps import BASE, new_version, shell_cmd, web_app
from conftest import Disco, Key, docker_available, require_docker, run, server_ref, shared_disco, wait_for

PROJECT = "dockerapp"
HOST = f"{PROJECT}.localhost"
SETUP = Path(__file__).resolve().parent.parent / "setup.sh"
DOCKERD_PID_FILE = Path("/var/run/docker.pid")


@dataclass
class App:
    disco: Disco
    key: Key
    repo: Path

    def push(self) -> subprocess.CompletedProcess:
        return self.disco.git(self.key, "push", self.disco.url(PROJECT), "main", cwd=self.repo, timeout=300)

    def served(self) -> str | None:
        try:
            response = self.disco.get(HOST, timeout=2)
        except httpx.TransportError:  # Caddy's task is not back yet
            return None
        return response.text if response.status_code == 200 else None


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    require_docker()
    workdir = tmp_path_factory.mktemp("dockerrestart")
    for disco, key in shared_disco(workdir):
        app = App(disco, key, web_app(workdir / "repo", "v1\n"))
        result = app.push()
        assert result.returncode == 0, result.stderr
        try:
            yield app
        finally:
            start_docker()  # whatever a failing test left, the tests after this one need Docker


def stop_docker() -> None:
    pid = int(DOCKERD_PID_FILE.read_text())
    os.kill(pid, signal.SIGTERM)
    wait_for("dockerd to exit", lambda: has_exited(pid), timeout=90)


def has_exited(pid: int) -> bool:
    """Gone, or a zombie: a dockerd started by an older setup.sh may be a child of this pytest."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def start_docker() -> None:
    if not docker_available():
        run(["bash", str(SETUP), "docker"], check=True)
    wait_for("the swarm to manage again", lambda: run(["/usr/bin/docker", "node", "ls"]).returncode == 0, 60)


def test_docker_restarted_while_idle(app: App):
    disco = app.disco
    stop_docker()
    disco.wait_for_log("Docker is not reachable", timeout=30)

    # What needs Docker says so at once; what does not goes on.
    started = time.monotonic()
    scale = disco.api("GET", f"/projects/{PROJECT}/scale")
    assert scale.status_code == 503 and "Docker is not reachable" in scale.json()["error"]["message"], scale.text
    before = server_ref(disco, PROJECT)
    new_version(app.repo, "v2\n")
    pushed = app.push()
    assert time.monotonic() - started < 20, "a call that needs Docker hung while it was away"
    assert pushed.returncode != 0 and "Docker is not reachable" in pushed.stderr, pushed.stderr
    assert server_ref(disco, PROJECT) == before, "the refused push moved the deploy branch"
    assert disco.api("GET", f"/projects/{PROJECT}").status_code == 200

    start_docker()
    disco.wait_for_log("Docker is reachable again", timeout=60)
    assert wait_for("the app to serve again", lambda: app.served() == "v1\n", timeout=120)
    result = app.push()  # the push refused before now deploys: its ref never moved
    assert result.returncode == 0, result.stderr
    assert app.served() == "v2\n"
    assert "Traceback" not in disco.log()[disco.log_offset:]


def test_docker_restarted_during_a_deploy(app: App):
    disco = app.disco
    slow = [*BASE, "COPY www /www", "EXPOSE 8000", shell_cmd("sleep 8; exec /bin/busybox httpd -f -p 8000 -h /www")]
    commit = new_version(app.repo, "v3\n", slow)
    pusher = subprocess.Popen(["git", "push", disco.url(PROJECT), "main"], cwd=app.repo, env=disco.git_env(app.key),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    number = wait_for("the deployment to wait for health", lambda: _waiting_for_health(disco), timeout=180)
    stop_docker()
    start_docker()
    output, _ = pusher.communicate(timeout=300)
    assert pusher.returncode != 0, output
    assert "Docker stopped during the deployment" in output and "Docker is back" in output, output

    record = disco.finished_deployment(PROJECT, number)
    assert record["status"] == "failed" and "Docker stopped during the deployment" in record["reason"]
    live = disco.api("GET", f"/projects/{PROJECT}").json()["live_deployment"]
    assert live["commit"] != commit and server_ref(disco, PROJECT) == live["commit"]
    assert wait_for("the previous version to serve again", lambda: app.served() == "v2\n", timeout=120)

    new_version(app.repo, "v4\n")
    result = app.push()
    assert result.returncode == 0, result.stderr
    assert app.served() == "v4\n"


def _waiting_for_health(disco: Disco) -> int | None:
    found = disco.api("GET", f"/projects/{PROJECT}/deployments").json()
    going = [d for d in found if d["status"] == "starting"]
    if not going:
        return None
    output = (disco.data_dir / "deployments" / PROJECT / f"{going[0]['number']}.log").read_text()
    return going[0]["number"] if "to be healthy" in output else None

