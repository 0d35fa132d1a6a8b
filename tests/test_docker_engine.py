"""The engine's answers when swarm changes under it, on the real dockerd (no daemon needed)."""

from __future__ import annotations

import subprocess
import uuid

import pytest
from docker.models.services import ServiceCollection

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
    subprocess.run(["/usr/bin/docker", "network", "rm", f"{instance}-net"], capture_output=True)


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


def test_removing_an_instance_also_removes_a_service_created_after_it_began(engine: Engine, monkeypatch):
    """CI's teardown failed this way: a daemon killed while it created its proxy service in the
    background left that service to appear after the first listing, and its network stayed in use."""
    network = f"{engine.instance}-net"
    subprocess.run(["/usr/bin/docker", "network", "create", "--driver", "overlay", "--attachable",
                    "--label", f"disco.instance={engine.instance}", network], check=True, capture_output=True)
    service(engine, f"{engine.instance}-kept")
    real_list = ServiceCollection.list
    listings = []

    def list_then_create_one_late(collection: ServiceCollection, **kwargs):
        listed = real_list(collection, **kwargs)
        listings.append([s.name for s in listed])
        if len(listings) == 1:  # the creation that was under way lands just after the first listing
            subprocess.run(["/usr/bin/docker", "service", "create", "--detach", "--quiet", "--replicas", "0",
                            "--network", network, "--label", f"disco.instance={engine.instance}",
                            "--name", f"{engine.instance}-gone", CADDY_IMAGE], check=True, capture_output=True)
        return listed

    monkeypatch.setattr(ServiceCollection, "list", list_then_create_one_late)  # the timing forced, Docker real
    engine.remove_instance()
    assert listings[0] == [f"{engine.instance}-kept"]
    assert f"{engine.instance}-gone" in sum(listings[1:], [])  # seen by a later listing, and removed
    assert real_list(engine.client.services, filters={"label": f"disco.instance={engine.instance}"}) == []
    assert engine.client.networks.list(filters={"label": f"disco.instance={engine.instance}"}) == []
