"""Swarm nodes as plain data: what Docker's node, task and swarm JSON say, read into small
records, and the node specs Disco sends back. No client and no I/O here (the Engine in
runtime/docker_engine.py asks and sends), so every reading and every change is tested as data.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

SWARM_PORT = 2377  # where a manager listens for nodes joining, unless initialised otherwise
# A task in one of these states holds (or is about to hold) a container on its node.
ACTIVE_TASK_STATES = frozenset({"new", "pending", "assigned", "accepted", "preparing", "ready", "starting",
                                "running"})


@dataclass(frozen=True)
class TaskPlacement:
    """A task of one of this instance's swarm services, and where swarm put it."""

    service: str  # the swarm service's name
    node_id: str  # "" while swarm has not placed it
    desired: str  # what swarm wants of it: "running", "shutdown", ...
    state: str  # what its node last said it is: "running", "shutdown", "failed", ...


@dataclass(frozen=True)
class SwarmNode:
    """A node of the swarm, as the manager sees it."""

    id: str
    name: str  # its hostname (node names are not unique in swarm: two machines may share one)
    address: str  # the address it advertises to the other nodes
    role: str  # "manager" or "worker"
    availability: str  # "active", "pause" or "drain"
    state: str  # "ready", "down", "unknown" or "disconnected"
    labels: dict[str, str]
    manager: str  # a manager's reachability ("reachable", "unreachable", ...); "" for a worker
    leader: bool  # the manager that leads the Raft quorum
    tasks: int  # running tasks of this instance's services on it
    here: bool  # the node of the engine this daemon talks to (where it builds and runs its proxy)
    engine: str = ""  # its Docker version

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "address": self.address, "role": self.role,
                "availability": self.availability, "state": self.state, "labels": dict(self.labels),
                "manager": self.manager or None, "leader": self.leader, "tasks": self.tasks, "here": self.here,
                "engine": self.engine}


@dataclass(frozen=True)
class JoinTarget:
    """Where a new node joins the swarm: the manager's address as the swarm tells nodes it."""

    host: str
    port: int

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or "localhost": no other machine reaches this node there."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def task_placement(task: dict[str, Any], service_names: dict[str, str] | None = None) -> TaskPlacement:
    """One task of GET /tasks. A task names its service by ID only: `service_names` (ID -> name,
    from GET /services) gives its name."""
    service_id = str(task.get("ServiceID") or "")
    return TaskPlacement(service=(service_names or {}).get(service_id, service_id),
                         node_id=str(task.get("NodeID") or ""), desired=str(task.get("DesiredState") or ""),
                         state=str((task.get("Status") or {}).get("State") or ""))


def running_per_node(tasks: list[TaskPlacement]) -> dict[str, int]:
    """Node id -> how many of these tasks run there (as their node last said)."""
    counts: dict[str, int] = {}
    for task in tasks:
        if task.node_id and task.state == "running":
            counts[task.node_id] = counts.get(task.node_id, 0) + 1
    return counts


def swarm_node(node: dict[str, Any], tasks: int, here_id: str) -> SwarmNode:
    """One node of GET /nodes.

    A manager's Status.Addr may read 0.0.0.0 (Docker before 20.10 never filled it in for
    managers): then the address in its ManagerStatus, the one nodes reach it by, is shown."""
    spec = node.get("Spec") or {}
    status = node.get("Status") or {}
    manager = node.get("ManagerStatus") or {}
    address = str(status.get("Addr") or "")
    if address in ("", "0.0.0.0") and manager.get("Addr"):
        address = str(manager["Addr"]).rsplit(":", 1)[0].strip("[]")
    description = node.get("Description") or {}
    return SwarmNode(
        id=str(node.get("ID") or ""),
        name=str(description.get("Hostname") or spec.get("Name") or node.get("ID") or ""),
        address=address,
        role=str(spec.get("Role") or ""),
        availability=str(spec.get("Availability") or ""),
        state=str(status.get("State") or ""),
        labels={str(k): str(v) for k, v in (spec.get("Labels") or {}).items()},
        manager=str(manager.get("Reachability") or ""),
        leader=bool(manager.get("Leader")),
        tasks=tasks,
        here=node.get("ID") == here_id,
        engine=str((description.get("Engine") or {}).get("EngineVersion") or ""),
    )


def swarm_nodes(nodes: list[dict[str, Any]], tasks: list[TaskPlacement], here_id: str) -> list[SwarmNode]:
    """Every node, this daemon's first, then by name."""
    counts = running_per_node(tasks)
    found = [swarm_node(node, counts.get(str(node.get("ID")), 0), here_id) for node in nodes]
    return sorted(found, key=lambda n: (not n.here, n.name, n.id))


def join_target(swarm_info: dict[str, Any]) -> JoinTarget:
    """Where nodes join, from GET /info's Swarm section of a manager: its own entry among the
    RemoteManagers, the address swarm hands every node (NodeAddr is only what it advertises
    for node-to-node traffic, and may differ: a swarm initialised on 127.0.0.1 and then given
    another --advertise-addr by `swarm init --force-new-cluster` keeps 127.0.0.1 there)."""
    here = swarm_info.get("NodeID")
    for manager in swarm_info.get("RemoteManagers") or []:
        if manager.get("NodeID") == here and manager.get("Addr"):
            host, _, port = str(manager["Addr"]).rpartition(":")
            if port.isdigit():
                return JoinTarget(host.strip("[]"), int(port))
    return JoinTarget(str(swarm_info.get("NodeAddr") or ""), SWARM_PORT)


