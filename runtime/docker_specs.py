"""What Disco asks Docker for, as plain data: swarm service specs, the `docker build` command
line and the health check. No client and no I/O here, so tests can read every choice
(start-first updates, dnsrr endpoints, the read-only probe) straight from the data; the Engine
in runtime/docker_engine.py sends it.
"""

from __future__ import annotations

import hashlib
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.appconfig import Limits, PublishedPort, memory_bytes
from runtime.registry import CONTAINER_DIR as REGISTRY_CONTAINER_DIR
from runtime.registry import CONTAINER_PORT as REGISTRY_CONTAINER_PORT
from runtime.registry import STORAGE_DIR as REGISTRY_STORAGE_DIR
from runtime.settings import Settings

# docker-py ships no type hints; these are plain dict builders, no client.
from docker.types import (  # type: ignore[import-untyped]
    ContainerSpec,
    EndpointSpec,
    Healthcheck,
    Mount,
    Placement,
    RestartPolicy,
    RollbackConfig,
    ServiceMode,
    TaskTemplate,
    UpdateConfig,
)

DOCKER_CLI = os.environ.get("DISCO_DOCKER_CLI", "/usr/bin/docker")
# A static busybox from the host, mounted into every task, runs the health check, so images
# without a shell or tools (FROM scratch) can be checked too.
PROBE_BINARY = os.environ.get("DISCO_PROBE_BINARY", "/bin/busybox")
PROBE_PATH = "/.disco/busybox"
HEALTH_RETRIES = 3  # failed checks in a row, once the start period is over, that make a task unhealthy
SECOND = 1_000_000_000  # docker API durations are in nanoseconds

# The keyword arguments of docker-py's `APIClient.create_service` / `update_service`
# (task_template, labels, mode, update_config, rollback_config, endpoint_spec).
ServiceKwargs = dict[str, Any]


@dataclass(frozen=True)
class TaskLimits:
    """What one container may use; swarm and Docker kill or throttle it beyond."""

    memory: str  # as people wrote it ("256M"), for messages
    memory_bytes: int
    cpus: float | None = None  # None: no CPU limit
    pids: int | None = None

    def as_resources(self) -> dict[str, Any]:
        """Swarm's TaskTemplate.Resources (Pids needs API 1.41, Docker 20.10)."""
        limits: dict[str, Any] = {"MemoryBytes": self.memory_bytes}
        if self.cpus is not None:
            limits["NanoCPUs"] = int(self.cpus * 1e9)
        if self.pids is not None:
            limits["Pids"] = self.pids
        return {"Limits": limits}

    def as_container_options(self) -> dict[str, Any]:
        """The same for docker-py's `containers.run` (one-off commands)."""
        options: dict[str, Any] = {"mem_limit": self.memory_bytes, "memswap_limit": self.memory_bytes}
        if self.cpus is not None:
            options["nano_cpus"] = int(self.cpus * 1e9)
        if self.pids is not None:
            options["pids_limit"] = self.pids
        return options


@dataclass(frozen=True)
class Attachment:
    """A network a task joins, and the extra DNS names (aliases) it answers to there."""

    network: str
    aliases: tuple[str, ...] = ()

    def as_swarm(self) -> dict[str, Any]:
        """TaskTemplate.Networks' entry."""
        return {"Target": self.network, **({"Aliases": list(self.aliases)} if self.aliases else {})}


def service_networks(instance_network: str, project_network: str, service: str, routed: bool,
                     internal_name: str | None) -> tuple[Attachment, ...]:
    """Where a project service can be reached, and by which names (Docker networks are
    symmetric: whoever shares one with a task reaches it, so privacy is not sharing one).

    Every service joins its project's network as its short name (`http://worker:8000`, as in
    docker compose). Only what other projects' containers or the proxy must reach also joins the
    instance network: the routed web service (the proxy asks for it by its swarm service name)
    and an internal service, there also as `internal_name` (`<project>-<service>`). Any other
    service is private to its project.
    """
    networks = [Attachment(project_network, (service,))]
    if routed or internal_name:
        networks.append(Attachment(instance_network, (internal_name,) if internal_name else ()))
    return tuple(networks)


