"""The engine's answers when swarm changes under it, on the real dockerd (no daemon needed)."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from conftest import require_docker
from runtime.docker_engine import DockerError, DockerUnreachable, Engine

CADDY_IMAGE = "disco-caddy:debian"  # any local image: these services run no task (0 replicas)


@pytest.fixture
def engine():
    require_docker()
    instance = f"t{uuid.uuid4().hex[:10]}"
    yield Engine(instance)
    for name in (f"{instance}-kept", f"{instance}-gone"):
        subprocess.run(["/usr/bin/docker", "service", "rm", name], capture_output=True)


def service(engine: Engine, name: str) -> None:
    subprocess.run(["/usr/bin/docker", "service", "create", "--detach", "--quiet", "--replicas", "0",
                    "--label", f"disco.instance={engine.instance}", "--name", name, CADDY_IMAGE],
                   check=True, capture_output=True)


def test_a_service_removed_between_listing_and_asking_for_tasks_has_none_instead_of_failing_all(engine: Engine):
    """`nodes:remove` failed in CI this way: a deploy's cleanup removed its prune job meanwhile."""
    service(engine, f"{engine.instance}-kept")
    service(engine, f"{engine.instance}-gone")
    listed = engine.client.api.services(filters={"label": f"disco.instance={engine.instance}"})
    assert len(listed) == 2
    subprocess.run(["/usr/bin/docker", "service", "rm", f"{engine.instance}-gone"], check=True, capture_output=True)
    assert engine._tasks_of(listed) == []  # swarm refused the whole list for the one gone: asked again without it
    subprocess.run(["/usr/bin/docker", "service", "rm", f"{engine.instance}-kept"], check=True, capture_output=True)
    assert engine._tasks_of(listed) == []  # all gone: none, not every task of the swarm


def test_docker_refusing_a_request_is_not_told_as_docker_being_unreachable(engine: Engine):
    # docker-py's APIError is also a requests HTTPError: it was caught as a transport failure.
    with pytest.raises(DockerError, match="Docker refused") as raised:
        engine.relabel_node("no-such-node", {"a": "b"}, [])
    assert not isinstance(raised.value, DockerUnreachable)