def node_spec(current: dict[str, Any], *, labels: dict[str, str] | None = None,
              availability: str | None = None) -> dict[str, Any]:
    """The node's spec for POST /nodes/{id}/update: its current one with these changes (an
    update replaces the whole spec, so whatever is not changed is sent back as it was)."""
    spec = {key: value for key, value in current.items()}
    if labels is not None:
        spec["Labels"] = dict(labels)
    if availability is not None:
        spec["Availability"] = availability
    return spec


def relabelled(current: dict[str, str], set_labels: dict[str, str], remove: list[str]) -> dict[str, str]:
    """A node's labels with `set_labels` set and `remove` removed (a key both set and removed is set)."""
    return {**{k: v for k, v in current.items() if k not in remove}, **set_labels}


def left_on(node: SwarmNode, tasks: list[TaskPlacement]) -> list[TaskPlacement]:
    """The tasks still on a node being drained: those swarm still wants there, and, while the
    node answers, those it has not stopped yet. A node that is down cannot say it stopped
    anything (its tasks keep their last state), so there only what swarm still wants counts."""
    left = []
    for task in tasks:
        if task.node_id != node.id:
            continue
        if task.desired == "running" or (node.state == "ready" and task.state in ACTIVE_TASK_STATES):
            left.append(task)
    return left


def short_of_replicas(wanted: dict[str, int], tasks: list[TaskPlacement], away_from: str) -> dict[str, int]:
    """Service -> how many of its `wanted` running tasks are missing on the nodes other than
    `away_from` (only the services named in `wanted`; none listed once each has all of them)."""
    running: dict[str, int] = {}
    for task in tasks:
        if task.node_id != away_from and task.desired == "running" and task.state == "running":
            running[task.service] = running.get(task.service, 0) + 1
    return {service: count - running.get(service, 0) for service, count in wanted.items()
            if running.get(service, 0) < count}


@dataclass(frozen=True)
class ServicePlacement:
    """Where one service of a project runs, and what it is kept to."""

    service: str  # its name in the app (disco.toml's), not swarm's
    running: dict[str, int]  # node name -> its running tasks there
    kept_to: list[str]  # the nodes holding its volumes' data ([] when it may run anywhere it is allowed)
    waiting: str  # why it cannot run now, if that is so ("" otherwise)

    def as_json(self) -> dict[str, Any]:
        return {"service": self.service, "running": dict(self.running), "kept_to": list(self.kept_to),
                "waiting": self.waiting or None}


VOLUME_LABEL_PREFIX = "disco.volume."  # runtime/docker_specs.volume_label
VOLUME_CONSTRAINT_PREFIX = "node.labels."
VOLUME_CONSTRAINT_SUFFIX = "==true"


def service_placements(services: list[dict[str, Any]], tasks: list[TaskPlacement],
                       nodes: list[SwarmNode]) -> list[ServicePlacement]:
    """Each service of GET /services (one project's): its running tasks per node, the nodes its
    volume constraints (runtime/docker_specs.placement) keep it to, and, when such a node is
    not ready or not active, that it waits for it."""
    by_id = {node.id: node for node in nodes}
    placements = []
    for service in services:
        spec = service.get("Spec") or {}
        name = str(spec.get("Name") or "")
        running: dict[str, int] = {}
        for task in tasks:
            if task.service == name and task.state == "running" and task.desired == "running":
                node_name = by_id[task.node_id].name if task.node_id in by_id else task.node_id
                running[node_name] = running.get(node_name, 0) + 1
        labels = [constraint[len(VOLUME_CONSTRAINT_PREFIX):-len(VOLUME_CONSTRAINT_SUFFIX)]
                  for constraint in ((spec.get("TaskTemplate") or {}).get("Placement") or {}).get("Constraints") or []
                  if constraint.startswith(VOLUME_CONSTRAINT_PREFIX + VOLUME_LABEL_PREFIX)
                  and constraint.endswith(VOLUME_CONSTRAINT_SUFFIX)]
        holders = [node for node in nodes if any(node.labels.get(label) == "true" for label in labels)]
        unable = [node for node in holders if node.state != "ready" or node.availability != "active"]
        waiting = ""
        if labels and not holders:
            waiting = "no node holds its volumes' data any more"
        elif unable:
            waiting = ", ".join(f"{node.name}, which holds its volume data, is {_unable(node)}" for node in unable)
        placements.append(ServicePlacement(
            service=str((spec.get("Labels") or {}).get("disco.service") or name), running=dict(sorted(running.items())),
            kept_to=sorted(node.name for node in holders), waiting=waiting))
    return sorted(placements, key=lambda p: p.service)


def _unable(node: SwarmNode) -> str:
    """Why a node runs no new task: its state, or that it is drained or paused."""
    if node.state != "ready":
        return node.state
    return {"drain": "drained", "pause": "paused"}.get(node.availability, node.availability)