@dataclass(frozen=True)
class ServiceSpec:
    """Everything that defines one project service; `swarm_service` turns it into a swarm spec."""

    name: str
    image: str
    networks: tuple[Attachment, ...]  # see service_networks
    labels: dict[str, str]
    env: dict[str, str]
    replicas: int
    args: list[str] | None = None
    port: int | None = None  # checked for health when set
    health_path: str | None = None
    health_timeout: int = 60
    health_interval: int = 1  # seconds between checks: the server's health_interval
    mounts: list[tuple[str, str]] = field(default_factory=list)  # (volume name, path)
    limits: TaskLimits | None = None
    health_command: list[str] | None = None  # run in the task instead of the probe (Docker's CMD form)
    publish: tuple[PublishedPort, ...] = ()  # host-mode ports: its updates stop the old task first
    # Where swarm may place its tasks (`node.id==...`): see on_node.
    constraints: tuple[str, ...] = ()

    @property
    def check(self) -> str:
        """What says a task is healthy, for the deploy's output and its failure reasons."""
        if self.health_command is not None:
            return f"health command `{shlex.join(self.health_command)}`"
        if self.port is None:
            return "no crash"
        return f"GET {self.health_path}" if self.health_path else "TCP connect"

    @property
    def cadence(self) -> str:
        """How often the check runs, for the deploy's output; nothing for a task without one."""
        checked = self.health_command is not None or self.port is not None
        return f", every {self.health_interval} s" if checked else ""

    @property
    def swarm_gives_up_after(self) -> int:
        """Seconds after a task starts by which swarm has failed it if it never became healthy:
        failures in the start period do not count, then HEALTH_RETRIES checks in a row must fail."""
        return self.health_timeout + HEALTH_RETRIES * self.health_interval

    @property
    def stops_first(self) -> bool:
        """Two tasks cannot bind one host port, so the old task must stop before the new starts."""
        return bool(self.publish)


def task_limits(wanted: Limits, settings: Settings) -> TaskLimits:
    """A service's limits from disco.toml, each missing one from the server's defaults."""
    memory = wanted.memory or settings.default_memory
    cpus = wanted.cpus if wanted.cpus is not None else (float(settings.default_cpus) if settings.default_cpus else None)
    return TaskLimits(memory=memory, memory_bytes=memory_bytes(memory), cpus=cpus,
                      pids=wanted.pids if wanted.pids is not None else settings.default_pids)


def on_node(node_id: str) -> tuple[str, ...]:
    """The placement constraint that keeps tasks on one node: the proxy and the registry on the
    daemon's (their files and the host ports DNS points at are there), and, while no registry
    carries images to other nodes, every project service too (see placement)."""
    return (f"node.id=={node_id}",) if node_id else ()


def instance_labels(instance: str, **extra: str) -> dict[str, str]:
    """The labels every Docker object of this instance carries (`disco.<key>` for each extra)."""
    return {"disco.instance": instance, **{f"disco.{k}": v for k, v in extra.items()}}


