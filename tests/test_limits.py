"""What one project may cost the server, enforced on real Docker: memory, CPUs and processes per
task and per one-off command, services per project and replicas per service; and how often
Docker checks a task's health (each check costs the server a process in the task)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from apps import BASE, SERVE, new_version, web_app
from conftest import Disco, Key, require_docker, run, server_ref, shared_disco

MIB = 1 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    require_docker()
    yield from shared_disco(tmp_path_factory.mktemp("limits"), [
        "--max-services", "3", "--max-replicas", "4", "--default-memory", "200M", "--default-pids", "500",
        "--health-interval", "2"])


def push(disco: Disco, key: Key, repo: Path, project: str) -> subprocess.CompletedProcess:
    return disco.git(key, "push", disco.url(project), "main", cwd=repo, timeout=300)


def task_template_of(disco: Disco, project: str, service: str = "web") -> dict:
    name = f"{disco.instance}-{project}-{service}"
    spec = json.loads(run(["/usr/bin/docker", "service", "inspect", name], check=True).stdout)[0]["Spec"]
    return spec["TaskTemplate"]


def limits_of(disco: Disco, project: str, service: str = "web") -> dict:
    return task_template_of(disco, project, service)["Resources"]["Limits"]


def api(disco: Disco) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{disco.api_port}/api/v1",
                        headers={"Authorization": f"Bearer {disco.api_key}"}, timeout=60)


def test_tasks_and_one_off_commands_get_their_limits(server, tmp_path: Path):
    disco, key = server
    toml = '[services.web]\nmemory = "300M"\ncpus = 0.5\npids = 100\n\n[services.worker]\ncommand = "/bin/busybox sleep 3600"\n'
    repo = web_app(tmp_path / "app", "v1\n", **{"disco.toml": toml})
    result = push(disco, key, repo, "capped")
    assert result.returncode == 0, result.stderr
    assert limits_of(disco, "capped") == {"MemoryBytes": 300 * MIB, "NanoCPUs": 500_000_000, "Pids": 100}
    # Nothing said in disco.toml: the server's defaults, never unlimited.
    assert limits_of(disco, "capped", "worker") == {"MemoryBytes": 200 * MIB, "Pids": 500}

    # A one-off command runs within its service's limits too, as the kernel sees them.
    with api(disco) as client, client.stream(
        "POST", "/projects/capped/run",
        json={"command": ["/bin/busybox", "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/pids/pids.max"]},
    ) as response:
        assert response.status_code == 200
        events = response.read().decode()
    assert f"data: {300 * MIB}\n" in events and "data: 100\n" in events, events


def test_the_servers_health_interval_paces_the_tasks_checks_and_the_push_says_it(server, tmp_path: Path):
    disco, key = server
    repo = web_app(tmp_path / "app", "v1\n")
    result = push(disco, key, repo, "paced")
    assert result.returncode == 0, result.stderr
    assert f"waiting for {disco.instance}-paced-web to be healthy (TCP connect, every 2 s, up to 60 s)" in result.stderr
    check = task_template_of(disco, "paced")["ContainerSpec"]["Healthcheck"]
    assert check["Interval"] == 2 * 10**9 and check["Retries"] == 3
    assert disco.get("paced.localhost").text == "v1\n"


def test_a_task_past_its_memory_is_killed_and_the_deploy_says_so(server, tmp_path: Path):
    disco, key = server
    repo = web_app(tmp_path / "app", "v1\n")
    assert push(disco, key, repo, "hungry").returncode == 0
    live = server_ref(disco, "hungry")
    # The new version eats memory until the kernel kills it: tail looks for a newline that never comes.
    hog = [*BASE, "COPY www /www", "EXPOSE 8000", 'CMD ["/bin/busybox", "tail", "/dev/zero"]']
    new_version(repo, "v2\n", hog, **{"disco.toml": '[services.web]\nmemory = "256M"\n'})
    result = push(disco, key, repo, "hungry")
    assert result.returncode != 0
    assert "out of memory (limit 256M)" in result.stderr, result.stderr
    assert server_ref(disco, "hungry") == live  # the branch still names what is live
    assert disco.get("hungry.localhost").text == "v1\n"


def test_caps_refuse_the_push_before_the_ref_moves(server, tmp_path: Path):
    disco, key = server
    workers = "".join(f'[services.w{i}]\ncommand = "/bin/busybox sleep 60"\n' for i in range(3))
    repo = web_app(tmp_path / "app", "v1\n", **{"disco.toml": f"[services.web]\n{workers}"})
    result = push(disco, key, repo, "greedy")
    assert result.returncode != 0
    assert "the app defines 4 services; this server allows 3 per project" in result.stderr, result.stderr
    assert server_ref(disco, "greedy") is None

    new_version(repo, "v2\n", [*BASE, "COPY www /www", "EXPOSE 8000", SERVE],
                **{"disco.toml": "[services.web]\nreplicas = 5\n"})
    result = push(disco, key, repo, "greedy")
    assert "services.web.replicas is 5; this server allows 4 per service" in result.stderr, result.stderr
    assert server_ref(disco, "greedy") is None

    new_version(repo, "v3\n", **{"disco.toml": "[services.web]\nreplicas = 1\n"})
    assert push(disco, key, repo, "greedy").returncode == 0
    with api(disco) as client:
        refused = client.post("/projects/greedy/scale", json={"web": 5})
        assert refused.status_code == 400
        assert "from 0 to 4" in refused.json()["error"]["message"]
        assert client.post("/projects/greedy/scale", json={"web": 2}).json() == {"web": 2}
