"""A scale and a deployment of the same project never overlap (issue 16, many at once).

Found by tests/test_many_at_once.py: a scale made while a deployment ran was written back to
the old count by that deployment's spec (planned before it), or reset swarm's update state so
the deployment waited out its health timeout and failed, or raced its update ("update out of
sequence", a 500). Now swarm gets the count in the project's turn of the deploy queue. Here
with the real Deployer and queue on the fake engine: no Docker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_deploy_stages import WEB, Rig, _with

from hooks import deployment, operations
from hooks.errors import DeployFailed
from hooks.queue import Ticket
from runtime.store import DeploymentStatus


class Gate:
    """Holds whoever reaches it until opened; says when someone is waiting."""

    def __init__(self) -> None:
        self.reached, self.opened = threading.Event(), threading.Event()

    def wrap(self, call: Callable[..., object]) -> Callable[..., object]:
        def held(*args: object, **kwargs: object) -> object:
            self.reached.set()
            assert self.opened.wait(10), "the gate was never opened"
            return call(*args, **kwargs)
        return held


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Rig:
    monkeypatch.setattr(deployment, "UPSTREAM_REFRESH_SECONDS", 0)
    made = Rig(tmp_path)
    # The one Engine lookup operations.scale makes that the fake has not.
    made.engine.project_service = lambda project, service: next(  # type: ignore[attr-defined]
        (s for s in made.engine.project_services(project) if s.service == service), None)
    assert made.deploy().status == DeploymentStatus.LIVE
    return made


def platform_of(rig: Rig) -> SimpleNamespace:
    return SimpleNamespace(settings=rig.settings, store=rig.store, engine=rig.engine, deployer=rig.deployer,
                           repo_path=lambda project: rig.bare)


def replicas(rig: Rig) -> int:
    return rig.engine.services[WEB].spec.replicas


def enqueue(rig: Rig) -> Ticket:
    return rig.deployer.enqueue("shop", rig.sha, "main", "alice", "env")


def idle(rig: Rig) -> None:
    """Wait until the queue let the project go: its deployments ended, and the work after them."""
    deadline = time.monotonic() + 10
    while rig.deployer.busy_projects():
        assert time.monotonic() < deadline, "the project's queue never went idle"
        time.sleep(0.01)


def test_a_scale_during_a_deployment_is_applied_after_it_not_undone_by_it(rig: Rig):
    gate = Gate()
    rig.engine.apply = gate.wrap(rig.engine.apply)  # type: ignore[method-assign]
    running = enqueue(rig)  # #2 plans with 1 replica, then waits at the gate to apply it
    assert gate.reached.wait(10)
    assert operations.scale(platform_of(rig), "shop", "bob", {"web": 3}) is False  # later, not now
    assert operations.scale(platform_of(rig), "shop", "bob", {"web": 2}) is False
    assert rig.store.scale("shop") == {"web": 2} and replicas(rig) == 1
    gate.opened.set()
    assert (final := running.wait(10)) is not None and final.status == DeploymentStatus.LIVE
    idle(rig)
    assert replicas(rig) == 2  # the last count written: #2's spec, planned before it, did not win
    changes = [call for call in rig.engine.calls if call[1] == WEB and call[0] in ("apply", "scale")]
    assert changes == [("apply", WEB), ("apply", WEB), ("scale", WEB)]  # #1, #2, then both scales at once
    audit = [(e["user"], e["action"], e["detail"]) for e in rig.store.audit_log() if e["action"] == "scale"]
    assert audit == [("bob", "scale", "web=2"), ("bob", "scale", "web=3")]


def test_scales_waiting_for_a_deployment_go_before_the_next_one(rig: Rig):
    gate = Gate()
    rig.engine.apply = gate.wrap(rig.engine.apply)  # type: ignore[method-assign]
    running = enqueue(rig)
    assert gate.reached.wait(10)
    assert operations.scale(platform_of(rig), "shop", "bob", {"web": 3}) is False
    behind = enqueue(rig)  # #3 waits for #2, and for the scale asked for before it
    gate.opened.set()
    assert (final := running.wait(10)) is not None and final.status == DeploymentStatus.LIVE
    assert (after := behind.wait(10)) is not None and after.status == DeploymentStatus.LIVE
    idle(rig)
    changes = [call for call in rig.engine.calls if call[1] == WEB and call[0] in ("apply", "scale")]
    assert changes == [("apply", WEB), ("apply", WEB), ("scale", WEB), ("apply", WEB)]
    assert replicas(rig) == 3


def test_a_deployment_asked_for_during_a_scale_waits_for_it(rig: Rig):
    gate = Gate()
    rig.engine.scale = gate.wrap(rig.engine.scale)  # type: ignore[method-assign]
    answers: list[bool] = []
    scaling = threading.Thread(target=lambda: answers.append(
        operations.scale(platform_of(rig), "shop", "bob", {"web": 3})))
    scaling.start()
    assert gate.reached.wait(10)
    ticket = enqueue(rig)
    assert "queued: waiting for a scale of shop to finish" in Path(ticket.deployment.log_path).read_text()
    assert rig.status(2) == DeploymentStatus.QUEUED and rig.deployer.busy_projects() == []
    gate.opened.set()
    scaling.join(10)
    assert answers == [True]  # swarm had it before the call returned
    assert (final := ticket.wait(10)) is not None and final.status == DeploymentStatus.LIVE
    assert replicas(rig) == 3  # #2 planned after the scale, with its count


def test_a_scale_with_no_deployment_running_is_applied_at_once(rig: Rig):
    assert operations.scale(platform_of(rig), "shop", "bob", {"web": 4}) is True
    assert replicas(rig) == 4 and rig.store.scale("shop") == {"web": 4}
    assert operations.scale(platform_of(rig), "shop", "bob", {"web": 4}) is True  # nothing to change
    assert [c for c in rig.engine.calls if c[0] == "scale"] == [("scale", WEB)]


def test_a_service_publishing_a_host_port_is_not_scaled_past_one(rig: Rig):
    _with(rig, {"disco.toml": '[services.web]\npublish = ["7000:8000"]\n'})
    assert rig.deploy().status == DeploymentStatus.LIVE
    with pytest.raises(DeployFailed, match="publishes 7000/tcp on the host, so it runs one task"):
        operations.scale(platform_of(rig), "shop", "alice", {"web": 2})  # type: ignore[arg-type]
    assert rig.store.scale("shop") == {} and replicas(rig) == 1  # nothing recorded, nothing changed