def health_command(port: int, path: str | None) -> list[str]:
    """The HEALTHCHECK, run by the mounted busybox against the task's own overlay address.

    Probing the overlay address rather than 127.0.0.1 catches apps that listen on localhost
    only, which the proxy could not reach. A failed check prints what it checked and what it
    got, then `; listening: ` and the addresses the container listens on, so the deploy can
    say "the app listens on 8080, not 8000" (runtime/docker_engine.py reads it back).
    """
    b = PROBE_PATH
    address = f'set -- $({b} hostname -i); H="$1"'
    listening = (f"L=$({b} netstat -ltn 2>/dev/null | {b} awk 'NR>2{{print $4}}' | {b} tr '\\n' ' '); "
                 f'echo "$R; listening: $L"; exit 1')
    if path is None:
        script = (f'{address}; {b} timeout 5 {b} nc "$H" {port} </dev/null 2>/dev/null && exit 0; '
                  f'R="TCP connect to port {port} failed"; {listening}')
    else:
        request = shlex.quote(f"GET {path} HTTP/1.0\r\nHost: localhost\r\nUser-Agent: disco-health\r\n\r\n")
        script = (
            f"{address}; S=$(printf %s {request} | {b} timeout 5 {b} nc \"$H\" {port} 2>/dev/null | {b} head -n 1 "
            f"| {b} tr -d '\\r'); "
            f"echo \"$S\" | {b} grep -qE '^HTTP/[0-9.]+ [23][0-9][0-9]' && exit 0; "
            f'R={shlex.quote(f"GET {path} on port {port} got ")}"${{S:-no answer}}"; {listening}'
        )
    return ["CMD", PROBE_PATH, "sh", "-c", script]


def published_ports(ports: tuple[PublishedPort, ...]) -> list[dict[str, Any]]:
    """EndpointSpec ports in host mode: the ingress routing mesh needs IPVS, which some kernels lack."""
    return [{"Protocol": p.protocol, "PublishedPort": p.published, "TargetPort": p.target, "PublishMode": "host"}
            for p in ports]


def swarm_service(spec: ServiceSpec) -> ServiceKwargs:
    """A project service: start-first updates that swarm rolls back when a task fails (stop-first
    for one that publishes host ports: two tasks cannot bind the same one)."""
    mounts = [Mount(target=path, source=volume, type="volume") for volume, path in spec.mounts]
    healthcheck = None
    test: list[str] | None = None
    if spec.health_command is not None:
        test = ["CMD", *spec.health_command]  # exec form: the image may have no shell
    elif spec.port is not None:
        mounts.append(Mount(target=PROBE_PATH, source=PROBE_BINARY, type="bind", read_only=True))
        test = health_command(spec.port, spec.health_path)
    if test is not None:
        healthcheck = Healthcheck(
            test=test,
            interval=spec.health_interval * SECOND,
            timeout=6 * SECOND,
            retries=HEALTH_RETRIES,
            # Failures before this do not count; the first pass makes the task healthy.
            start_period=spec.health_timeout * SECOND,
        )
    container = ContainerSpec(
        image=spec.image,
        args=spec.args,
        env=[f"{k}={v}" for k, v in spec.env.items()],
        labels=spec.labels,
        mounts=mounts,
        healthcheck=healthcheck,
        init=True,  # PID 1 that forwards SIGTERM: apps that ignore it still stop promptly
        stop_grace_period=10 * SECOND,
    )
    template = TaskTemplate(
        container_spec=container,
        restart_policy=RestartPolicy(condition="on-failure", delay=1 * SECOND),
        networks=[attachment.as_swarm() for attachment in spec.networks],
        resources=spec.limits.as_resources() if spec.limits else None,
        placement=Placement(constraints=list(spec.constraints)) if spec.constraints else None,
    )
    # Workers have no health check, so watch them longer for an early crash.
    monitor = (1 if healthcheck is not None else 5) * SECOND
    order = "stop-first" if spec.stops_first else "start-first"
    return {
        "task_template": template,
        "labels": spec.labels,
        "mode": ServiceMode("replicated", replicas=spec.replicas),
        # docker-py's defaults differ from the CLI's (parallelism 0, failure_action continue).
        "update_config": UpdateConfig(
            parallelism=1, delay=0, failure_action="rollback", monitor=monitor,
            max_failure_ratio=0, order=order,
        ),
        # A rollback is an update too: the failed task must free the port before the old one binds it.
        "rollback_config": RollbackConfig(
            parallelism=0, delay=0, failure_action="pause", monitor=1 * SECOND, order=order,
        ),
        # VIPs need IPVS, which some kernels lack; DNS round robin works everywhere.
        "endpoint_spec": EndpointSpec(mode="dnsrr", ports=published_ports(spec.publish) or None),
    }


def proxy_service(instance: str, network: str, image: str, run_dir: Path, http_port: int, https_port: int,
                  command: list[str], node_id: str) -> ServiceKwargs:
    """The Caddy service, on the node `node_id` (the daemon's). Its `disco.spec` label
    fingerprints its other settings: the Engine only restarts Caddy when it differs. The node
    is left out of it: a change of placement alone leaves a task whose node still meets it
    running (measured on Docker 20.10), so pinning a running Caddy costs no restart.

    Host-mode ports (no IPVS for the routing mesh) mean two Caddy tasks cannot run at once,
    so its updates are stop-first.
    """
    wanted = {"image": image, "run_dir": str(run_dir), "http": http_port, "https": https_port, "command": command}
    fingerprint = hashlib.sha256(repr(sorted(wanted.items())).encode()).hexdigest()[:16]
    labels = instance_labels(instance, role="proxy", spec=fingerprint)
    container = ContainerSpec(
        image=image,
        args=command,
        env=["XDG_CONFIG_HOME=/config", "XDG_DATA_HOME=/data"],
        mounts=[
            Mount(target="/run/disco", source=str(run_dir), type="bind"),
            Mount(target="/data", source=f"{instance}-caddy-data", type="volume"),
            Mount(target="/config", source=f"{instance}-caddy-config", type="volume"),
        ],
        labels=labels,
    )
    return {
        "task_template": TaskTemplate(
            container_spec=container,
            restart_policy=RestartPolicy(condition="any", delay=1 * SECOND),
            networks=[{"Target": network}],
            placement=Placement(constraints=list(on_node(node_id))) if node_id else None,
        ),
        "labels": labels,
        "mode": ServiceMode("replicated", replicas=1),
        "update_config": UpdateConfig(parallelism=1, order="stop-first", failure_action="pause"),
        "endpoint_spec": EndpointSpec(mode="dnsrr", ports=[
            {"Protocol": "tcp", "PublishedPort": http_port, "TargetPort": 80, "PublishMode": "host"},
            {"Protocol": "tcp", "PublishedPort": https_port, "TargetPort": 443, "PublishMode": "host"},
        ]),
    }


def overlay_network(labels: dict[str, str], encrypted: bool) -> dict[str, Any]:
    """docker-py's `networks.create` arguments of an overlay network of this instance: attachable
    (one-off containers join it too), and encrypted between nodes when the setting says so."""
    return {"driver": "overlay", "attachable": True, "labels": labels,
            "options": {"encrypted": ""} if encrypted else None}


def oneoff_container(image: str, command: list[str] | None, env: dict[str, str], labels: dict[str, str],
                     networks: list[str], mounts: list[tuple[str, str]], limits: TaskLimits) -> dict[str, Any]:
    """A container for one command (`disco run`, the release command, a scheduled run): the
    keyword arguments of docker-py's `containers.create`, with the service's volumes and limits
    and an init that forwards signals.

    It is created on the first of `networks` (its project's); Docker before API 1.44 takes one
    network at creation, so the engine connects it to the others before it starts. One-off
    commands join the project's network and the instance's, like the web service: they reach
    the project's services by their short names and other projects' internal services."""
    return {
        "image": image,
        "command": command,
        "environment": env,
        "labels": labels,
        "network": networks[0],
        "mounts": [Mount(target=path, source=volume, type="volume") for volume, path in mounts],
        "init": True,
        "stdin_open": False,
        "tty": False,
        **limits.as_container_options(),
    }


def build_command(context: Path, dockerfile: Path, tag: str, args: dict[str, str],
                  labels: dict[str, str]) -> list[str]:
    """The `docker build` argv; run with DOCKER_BUILDKIT=1 (docker-py only drives the legacy
    builder, where `RUN --mount` fails)."""
    command = [DOCKER_CLI, "build", "--progress=plain", "-t", tag, "-f", str(dockerfile)]
    for key, value in labels.items():
        command += ["--label", f"{key}={value}"]
    for key, value in args.items():
        command += ["--build-arg", f"{key}={value}"]
    command.append(str(context))
    return command


def registry_service(instance: str, image: str, config_dir: Path, port: int, node_id: str,
                     files: str = "") -> ServiceKwargs:
    """The daemon's own image registry (runtime/registry.py): on the daemon's node, where its
    config and key pair are (`config_dir`, mounted read-only) and its volume holds the images,
    serving HTTPS on the host's `port` (host mode: every node pulls from the manager's address).
    Its `disco.spec` label fingerprints the settings and `files` (a digest of its certificate
    and htpasswd: it reads them at start), as the proxy's does."""
    wanted = {"image": image, "config_dir": str(config_dir), "port": port, "files": files}
    fingerprint = hashlib.sha256(repr(sorted(wanted.items())).encode()).hexdigest()[:16]
    labels = instance_labels(instance, role="registry", spec=fingerprint)
    container = ContainerSpec(
        image=image,
        args=["docker-registry", "serve", f"{REGISTRY_CONTAINER_DIR}/config.yml"],
        mounts=[
            Mount(target=REGISTRY_CONTAINER_DIR, source=str(config_dir), type="bind", read_only=True),
            Mount(target=REGISTRY_STORAGE_DIR, source=f"{instance}-registry-data", type="volume"),
        ],
        labels=labels,
    )
    return {
        "task_template": TaskTemplate(
            container_spec=container,
            restart_policy=RestartPolicy(condition="any", delay=1 * SECOND),
            placement=Placement(constraints=list(on_node(node_id))) if node_id else None,
        ),
        "labels": labels,
        "mode": ServiceMode("replicated", replicas=1),
        "update_config": UpdateConfig(parallelism=1, order="stop-first", failure_action="pause"),
        "endpoint_spec": EndpointSpec(mode="dnsrr", ports=[
            {"Protocol": "tcp", "PublishedPort": port, "TargetPort": REGISTRY_CONTAINER_PORT, "PublishMode": "host"},
        ]),
    }


def prune_job(instance: str, image: str, node_id: str, socket: str) -> ServiceKwargs:
    """A job that runs once on every node but the daemon's (which prunes its own), removing this
    instance's stopped task containers and then the images no container uses any more: swarm
    keeps old tasks' containers (and so their images) on each node, and nothing else prunes
    there. The node's own Docker socket (`socket`) is mounted; the static busybox of the health checks
    (on every node, see setup.sh join) runs the two commands. Images the live tasks run stay,
    and the kept ones for a rollback are pulled again from the registry if one is needed."""
    labels = instance_labels(instance, role="prune")
    selector = f"label=disco.instance={instance}"
    script = (f"docker container prune --force --filter {selector} && "
              f"docker image prune --all --force --filter {selector}")
    container = ContainerSpec(
        image=image,
        command=[PROBE_PATH, "sh", "-c", script],
        mounts=[Mount(target="/var/run/docker.sock", source=socket, type="bind"),
                Mount(target=PROBE_PATH, source=PROBE_BINARY, type="bind", read_only=True)],
        labels=labels,
    )
    return {
        "task_template": TaskTemplate(
            container_spec=container,
            restart_policy=RestartPolicy(condition="none"),
            placement=Placement(constraints=[f"node.id!={node_id}"]) if node_id else None,
        ),
        "labels": labels,
        "mode": ServiceMode("global-job"),
    }


def volume_label(volume: str) -> str:
    """The node label that says a volume's data lives on that node (set by the daemon)."""
    return f"disco.volume.{volume}"


def placement(node_id: str, registry: bool, volumes: list[str], publishes: bool = False) -> tuple[str, ...]:
    """Where a project service's tasks may run. Without a registry its image is only on the
    daemon's node, so there; with one, anywhere, except that a service publishing host ports
    stays on the daemon's node too (the address people and DNS know), and a service with
    volumes on the node its volumes' data lives on (each volume's label, see volume_label)."""
    if not registry or publishes:
        return on_node(node_id)
    return tuple(f"node.labels.{volume_label(volume)}==true" for volume in volumes)
