"""Docker: image builds, swarm services, the overlay network, volumes and image pruning.

Builds go through Debian's docker CLI with BuildKit (docker-py only drives the legacy builder,
where `RUN --mount` fails); everything else goes through docker-py, which blocks, so callers
run it in worker threads.

Zero downtime comes from swarm itself: each project service is ONE swarm service that is
updated start-first, and a task only counts as started once its HEALTHCHECK passes. Swarm's
DNS lists only healthy tasks, so the proxy never sees a version that does not answer, and a
version that never becomes healthy is rolled back by swarm, old tasks untouched.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import inspect
import os
import re
import secrets
import signal
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

# docker-py ships no type hints (types-docker is not a dependency): its objects are Any here,
# and never leave this module.
import docker  # type: ignore[import-untyped]
import docker.errors  # type: ignore[import-untyped]
import requests  # docker-py's transport: its connection errors are not DockerExceptions

from runtime import names, swarm_dns
from runtime.docker_specs import (
    PROBE_BINARY,
    PROBE_PATH,
    ServiceSpec,
    TaskLimits,
    build_command,
    health_command,
    ServiceKwargs,
    instance_labels,
    oneoff_container,
    overlay_network,
    proxy_service,
    prune_job,
    registry_service,
    swarm_service,
)
from runtime.dockerfile import ImageOwner
from runtime.registry import CONTAINER_DIR as REGISTRY_CONTAINER_DIR
from runtime.registry import RegistryAccess
from runtime.swarm_nodes import (
    JoinTarget,
    ServicePlacement,
    SwarmNode,
    TaskPlacement,
    join_target,
    node_spec,
    relabelled,
    service_placements,
    swarm_nodes,
    task_placement,
)

# Imported from here by bench/ and older callers.
__all__ = ["PROBE_BINARY", "PROBE_PATH", "DockerError", "DockerInfo", "Engine", "HostPort", "OneOffRun", "RunResult",
           "ServiceSpec", "ServiceState", "ServiceUsage", "health_command"]

OutputLine = Callable[[str], None]
T = TypeVar("T")
TAIL_LINES = 30  # of a failing task's own output, shown with the reason it failed
# Between looks at a rollout (a service inspect and a task list): a deploy's wait for it ends
# this late at most, so short.
ROLLOUT_POLL_SECONDS = 0.1
# Between looks at swarm's DNS while an update's old tasks leave it, and how long one look
# may take before it is asked again (Docker's DNS answers in about a millisecond).
SWARM_DNS_POLL_SECONDS = 0.02
SWARM_DNS_ANSWER_SECONDS = 1
ROLLBACK_WAIT_SECONDS = 60  # an update waits this long at most for swarm to end a rollback first
STOP_GRACE = 5  # seconds a one-off command has to end after SIGTERM before SIGKILL
LONGEST_LINE = 64 << 10  # output without a newline is passed on in pieces of this size
# A project's usage: this many stats requests at once (docker-py's connection pool holds 10).
STATS_AT_ONCE = 8
# A container's CPU counters from an earlier look serve as the start of the next one's CPU %
# for this long; after it, the next look takes a second sample instead (see project_usage).
CPU_SAMPLE_KEPT = 30.0


class DockerError(Exception):
    """A Docker step failed; the message says which and why, for the deploy record."""


class DockerUnreachable(DockerError):
    """dockerd does not answer on its socket (stopped, restarting): said at once, never a hang."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"Docker is not reachable ({detail})")


@dataclass(frozen=True)
class DockerInfo:
    version: str  # the engine's version
    swarm: str  # this node's swarm state: "active", "inactive", ...
    root_dir: str = ""  # Docker's data root (DockerRootDir): images, containers, volumes


@dataclass(frozen=True)
class ServiceState:
    """A swarm service of a project, as its current spec and last update say."""

    name: str  # the swarm service's name
    service: str  # the project service it runs (its disco.service label)
    deployment: str  # the deployment number of its current spec ("" if unlabelled)
    replicas: int
    update_state: str  # of its last update: "completed" (or none ran), "rollback_completed", "paused", ...
    has_previous: bool  # swarm kept the spec before the last update, so it can be put back

    @classmethod
    def of(cls, service: Any) -> ServiceState:
        spec = service.attrs["Spec"]
        labels = spec.get("Labels") or {}
        return cls(
            name=service.name,
            service=labels.get("disco.service", service.name),
            deployment=labels.get("disco.deployment", ""),
            replicas=int(((spec.get("Mode") or {}).get("Replicated") or {}).get("Replicas", 0)),
            update_state=(service.attrs.get("UpdateStatus") or {}).get("State", "completed"),
            has_previous="PreviousSpec" in service.attrs,
        )


@dataclass(frozen=True)
class ServiceHealth:
    """How many tasks of a project's service run, against how many swarm wants."""

    project: str
    service: str  # the project service (its disco.service label)
    running: int
    desired: int


def service_health_of(attrs: dict) -> ServiceHealth:
    """From a service's JSON as listed with status=true (Docker's ServiceStatus)."""
    labels = attrs["Spec"].get("Labels") or {}
    status = attrs.get("ServiceStatus") or {}
    return ServiceHealth(labels.get("disco.project", ""), labels.get("disco.service", attrs["Spec"].get("Name", "")),
                         int(status.get("RunningTasks", 0)), int(status.get("DesiredTasks", 0)))


@dataclass(frozen=True)
class HostPort:
    """A port some swarm service publishes on the host, and whose service it is."""

    port: int
    protocol: str  # "tcp" or "udp"
    service: str  # the swarm service's name
    instance: str  # its disco.instance label; "" for a service Disco did not make
    project: str  # its disco.project label; "" for a proxy or a service Disco did not make


@dataclass(frozen=True)
class RunResult:
    """How a container run to its end (Engine.run_to_end) ended."""

    exit_code: int | None  # None: it was stopped before it ended
    timed_out: bool = False
    cancelled: bool = False
    out_of_memory: bool = False


@dataclass(frozen=True)
class CpuCounters:
    """A container's cumulative CPU time and the host's, from one stats sample (nanoseconds)."""

    container: int  # cpu_stats.cpu_usage.total_usage: its CPU time since it started
    system: int  # cpu_stats.system_cpu_usage: the host's CPU time, all CPUs
    cpus: int  # online_cpus: a container using all of them is at cpus * 100 %


@dataclass(frozen=True)
class ContainerSample:
    """What one stats sample of a running container says (Docker's stats JSON, read by `stats_sample`)."""

    cpu: CpuCounters
    memory_used: int  # bytes, without the page cache the kernel can drop (as `docker stats` counts it)
    memory_limit: int  # bytes: its limit, or the host's memory when it has none


@dataclass(frozen=True)
class ServiceUsage:
    """What a project's service uses now, summed over its running containers on this node."""

    service: str  # the project service (its disco.service label)
    containers: int  # its running containers here
    cpu_percent: float | None  # 100 = one CPU fully busy; None: not measured (no container sampled twice)
    cpu_seconds: float  # the CPU % is averaged over this long (0 if not measured)
    cpus: int  # this node's CPUs: the CPU % goes up to cpus * 100
    memory_used: int  # bytes
    memory_limit: int  # bytes: the sum of its containers' limits, at most the host's memory (0: none run)


def _saying_docker_errors_our_way(cls: type[T]) -> type[T]:
    """Every public method of the class (the engine, a one-off run) raises DockerError
    (DockerUnreachable when dockerd is gone, hangs, or its swarm is not ready yet), never
    docker-py's or the transport's own exceptions, which nothing above runtime/ knows."""
    for name, method in list(vars(cls).items()):
        if name.startswith("_") or not inspect.isfunction(method) or inspect.isgeneratorfunction(method) \
                or inspect.isasyncgenfunction(method) or inspect.iscoroutinefunction(method):
            continue
        setattr(cls, name, _docker_errors_as_ours(method))
    return cls


def _docker_errors_as_ours(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def calling(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except docker.errors.APIError as err:  # first: an APIError is a requests HTTPError too
            if err.status_code == 503:  # "This node is not a swarm manager": a dockerd still starting
                raise DockerUnreachable(f"its swarm is not ready: {err.explanation or err}") from None
            raise DockerError(f"Docker refused: {err.explanation or err}") from None
        except requests.RequestException as err:  # refused, reset, or timed out (a hung dockerd)
            if isinstance(self, Engine):
                self._client = None  # its pooled connections died with dockerd: connect afresh next time
            raise DockerUnreachable(_connection_problem(err)) from None
        except docker.errors.DockerException as err:
            raise DockerError(f"Docker failed: {err}") from None
    return calling


def _connection_problem(err: Exception) -> str:
    """What the transport said, short: its messages nest the socket's error several deep."""
    text = str(err)
    for known in ("No such file or directory", "Connection refused", "Connection aborted", "Read timed out"):
        if known in text:
            return f"{known.lower()} on its socket"
    return text.splitlines()[0][:200] if text else type(err).__name__


@_saying_docker_errors_our_way
class OneOffRun:
    """A one-off command's container: read its output, then its exit code, then remove it.

    Its output, like a service's logs, is read from Docker's API asynchronously (`stream_lines`):
    a reader holds no thread while it waits, and closing the iterator (a client that went away)
    closes Docker's stream at once.
    """

    def __init__(self, container: Any) -> None:  # a docker-py Container
        self._container = container
        self._removed = False

    def output(self) -> AsyncIterator[str]:
        """Its output lines as they come, until the command ends."""
        return self.stream_lines(f"/containers/{self._container.id}/logs",
                                 {"stdout": "1", "stderr": "1", "follow": "1"})

    @staticmethod
    async def stream_lines(path: str, params: dict[str, str], multiplexed: bool = True) -> AsyncIterator[str]:
        """Docker's log stream at `path` as lines, read without a thread (Engine.service_logs too).

        A stream without a TTY is multiplexed: frames of an 8-byte header (stream, 0, 0, 0,
        big-endian length) and that many bytes.
        """
        import httpx  # here, not at the top: the rest of this module talks to Docker through docker-py

        host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        if host.startswith("unix://"):
            transport, base = httpx.AsyncHTTPTransport(uds=host.removeprefix("unix://")), "http://docker"
        elif host.startswith("tcp://"):
            transport, base = httpx.AsyncHTTPTransport(), "http://" + host.removeprefix("tcp://")
        else:
            raise DockerError(f"cannot stream logs from DOCKER_HOST={host}")
        # No read timeout: a follower waits for the next line as long as its client stays.
        timeout = httpx.Timeout(30, read=None)
        try:
            async with httpx.AsyncClient(transport=transport, base_url=base, timeout=timeout) as client, \
                    client.stream("GET", path, params=params) as response:
                if response.status_code != 200:
                    detail = (await response.aread()).decode(errors="replace")[:300]
                    raise DockerError(f"Docker refused {path}: {response.status_code} {detail}")
                frames, pending = b"", b""
                async for chunk in response.aiter_raw():
                    if multiplexed:
                        frames += chunk
                        while len(frames) >= 8:
                            size = int.from_bytes(frames[4:8], "big")
                            if len(frames) < 8 + size:
                                break
                            pending += frames[8:8 + size]
                            frames = frames[8 + size:]
                    else:
                        pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        yield line.decode(errors="replace")
                if pending:
                    yield pending.decode(errors="replace")
        except httpx.HTTPError as err:
            raise DockerError(f"the log stream from Docker broke: {err}") from None

    def exit_code(self) -> int:
        return int(self._container.wait().get("StatusCode", -1))

    def remove(self) -> None:
        """Remove the container (force); a second call does nothing."""
        if self._removed:
            return
        try:
            self._container.remove(force=True)
        except docker.errors.NotFound:
            pass
        self._removed = True


@_saying_docker_errors_our_way
class Engine:
    def __init__(self, instance: str, encrypted_networks: bool = False) -> None:
        self.instance = instance
        self.encrypted_networks = encrypted_networks  # the overlay networks it makes (runtime/ipsec.py)
        self._client: docker.DockerClient | None = None
        # Container id -> its CPU counters at the last look and when (time.monotonic()): see project_usage.
        self._cpu_seen: dict[str, tuple[CpuCounters, float]] = {}
        self._cpu_seen_lock = threading.Lock()

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            try:
                self._client = docker.from_env(timeout=120)
                self._client.ping()
            except (docker.errors.DockerException, requests.RequestException) as err:
                self._client = None
                raise DockerUnreachable(_connection_problem(err)) from None
        return self._client

    def reachable(self) -> bool:
        """Whether dockerd answers now as a manager whose swarm takes calls; asked on a
        short-lived connection of its own, so a dockerd that went away and came back is seen as it is.

        Swarm's inspect answers only then: on an active manager that reaches the swarm's raft
        store. Right after a start swarm refuses calls for a while, and so does this; so it does
        for a manager whose swarm lost its leader (quorum), where no deploy could run either.
        Asked in the API version the engine's client agreed on, it costs about 1.5 ms; `docker
        info` and the version lookup (dockerd runs runc and asks containerd for theirs) cost
        20 ms, which the watch (hooks/dockerwatch.py) paid every 2 s and every deploy-branch push.
        """
        client = self._client  # once: a failing call elsewhere may drop it meanwhile
        version = client.api.api_version if client is not None else "auto"
        try:
            probe = docker.APIClient(version=version, timeout=5, **docker.utils.kwargs_from_env())
        except (docker.errors.DockerException, requests.RequestException):
            return False
        try:
            probe.inspect_swarm()
            return True
        except (docker.errors.DockerException, requests.RequestException):
            return False
        finally:
            probe.close()

    def info(self) -> DockerInfo:
        try:
            info = self.client.info()
        except docker.errors.DockerException as err:
            raise DockerError(f"cannot reach the Docker engine: {err}") from None
        return DockerInfo(version=info.get("ServerVersion", ""),
                          swarm=(info.get("Swarm") or {}).get("LocalNodeState", ""),
                          root_dir=info.get("DockerRootDir", ""))

    # -- names -----------------------------------------------------------------------------

    @property
    def network_name(self) -> str:
        return f"{self.instance}-net"

    def project_network_name(self, project: str) -> str:
        """The overlay network of one project's services (and one-off commands): theirs alone."""
        return names.join(self.instance, project, "net")

    def internal_name(self, project: str, service: str) -> str:
        """The stable name other projects reach an internal service by, on the instance network:
        `<project>-<service>` (a '-' inside a part doubled, see runtime/names.py)."""
        return names.dns_label(names.join(project, service))

    def service_name(self, project: str, service: str) -> str:
        """The swarm service (also its DNS name) of a project's service; see runtime/names.py."""
        return names.dns_label(names.join(self.instance, project, service))

    def legacy_service_name(self, project: str, service: str) -> str:
        """What versions before runtime/names.py called it: deployments made then still run
        under this name until a deploy replaces them."""
        name = names.legacy(self.instance, project, service)
        if len(name) <= 63:
            return name
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        return f"{name[:54]}-{digest}"

    def image_tag(self, project: str, number: int) -> str:
        """A new tag for deployment `number`'s image: `<instance>-<project>:<number>-<random>`
        (its repository joined as runtime/names.py joins names).

        The random part keeps other projects from guessing it (a Dockerfile naming it is refused
        anyway, see runtime/dockerfile.py). Each call makes another: the deployment record's
        `image` holds the one used, and nothing derives it again from (project, number).
        """
        return f"{names.join(self.instance, project)}:{number}-{secrets.token_hex(6)}"

    def volume_name(self, project: str, volume: str) -> str:
        """A project's named volume. One made under the old name (before runtime/names.py) by
        this project keeps being used: volumes hold data, so they are never renamed."""
        name = names.join(self.instance, project, volume)
        old = names.legacy(self.instance, project, volume)
        if old != name and self._volume_owner(old) == project:
            return old
        return name

    def _volume_owner(self, name: str) -> str | None:
        try:
            volume = self.client.volumes.get(name)
        except docker.errors.NotFound:
            return None
        return str((volume.attrs.get("Labels") or {}).get("disco.project", "")) or None

    def labels(self, **extra: str) -> dict[str, str]:
        return instance_labels(self.instance, **extra)

    # -- network ---------------------------------------------------------------------------

    def ensure_network(self) -> None:
        if not self.client.networks.list(names=[self.network_name]):
            self.client.networks.create(self.network_name, **overlay_network(self.labels(), self.encrypted_networks))

    def ensure_project_network(self, project: str) -> str:
        """Make the project's own network if it is missing (idempotent); returns its name.

        Created unless the swarm says it has one of that name (409): listing or inspecting
        could answer with this node's copy of a network the swarm removed a moment ago."""
        name = self.project_network_name(project)
        try:
            self.client.networks.create(name, check_duplicate=True,
                                        **overlay_network(self.labels(project=project), self.encrypted_networks))
        except docker.errors.APIError as err:
            if err.status_code != 409:  # 409: it exists (made by an earlier deploy, or just now beside it)
                raise DockerError(f"could not make the network {name}: {err.explanation or err}") from None
        return name

    def remove_project_network(self, project: str) -> str | None:
        """Remove the project's network (once its services and containers are gone); its name,
        or None if it had none."""
        name = self.project_network_name(project)
        found = [network for network in self.client.networks.list(names=[name]) if network.name == name]
        for network in found:
            # The swarm removes a network its services no longer name at once, but this node keeps
            # its copy while a task container is still on it: a new network of that name could not
            # be made until then. So wait for the removed services' containers to stop first.
            deadline = time.monotonic() + 60
            with _ignoring_docker_errors():
                network.reload()
                while network.attrs.get("Containers") and time.monotonic() < deadline:
                    time.sleep(0.5)
                    network.reload()
            try:
                _retry_while_in_use(network.remove, timeout=60)
            except docker.errors.APIError as err:
                raise DockerError(f"could not remove the network {name}: {err.explanation or err}") from None
        return name if found else None

    # -- images ----------------------------------------------------------------------------

    def build(
        self, context: Path, dockerfile: Path, tag: str, args: dict[str, str],
        labels: dict[str, str], on_line: OutputLine, stop: Callable[[], bool] = lambda: False,
    ) -> None:
        """Build with BuildKit, streaming every output line; raise DockerError on failure.

        `stop` is polled while the build runs; when it turns true the build is killed.
        """
        command = build_command(context, dockerfile, tag, args, labels)
        tail: list[str] = []
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "DOCKER_BUILDKIT": "1"},
            preexec_fn=_die_with_parent,
        )
        assert process.stdout is not None
        watcher = threading.Thread(target=_kill_when, args=(process, stop), daemon=True)
        watcher.start()
        for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            on_line(line)
            tail = (tail + [line])[-5:]
        if process.wait() != 0:
            if stop():
                raise DockerError("build stopped: the deployment was cancelled")
            error = next((l for l in reversed(tail) if "ERROR" in l or "error" in l), tail[-1] if tail else "")
            raise DockerError(f"build failed: {error.strip()}")

    def exposed_ports(self, tag: str) -> list[int]:
        config = self.client.images.get(tag).attrs.get("Config") or {}
        ports = config.get("ExposedPorts") or {}
        return sorted(int(p.split("/")[0]) for p in ports if p.endswith("/tcp"))

    def image_shell(self, tag: str) -> list[str]:
        """The shell that runs a shell-form command in this image (its SHELL, else /bin/sh -c)."""
        try:
            config = self.client.images.get(tag).attrs.get("Config") or {}
        except docker.errors.DockerException as err:
            raise DockerError(f"could not read the image {tag}: {err}") from None
        return list(config.get("Shell") or ["/bin/sh", "-c"])

    def retag(self, source: str, target: str) -> None:
        repository, _, tag = target.rpartition(":")
        try:
            self.client.images.get(source).tag(repository, tag)
        except docker.errors.ImageNotFound:
            raise DockerError(f"image {source} is no longer kept") from None

    def image_owner(self, name: str) -> ImageOwner | None:
        """Who built the local image of that name, id or digest (its Disco labels), or None if
        there is no such local image. Never pulls."""
        if not name or name.startswith("-"):
            return None
        try:
            image = self.client.images.get(name)
        except (docker.errors.ImageNotFound, docker.errors.NullResource):
            return None
        except docker.errors.APIError as err:
            if err.status_code in (400, 404):  # not a valid name: the build fails on it anyway
                return None
            raise DockerError(f"could not look up the image {name}: {err.explanation or err}") from None
        labels = (image.attrs.get("Config") or {}).get("Labels") or {}
        return ImageOwner(instance=labels.get("disco.instance", ""), project=labels.get("disco.project", ""),
                          role=labels.get("disco.role", ""))

    def image_exists(self, tag: str) -> bool:
        try:
            self.client.images.get(tag)
            return True
        except docker.errors.ImageNotFound:
            return False

    def remove_image(self, tag: str) -> bool:
        """Drop this tag (forced: stopped task containers may still refer to it)."""
        try:
            self.client.images.remove(tag, force=True)
            return True
        except docker.errors.ImageNotFound:
            return True
        except docker.errors.APIError:
            return False  # used by a running container; a later prune tries again

    def remove_untagged_images(self, project: str) -> None:
        """Images of this project that lost their last tag while a container still used them
        (a failed or cancelled deployment); they would otherwise fill the disk."""
        selector = {"dangling": True, "label": [f"disco.instance={self.instance}", f"disco.project={project}"]}
        for image in self.client.images.list(filters=selector):
            try:
                self.client.images.remove(image.id, force=True)  # stopped task containers may refer to it
            except docker.errors.APIError:
                pass  # a running container uses it: the next deploy's cleanup tries again

    def project_images(self, project: str) -> dict[int, list[str]]:
        """Deployment number -> its tags, for every image tag this instance made for the project
        (`:<number>-<random>`, and `:<number>` from before tags were random). Found by their
        labels, so another instance's images under a look-alike name are never taken."""
        selector = {"label": [f"disco.instance={self.instance}", f"disco.project={project}"]}
        tags = [tag for image in self.client.images.list(filters=selector) for tag in image.tags]
        # Its repository as runtime/names.py joins it, and as versions before that named it.
        return project_tags((names.legacy(self.instance, project), names.join(self.instance, project)), tags)

    # -- services --------------------------------------------------------------------------

    def _find_service(self, name: str, project: str | None = None) -> Any:
        """The docker-py Service of that exact name (of that project, when given), or None."""
        try:
            service = self.client.services.get(name)
        except docker.errors.NotFound:
            return None
        labels = service.attrs["Spec"].get("Labels") or {}
        if service.name != name or (project is not None and labels.get("disco.project") != project):
            return None
        return service

    def service_state(self, name: str, project: str | None = None) -> ServiceState | None:
        """The service of that exact name (of that project, when given), or None."""
        service = self._find_service(name, project)
        return ServiceState.of(service) if service is not None else None

    def project_service(self, project: str, service: str) -> ServiceState | None:
        """The swarm service running a project's service, found by its labels whatever its name."""
        found = [s for s in self.project_services(project) if s.service == service]
        return found[0] if found else None

    def project_services(self, project: str) -> list[ServiceState]:
        services = self.client.services.list(
            filters={"label": [f"disco.instance={self.instance}", f"disco.project={project}"]}
        )
        return [ServiceState.of(service) for service in services]

    def services_health(self) -> list[ServiceHealth]:
        """Running and wanted tasks of every project's services, in one call (the dashboard's
        project list asks it for all projects at once)."""
        services = self.client.services.list(filters={"label": [f"disco.instance={self.instance}", "disco.project"]},
                                             status=True)
        return [service_health_of(service.attrs) for service in services]

    def host_ports(self) -> list[HostPort]:
        """Every port a swarm service publishes on this node's host, whoever made the service:
        a host port is the node's, so another instance's or a hand-made service's counts too."""
        found = []
        for service in self.client.services.list():
            spec = service.attrs["Spec"]
            labels = spec.get("Labels") or {}
            for port in (spec.get("EndpointSpec") or {}).get("Ports") or []:
                if port.get("PublishedPort"):
                    found.append(HostPort(int(port["PublishedPort"]), port.get("Protocol", "tcp"), service.name,
                                          labels.get("disco.instance", ""), labels.get("disco.project", "")))
        return found

    def apply(self, spec: ServiceSpec) -> bool:
        """Create the service or roll it to this spec (start-first). True if it was created."""
        parts = swarm_service(spec)
        current = self._find_service(spec.name)
        owner = (current.attrs["Spec"].get("Labels") or {}).get("disco.project") if current else None
        if current is not None and owner != spec.labels.get("disco.project"):
            # Names cannot collide (runtime/names.py), but something else may have taken one.
            raise DockerError(f"the swarm service {spec.name} belongs to {owner or 'something else'}; "
                              "rename this service in disco.toml")
        try:
            if current is None:
                self.client.api.create_service(name=spec.name, **parts)
                return True
            self._wait_out_rollback(current)
            self._update_service(current, spec.name, parts)
            return False
        except docker.errors.APIError as err:
            raise DockerError(f"could not start service {spec.name}: {err.explanation or err}") from None

    def _update_service(self, service: Any, name: str, parts: ServiceKwargs, attempts: int = 5) -> None:
        """Update a service from its latest version. An update names the version it read, and is
        refused ("update out of sequence") when swarm wrote the service in between: swarm itself
        does, recording how an earlier update or rollback went; then read it again and retry."""
        while True:
            service.reload()
            try:
                self.client.api.update_service(service.id, service.version, name=name, **parts)
                return
            except docker.errors.APIError as err:
                attempts -= 1
                if "update out of sequence" not in str(err) or not attempts:
                    raise
                time.sleep(ROLLOUT_POLL_SECONDS)

    def _wait_out_rollback(self, service: Any, timeout: float = ROLLBACK_WAIT_SECONDS) -> None:
        """Swarm may still be rolling back the update of a deployment that failed a moment ago
        (it fails as soon as swarm starts to): an update now is refused ("update out of
        sequence") when the rollback's end lands between reading the service and updating it.
        The previous version serves meanwhile (start-first), so waiting costs nothing."""
        deadline = time.monotonic() + timeout
        while ((service.attrs.get("UpdateStatus") or {}).get("State") == "rollback_started"
               and time.monotonic() < deadline):
            time.sleep(ROLLOUT_POLL_SECONDS)
            service.reload()

    def wait_rollout(self, spec: ServiceSpec, created: bool, timeout: float, on_wait: OutputLine,
                     stop: Callable[[], bool] = lambda: False) -> None:
        """Block until every task of this spec runs (and is healthy); raise with the reason if not.

        An update waits for swarm to complete it, not only for its new tasks to run: until then
        the old ones still answer (measured here: an old task's name leaves swarm's DNS 0.06 to
        0.1 s after the update completes, not when swarm tells the task to stop; the deploy then
        watches for that, wait_old_tasks_unresolved), so they would still get requests.
        """
        deadline = time.monotonic() + timeout
        deployment = spec.labels.get("disco.deployment", "")
        said = ""
        while True:
            service = self._find_service(spec.name)
            if service is None:
                raise DockerError(f"service {spec.name} disappeared during the deploy")
            state = (service.attrs.get("UpdateStatus") or {}).get("State", "")
            tasks = [t for t in service.tasks() if _task_deployment(t) == deployment]
            running = [t for t in tasks if t["Status"]["State"] == "running" and t["DesiredState"] == "running"]
            if state.startswith("rollback") or state == "paused":
                raise DockerError(self._explain(spec, tasks, on_wait) or f"swarm rolled the update back ({state})")
            if created and (reason := self._explain(spec, tasks, on_wait)):
                raise DockerError(reason)
            if created and len(running) >= spec.replicas or spec.replicas == 0:
                return
            if not created and state == "completed":
                return  # the old tasks are out of swarm's DNS (Docker stops them a little later)
            message = f"waiting for {spec.name}: {len(running)}/{spec.replicas} task(s) healthy"
            if message != said:
                on_wait(message)
                said = message
            if stop():
                raise DockerError(f"stopped waiting for {spec.name}: the deployment was cancelled")
            if time.monotonic() > deadline:
                reason = self._explain(spec, tasks, on_wait, stuck=True)
                raise DockerError(reason or f"{spec.name} was not healthy after {timeout:.0f} s ({spec.check})")
            time.sleep(ROLLOUT_POLL_SECONDS)

    def wait_old_tasks_unresolved(self, spec: ServiceSpec, timeout: float, on_wait: OutputLine) -> bool:
        """After an update completed: wait until swarm's DNS gives none of the addresses of
        `spec`'s old tasks (other deployments' tasks still running), asked where its callers ask:
        from the proxy's network for a service on it (what Caddy's next lookup gets), else from
        one of the service's own new tasks (what the rest of its project gets). True once it does,
        or after `timeout`, said on `on_wait` (waiting longer would not help: swarm stops those
        tasks next).

        False at once when this cannot be seen from here, for the caller to wait a fixed time: no
        proxy, or no new task of a private service, runs on this node; the namespace cannot be
        entered (no root); or Docker failed to answer.
        """
        deployment = spec.labels.get("disco.deployment", "")
        if any(attachment.network == self.network_name for attachment in spec.networks):
            network, asker = self.network_name, [f"com.docker.swarm.service.name={self.proxy_name}"]
        else:  # private to its project: only its project's network resolves it
            network = self.project_network_name(spec.labels.get("disco.project", ""))
            asker = [f"com.docker.swarm.service.name={spec.name}", f"disco.deployment={deployment}"]
        try:  # the update is done: a Docker hiccup here only costs the fixed wait, not the deploy
            pid = self._local_container_pid(asker)
            service = self._find_service(spec.name) if pid else None
            tasks = service.tasks() if service is not None else []
        except (docker.errors.DockerException, requests.RequestException):
            return False
        if not tasks:
            return False
        old = old_task_addresses(tasks, deployment, network)
        if not old:
            return True
        try:
            resolver = swarm_dns.resolver_in(pid)
        except OSError:
            return False
        deadline = time.monotonic() + timeout
        with resolver:
            while True:
                left: frozenset[str] | None = None  # None: no answer (a busy dockerd, a lost datagram): ask again
                try:
                    left = swarm_dns.addresses(resolver, spec.name, timeout=SWARM_DNS_ANSWER_SECONDS) & old
                except TimeoutError:
                    pass
                except OSError:
                    return False
                if left is not None and not left:
                    return True
                if time.monotonic() > deadline:
                    still = f"{len(left)} old task(s) of {spec.name} still in" if left else \
                        f"no answer about {spec.name} from"
                    on_wait(f"{still} swarm's DNS after {timeout:g} s: going live, swarm stops the old tasks next")
                    return True
                time.sleep(SWARM_DNS_POLL_SECONDS)

    def _local_container_pid(self, labels: list[str]) -> int:
        """The process id of a running container on this node with these labels (0 if none)."""
        for container in self.client.api.containers(filters={"label": labels, "status": "running"}):
            state = self._container_state(container["Id"])  # {} if it went meanwhile
            if state.get("Running") and state.get("Pid"):
                return int(state["Pid"])
        return 0

    def _explain(self, spec: ServiceSpec, tasks: list[dict[str, Any]], on_line: OutputLine,
                 stuck: bool = False) -> str | None:
        """Why a task of this deployment stopped (or, `stuck`, never got healthy), told as the
        person deploying needs it, after the last lines of that task's own output."""
        for task in tasks:
            status = task["Status"]
            if status["State"] not in ("failed", "rejected", "complete") and not stuck:
                continue
            container = status.get("ContainerStatus") or {}
            container_id = container.get("ContainerID") or ""
            state = self._container_state(container_id) if container_id else {}
            reason = _failure_reason(spec, status, container, state)
            if reason is None and stuck:
                continue
            if container_id:
                self._show_tail(spec.name, container_id, on_line)
            return reason
        return None

    def _show_tail(self, name: str, container_id: str, on_line: OutputLine) -> None:
        try:
            raw = self.client.api.logs(container_id, stdout=True, stderr=True, tail=TAIL_LINES)
        except docker.errors.APIError:
            return
        lines = raw.decode(errors="replace").splitlines()
        if not lines:
            on_line(f"{name} printed nothing before it stopped")
            return
        on_line(f"last {len(lines)} line(s) of {name}'s output (task container {container_id[:12]}):")
        for line in lines:
            on_line(f"  | {line}")

    def _container_state(self, container_id: str) -> dict[str, Any]:
        try:
            return dict(self.client.api.inspect_container(container_id)["State"])
        except docker.errors.APIError:
            return {}

    def restore_previous(self, name: str) -> None:
        """Put a service back on the spec it had before the last update (swarm's rollback)."""
        service = self._find_service(name)
        if service is None or "PreviousSpec" not in service.attrs:
            return
        previous = service.attrs["PreviousSpec"]
        self.client.api.update_service(
            service.id, service.version, name=name,
            task_template=previous["TaskTemplate"], labels=previous.get("Labels"),
            mode=previous.get("Mode"), update_config=previous.get("UpdateConfig"),
            rollback_config=previous.get("RollbackConfig"), endpoint_spec=previous.get("EndpointSpec"),
        )

    def remove_service(self, name: str) -> None:
        service = self._find_service(name)
        if service is not None:
            try:
                service.remove()
            except docker.errors.NotFound:
                pass

    def scale(self, name: str, replicas: int) -> None:
        service = self._find_service(name)
        if service is None:
            raise DockerError(f"service {name} does not exist")
        service.scale(replicas)

    # -- nodes -----------------------------------------------------------------------------

    def here_node_id(self) -> str:
        """The swarm node of the engine this daemon talks to: where it builds images and runs
        its proxy ("" when that engine is in no swarm)."""
        return str((self.client.info().get("Swarm") or {}).get("NodeID") or "")

    def project_placements(self, project: str) -> list[ServicePlacement]:
        """Where each of a project's services runs, what it is kept to and what it waits for."""
        services = self.client.api.services(filters={"label": [f"disco.instance={self.instance}",
                                                                f"disco.project={project}"]})
        if not services:
            return []
        tasks = self._tasks_of(services)
        # The nodes as they are (their tasks counted from the project's own: the placements do not use them).
        return service_placements(services, tasks, swarm_nodes(self.client.api.nodes(), tasks, ""))

    def node_count(self) -> int:
        return len(self.client.api.nodes())

    def nodes(self) -> list[SwarmNode]:
        """Every node of the swarm (this daemon's first), each with how many tasks of this
        instance's services run on it."""
        found = self.client.api.nodes()
        return swarm_nodes(found, self.instance_tasks(), self.here_node_id())

    def instance_tasks(self) -> list[TaskPlacement]:
        """Every task swarm still knows of this instance's services (the proxy's too), wherever
        it is: running, starting, and the stopped ones swarm keeps as history."""
        services = self.client.api.services(filters={"label": f"disco.instance={self.instance}"})
        if not services:
            return []  # an empty service filter would list every task of the swarm
        return self._tasks_of(services)

    def _tasks_of(self, services: list[dict[str, Any]]) -> list[TaskPlacement]:
        """The tasks of these services (GET /services entries, at least one), each named by its
        service's name (a task gives only the service's ID). A service removed meanwhile (a
        deploy's cleanup job, a project's removal) has none."""
        ids = [service["ID"] for service in services]
        while True:
            try:
                tasks = self.client.api.tasks(filters={"service": ids})
                break
            except docker.errors.NotFound:  # swarm refuses the whole list for one service that is gone
                left = [service["ID"] for service in self.client.api.services(filters={"id": ids})]
                if not left:
                    return []  # an empty service filter would list every task of the swarm
                if set(left) == set(ids):
                    raise
                ids = left
        names_by_id = {service["ID"]: service["Spec"]["Name"] for service in services}
        return [task_placement(task, names_by_id) for task in tasks]

    def instance_replicas(self) -> dict[str, int]:
        """Swarm service name -> the replicas it wants, for this instance's services."""
        services = self.client.api.services(filters={"label": f"disco.instance={self.instance}"})
        return {service["Spec"]["Name"]: int(((service["Spec"].get("Mode") or {}).get("Replicated") or {})
                                             .get("Replicas", 0)) for service in services}

    def relabel_node(self, node_id: str, set_labels: dict[str, str], remove: list[str]) -> dict[str, str]:
        """Set and remove labels of a node; its labels after."""
        return dict(self._update_node(node_id, lambda spec: node_spec(
            spec, labels=relabelled(spec.get("Labels") or {}, set_labels, remove)))["Labels"])

    def drain_node(self, node_id: str) -> None:
        """Have swarm stop every task on the node and start it elsewhere (replicated services)."""
        self._update_node(node_id, lambda spec: node_spec(spec, availability="drain"))

    def _update_node(self, node_id: str, change: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        """Send the node's spec as `change` makes it from the current one. An update names the
        version it read, and is refused when another change came in between: then read again."""
        attempts = 3
        while True:
            node = self.client.api.inspect_node(node_id)
            spec = change(node["Spec"])
            try:
                self.client.api.update_node(node_id, node["Version"]["Index"], spec)
                return spec
            except docker.errors.APIError as err:
                attempts -= 1
                if "update out of sequence" not in str(err) or not attempts:
                    raise

    def remove_node(self, node_id: str, force: bool) -> None:
        """Remove a node from the swarm. Swarm refuses a node that still answers unless forced:
        forced, the node is dropped and its engine, told so, keeps asking to come back until
        `docker swarm leave` runs there."""
        self.client.api.remove_node(node_id, force=force)

    def join_target(self) -> JoinTarget:
        """Where a new node joins: this manager's address as the swarm gives it to nodes."""
        return join_target(self.client.info().get("Swarm") or {})

    def worker_join_token(self) -> str:
        """The secret a machine joins this swarm with as a worker (only a manager can read it)."""
        return str(self.client.api.inspect_swarm()["JoinTokens"]["Worker"])

    # -- usage -----------------------------------------------------------------------------

    def project_usage(self, project: str) -> list[ServiceUsage]:
        """CPU and memory of a project's services now, each summed over its running containers
        on this node (swarm's tasks, and a scheduled service's run while it runs); a service
        with none running here is not listed. Blocks for up to about 2 s: run it in a thread.

        Docker's stats come from a collector that samples the containers being asked about once
        a second, and a request waits for its next round. Measured on Docker 20.10 (API 1.41,
        which Disco needs anyway): with `one_shot` the answer comes at the next round, 0 to 1 s,
        but with no earlier sample (precpu is empty), so no CPU %; without it Docker waits one
        round more for that sample: 1 to 2 s, and 2 s for several containers asked at once (the
        round that wakes the collector starts before all of them are asked). A second one_shot
        round costs the same one round more. So: one one_shot round for all containers at once,
        which gives memory; the CPU % is measured from the counters this engine kept from the
        previous look if that was at most CPU_SAMPLE_KEPT s ago (a page looked at again, or
        a stream asking every few seconds: one round), else from a second one_shot round for
        the containers without them.
        """
        selector = {"label": [f"disco.instance={self.instance}", f"disco.project={project}"], "status": "running"}
        service_of = {c["Id"]: (c.get("Labels") or {}).get("disco.service", "")
                      for c in self.client.api.containers(filters=selector)}
        service_of = {cid: service for cid, service in service_of.items() if service}  # not release/run containers
        if not service_of:
            return []
        with ThreadPoolExecutor(max_workers=1) as side:
            host_memory = side.submit(lambda: int(self.client.api.info().get("MemTotal") or 0))  # during the round
            latest = self._stats_round(list(service_of))
            asked_at = time.monotonic()
            with self._cpu_seen_lock:
                earlier = {cid: counters for cid, (counters, at) in self._cpu_seen.items()
                           if cid in latest and asked_at - at <= CPU_SAMPLE_KEPT
                           and cpu_percent(counters, latest[cid].cpu) is not None}
            if missing := [cid for cid in latest if cid not in earlier]:
                earlier |= {cid: latest[cid].cpu for cid in missing}
                latest |= self._stats_round(missing)
            with self._cpu_seen_lock:
                now = time.monotonic()
                self._cpu_seen = {cid: seen for cid, seen in self._cpu_seen.items() if now - seen[1] <= CPU_SAMPLE_KEPT}
                self._cpu_seen |= {cid: (sample.cpu, now) for cid, sample in latest.items()}
            return service_usages([(service_of[cid], sample, earlier.get(cid)) for cid, sample in latest.items()],
                                  host_memory.result())

    def _stats_round(self, container_ids: list[str]) -> dict[str, ContainerSample]:
        """One one_shot stats sample of each container, all asked at once; one that stopped
        or went meanwhile is left out."""
        def ask(container_id: str) -> ContainerSample | None:
            try:
                return stats_sample(self.client.api.stats(container_id, stream=False, one_shot=True))
            except docker.errors.NotFound:
                return None

        with ThreadPoolExecutor(max_workers=min(STATS_AT_ONCE, len(container_ids))) as pool:
            found = dict(zip(container_ids, pool.map(ask, container_ids), strict=True))
        return {cid: sample for cid, sample in found.items() if sample is not None}

    # -- the proxy -------------------------------------------------------------------------

    @property
    def proxy_name(self) -> str:
        # Joined like the others, or instance `disco-x`'s proxy would be project x's service caddy.
        return names.join(self.instance, "caddy")

    def ensure_proxy(self, image: str, run_dir: Path, http_port: int, https_port: int, command: list[str]) -> bool:
        """Create or fix the Caddy service, on this daemon's node; True if it was (re)started
        (only when these settings changed: pinning it to its node alone keeps it running)."""
        parts = proxy_service(self.instance, self.network_name, image, run_dir, http_port, https_port, command,
                              self.here_node_id())
        current = self._find_service(self.proxy_name)
        restarts = current is None or (current.attrs["Spec"].get("Labels") or {}).get("disco.spec") != \
            parts["labels"]["disco.spec"]
        if not restarts and _constraints(current.attrs["Spec"]) == _constraints(parts["task_template"]):
            return False
        if current is None:
            self._remove_renamed_proxy()
        self._create_or_update(current, self.proxy_name, parts, "the Caddy proxy service")
        return restarts

    def _create_or_update(self, current: Any, name: str, parts: ServiceKwargs, what: str) -> None:
        try:
            if current is None:
                self.client.api.create_service(name=name, **parts)
            else:
                self._update_service(current, name, parts)
        except docker.errors.APIError as err:
            raise DockerError(f"could not start {what}: {err.explanation or err}") from None

    # -- the registry ----------------------------------------------------------------------

    @property
    def registry_name(self) -> str:
        return names.join(self.instance, "registry")

    def ensure_registry(self, image: str, config_dir: Path, port: int, files: str) -> bool:
        """Create or fix the daemon's own registry service, on this daemon's node; True if it was
        (re)started (only when its settings or files changed)."""
        parts = registry_service(self.instance, image, config_dir, port, self.here_node_id(), files)
        current = self._find_service(self.registry_name)
        if current is not None and (current.attrs["Spec"].get("Labels") or {}).get("disco.spec") == \
                parts["labels"]["disco.spec"]:
            return False
        self._create_or_update(current, self.registry_name, parts, "the registry service")
        return True

    def log_in(self, access: RegistryAccess, fresh: bool = False) -> None:
        """Log this engine in to the registry: pushes, and the services made after, carry the
        credentials (swarm hands them to each node that pulls). docker-py asks the registry
        once and then answers from memory, unless `fresh`."""
        try:
            self.client.login(access.username, access.password, registry=access.address, reauth=fresh)
        except docker.errors.APIError as err:
            raise DockerError(f"cannot log in to the registry at {access.address}: "
                              f"{(err.explanation or str(err)).strip()}") from None

    def push(self, tag: str, access: RegistryAccess, on_line: OutputLine) -> str:
        """Push a local image to the registry, saying each layer once as it is pushed (or found
        there already); its reference there, pinned to the digest pushed (`HOST/REPO:TAG@sha256:...`),
        so a tag written over in the registry later changes nothing that runs."""
        reference = access.reference(tag)
        repository, _, version = reference.rpartition(":")
        self.log_in(access)
        digest = ""
        try:
            self.client.images.get(tag).tag(repository, version)
            said: set[tuple[str, str]] = set()
            for event in self.client.api.push(repository, version, stream=True, decode=True):
                if event.get("error"):
                    raise DockerError(f"could not push {tag} to {access.address}: {event['error']}")
                digest = str((event.get("aux") or {}).get("Digest") or digest)
                layer, status = str(event.get("id", "")), str(event.get("status", ""))
                if layer and status in ("Pushed", "Layer already exists", "Mounted from") \
                        and (layer, status) not in said:
                    said.add((layer, status))
                    on_line(f"push {layer}: {status.lower()}")
        except docker.errors.ImageNotFound:
            raise DockerError(f"image {tag} is no longer kept") from None
        except docker.errors.APIError as err:
            raise DockerError(f"could not push {tag} to {access.address}: {err.explanation or err}") from None
        if not digest:
            raise DockerError(f"pushing {tag} to {access.address} gave no digest")
        return f"{reference}@{digest}"

    def collect_registry_garbage(self) -> str:
        """Free the layers no image in the daemon's own registry uses any more (distribution's
        `garbage-collect`, run in its container); its summary. No push may run
        meanwhile (hooks/registry.py keeps them apart): a layer being uploaded looks unused."""
        selector = {"label": [f"com.docker.swarm.service.name={self.registry_name}"], "status": "running"}
        running = self.client.containers.list(filters=selector)
        if not running:
            raise DockerError("the registry service has no running task on this node")
        code, output = running[0].exec_run(["docker-registry", "garbage-collect", "--delete-untagged",
                                            f"{REGISTRY_CONTAINER_DIR}/config.yml"])
        lines = output.decode(errors="replace").strip().splitlines()
        if code != 0:
            raise DockerError(f"the registry's garbage collection exited {code}: {lines[-1] if lines else ''}")
        # Its summary: "N blobs marked, M blobs and K manifests eligible for deletion".
        return next((line.strip() for line in lines if "eligible for deletion" in line), "")

    @property
    def prune_job_name(self) -> str:
        return names.join(self.instance, "prune")

    def prune_other_nodes(self, image: str, socket: str) -> None:
        """Start the job that prunes this instance's unused images on every other node (see
        runtime/docker_specs.prune_job), replacing the one before, which has run by now; not
        waited for. `image` is the docker client's, as the other nodes pull it."""
        current = self._find_service(self.prune_job_name)
        if current is not None:
            with _ignoring_docker_errors():
                current.remove()
        try:
            self.client.api.create_service(name=self.prune_job_name,
                                           **prune_job(self.instance, image, self.here_node_id(), socket))
        except docker.errors.APIError as err:
            raise DockerError(f"could not start the job that prunes the other nodes: {err.explanation or err}") \
                from None

    def unlabel_volume_node(self, label: str) -> None:
        """The volume is gone: no node holds its data any more."""
        for node in self.client.api.nodes():
            if label in ((node.get("Spec") or {}).get("Labels") or {}):
                self.relabel_node(node["ID"], {}, [label])

    def label_volume_node(self, label: str) -> str:
        """The name of the node that carries `label` (true); this daemon's node gets it when none
        does: the engine there made the volume, so its data starts there."""
        for node in self.client.api.nodes():
            if ((node.get("Spec") or {}).get("Labels") or {}).get(label) == "true":
                return str((node.get("Description") or {}).get("Hostname") or node["ID"])
        here = self.here_node_id()
        self.relabel_node(here, {label: "true"}, [])
        return str((self.client.api.inspect_node(here).get("Description") or {}).get("Hostname") or here)

    def _remove_renamed_proxy(self) -> None:
        """An instance with a '-' in its name had its proxy under the old name: it holds the host
        ports the new one needs, so it goes first (a few seconds without Caddy, once)."""
        selector = {"label": [f"disco.instance={self.instance}", "disco.role=proxy"]}
        for service in self.client.services.list(filters=selector):
            if service.name != self.proxy_name:
                service.remove()

    def remove_instance(self) -> None:
        """Remove every service, image, volume and network of this instance (tests, uninstall)."""
        selector = {"label": f"disco.instance={self.instance}"}
        # Services are listed again each round: one whose creation was under way when the daemon
        # was killed (the proxy, started in the background) appears after the first listing and
        # would keep the network in use. Their containers linger (an app that ignores SIGTERM, as
        # a shell or busybox running as PID 1 does, for swarm's whole 10 s grace), and one whose
        # creation was under way still makes its volumes after the service is gone: remove and
        # kill each one seen, until none has been seen for a second.
        names: set[str] = set()
        deadline = time.monotonic() + 60
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < 1.0:
            for service in self.client.services.list(filters=selector):
                quiet_since = time.monotonic()
                names.add(service.name)
                with _ignoring_docker_errors():  # removed meanwhile: NotFound
                    service.remove()
            for container in self.client.containers.list(all=True, sparse=True):  # sparse: no inspect
                if (container.attrs.get("Labels") or {}).get("com.docker.swarm.service.name") in names:
                    quiet_since = time.monotonic()
                    with _ignoring_docker_errors():
                        container.remove(force=True)
            time.sleep(0.2)
        for container in self.client.containers.list(all=True, filters=selector):  # one-off commands
            with _ignoring_docker_errors():
                container.remove(force=True)
        for network in self.client.networks.list(filters=selector):
            _retry_while_in_use(network.remove)
        for image in self.client.images.list(filters=selector):
            for tag in image.tags or [image.id]:
                self.remove_image(tag)
        for volume in self.client.volumes.list(filters=selector) + [
            v for v in self.client.volumes.list() if v.name.startswith(f"{self.instance}-caddy-")
        ]:
            _retry_while_in_use(volume.remove)

    def project_volumes(self, project: str) -> list[str]:
        selector = {"label": [f"disco.instance={self.instance}", f"disco.project={project}"]}
        return sorted(v.name for v in self.client.volumes.list(filters=selector))

    def disk_use(self) -> DiskUse:
        """What this instance's projects hold on Docker's disk: their images and volumes, per
        project (see disk_use_of). Docker measures every volume for it (a walk of its files) and
        every image's shared layers: it takes seconds on a full server, so keep it off a page's
        own answer."""
        return disk_use_of(self.client.df(), self.instance)

    def remove_volume(self, name: str) -> None:
        _retry_while_in_use(self.client.volumes.get(name).remove)

    def service_logs(self, name: str, tail: int, follow: bool) -> AsyncIterator[str]:
        """Lines from every task of the service, oldest first; with follow, until closed.

        The service is looked up here (blocking, briefly); its lines are then read without a
        thread (OneOffRun.stream_lines), and closing the iterator closes Docker's stream.
        """
        service = self._find_service(name)
        if service is None:
            raise DockerError(f"service {name} does not exist")
        container_spec = ((service.attrs.get("Spec") or {}).get("TaskTemplate") or {}).get("ContainerSpec") or {}
        params = {"stdout": "1", "stderr": "1", "follow": "1" if follow else "0", "tail": str(tail),
                  "timestamps": "1"}
        return OneOffRun.stream_lines(f"/services/{service.id}/logs", params, multiplexed=not container_spec.get("TTY"))

    def run_oneoff(self, image: str, command: list[str], env: dict[str, str], mounts: list[tuple[str, str]],
                   labels: dict[str, str], limits: TaskLimits) -> OneOffRun:
        """Start a container for a one-off command on the project's network and the instance's,
        within its limits."""
        return OneOffRun(self._start_container(image, command, env, mounts, labels, limits))

    def _start_container(self, image: str, command: list[str] | None, env: dict[str, str],
                         mounts: list[tuple[str, str]], labels: dict[str, str], limits: TaskLimits) -> Any:
        """Create the container on its project's network (the project of its labels, whose network
        a project deployed before project networks existed may still lack), connect it to the
        instance's, start it."""
        networks = [self.ensure_project_network(labels["disco.project"]), self.network_name]
        options = oneoff_container(image, command, env, labels, networks, mounts, limits)
        container = None
        try:
            container = self.client.containers.create(**options)
            for network in networks[1:]:
                self.client.networks.get(network).connect(container)
            container.start()
            return container
        except docker.errors.APIError as err:
            if container is not None:
                with _ignoring_docker_errors():
                    container.remove(force=True)
            raise DockerError(f"could not start the command: {err.explanation or err}") from None

    def run_to_end(self, image: str, command: list[str] | None, env: dict[str, str], mounts: list[tuple[str, str]],
                   labels: dict[str, str], limits: TaskLimits, on_line: OutputLine, timeout: float,
                   stop: Callable[[], bool] = lambda: False) -> RunResult:
        """Run a container until its command ends (the release command, a scheduled run),
        streaming its output lines; stopped (SIGTERM, then SIGKILL after STOP_GRACE) after
        `timeout` seconds or when `stop` turns true. The container is removed afterwards,
        whatever happened. Blocks: run it in a thread."""
        container = self._start_container(image, command, env, mounts, labels, limits)
        ended = threading.Event()  # the output ended: the command has, too
        why: list[str] = []  # "timeout" or "cancelled", set by the watcher when it stops the container

        def watch() -> None:
            deadline = time.monotonic() + timeout
            while not ended.wait(0.2):
                if stop() or time.monotonic() > deadline:
                    why.append("cancelled" if stop() else "timeout")
                    with _ignoring_docker_errors():
                        container.stop(timeout=STOP_GRACE)
                    return

        watcher = threading.Thread(target=watch, name="run-watch", daemon=True)
        watcher.start()
        try:
            _stream_lines(container.logs(stream=True, follow=True, stdout=True, stderr=True), on_line)
            ended.set()
            code = int(container.wait().get("StatusCode", -1))
            oom = bool(self._container_state(container.id).get("OOMKilled"))
        except (docker.errors.DockerException, requests.RequestException) as err:
            raise DockerError(f"the command's container failed: {err}") from None
        finally:
            ended.set()
            watcher.join()
            with _ignoring_docker_errors():
                container.remove(force=True)
        if why:
            return RunResult(None, timed_out=why[0] == "timeout", cancelled=why[0] == "cancelled")
        return RunResult(code, out_of_memory=oom)

    def copy_out(self, tag: str, path: str, destination: Path, labels: dict[str, str]) -> None:
        """Copy the folder `path` of an image (relative to its WORKDIR) into `destination`,
        through a container that is created, never started, and removed. A path that is not a
        folder of the image raises DockerError naming it."""
        config = self.client.images.get(tag).attrs.get("Config") or {}
        inside = str(PurePosixPath(config.get("WorkingDir") or "/") / path)
        if inside == "/":
            raise DockerError(f"static = {path!r} names the image's whole filesystem; name the site's folder")
        container = self.client.containers.create(tag, command=["copy-out"], labels=labels, network_disabled=True)
        try:
            try:
                chunks, stat = container.get_archive(inside)
            except docker.errors.NotFound:
                raise DockerError(f"the image has no {inside} (static = {path!r} in disco.toml)") from None
            if not stat.get("mode", 0) & (1 << 31):  # Go's os.ModeDir
                raise DockerError(f"{inside} in the image is not a folder (static = {path!r} in disco.toml)")
            _unpack_folder(chunks, PurePosixPath(inside).name or "/", destination)
        finally:
            with _ignoring_docker_errors():
                container.remove(force=True)

    def remove_containers(self, project: str, role: str) -> int:
        """Remove the one-off containers of a project with that role (left by a daemon that died)."""
        selector = {"label": [f"disco.instance={self.instance}", f"disco.project={project}", f"disco.role={role}"]}
        try:
            found = self.client.containers.list(all=True, filters=selector)
        except (docker.errors.DockerException, requests.RequestException) as err:
            raise DockerError(f"could not list the {role} containers of {project}: {err}") from None
        for container in found:
            with _ignoring_docker_errors():
                container.remove(force=True)
        return len(found)

    def ensure_volume(self, name: str, project: str) -> None:
        try:
            volume = self.client.volumes.get(name)
        except docker.errors.NotFound:
            self.client.volumes.create(name, labels=self.labels(project=project))
            return
        if (volume.attrs.get("Labels") or {}).get("disco.project") != project:
            raise DockerError(f"the volume {name} belongs to something else; rename this volume in disco.toml")


def project_tags(repositories: tuple[str, ...], tags: list[str]) -> dict[int, list[str]]:
    """Deployment number -> its tags among `tags` (an app with several images has one per image,
    all in the project's repository), for those of these repositories that a deployment made."""
    found: dict[int, list[str]] = {}
    for tag in sorted(tags):
        name, _, version = tag.rpartition(":")
        number, _, random = version.partition("-")
        if name in repositories and number.isdigit() and (not random or random.isalnum()):
            found.setdefault(int(number), []).append(tag)
    return found


def stats_sample(stats: dict[str, Any]) -> ContainerSample | None:
    """One sample of Docker's stats JSON (GET /containers/{id}/stats) as a record; None when it
    holds none (a container that is not running gets an empty one)."""
    memory = stats.get("memory_stats") or {}
    cpu = stats.get("cpu_stats") or {}
    if "usage" not in memory or "system_cpu_usage" not in cpu:
        return None
    usage = int(memory["usage"])
    # As `docker stats` counts it: without the inactive page cache, which the kernel drops
    # before it would kill for memory (cgroup v1 names it total_inactive_file, v2 inactive_file).
    detail = memory.get("stats") or {}
    cache = int(detail["total_inactive_file"] if "total_inactive_file" in detail else detail.get("inactive_file", 0))
    cpu_usage = cpu.get("cpu_usage") or {}
    cpus = int(cpu.get("online_cpus") or len(cpu_usage.get("percpu_usage") or ()) or 1)  # older kernels: per CPU
    return ContainerSample(
        cpu=CpuCounters(container=int(cpu_usage.get("total_usage", 0)), system=int(cpu["system_cpu_usage"]), cpus=cpus),
        memory_used=usage - cache if cache < usage else usage,
        memory_limit=int(memory.get("limit", 0)),
    )


def cpu_percent(before: CpuCounters, after: CpuCounters) -> float | None:
    """A container's CPU use between two samples, as `docker stats` shows it (100 = one CPU
    busy); None if they cannot tell (the same moment, or counters that went back)."""
    system = after.system - before.system
    used = after.container - before.container
    if system <= 0 or used < 0:
        return None
    return used / system * after.cpus * 100


def service_usages(containers: list[tuple[str, ContainerSample, CpuCounters | None]],
                   host_memory: int) -> list[ServiceUsage]:
    """Per service, by name: its containers' (service, latest sample, CPU counters of an earlier
    sample or None) summed. Limits add up, but to no more than the host's memory: a container
    without a limit reports the host's memory as its limit."""
    by_service: dict[str, list[tuple[ContainerSample, CpuCounters | None]]] = {}
    for service, sample, earlier in containers:
        by_service.setdefault(service, []).append((sample, earlier))
    usages = []
    for service, samples in sorted(by_service.items()):
        measured = [(earlier, sample.cpu) for sample, earlier in samples
                    if earlier is not None and cpu_percent(earlier, sample.cpu) is not None]
        limit = sum(sample.memory_limit for sample, _ in samples)
        usages.append(ServiceUsage(
            service=service,
            containers=len(samples),
            cpu_percent=sum(cpu_percent(before, after) or 0.0 for before, after in measured) if measured else None,
            # The longest of its containers' windows: they differ only for a container new since the last look.
            cpu_seconds=max(((after.system - before.system) / after.cpus / 1e9 for before, after in measured),
                            default=0.0),
            cpus=max(sample.cpu.cpus for sample, _ in samples),
            memory_used=sum(sample.memory_used for sample, _ in samples),
            memory_limit=min(limit, host_memory) if host_memory else limit,
        ))
    return usages


def _retry_while_in_use(remove: Callable[[], object], timeout: float = 30) -> None:
    """Volumes and networks stay busy for a moment after their service is removed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            remove()
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@contextlib.contextmanager
def _ignoring_docker_errors() -> Iterator[None]:
    try:
        yield
    except (docker.errors.DockerException, requests.RequestException):
        pass


def _unpack_folder(chunks: Iterator[bytes], top: str, destination: Path) -> None:
    """Docker's archive of a folder (its entries under `top/`) unpacked into `destination`:
    only plain files, folders and links that stay inside (tarfile's "data" filter)."""
    with tempfile.TemporaryFile(dir=destination.parent) as spool:  # in the data dir, which is watched for space
        for chunk in chunks:
            spool.write(chunk)
        spool.seek(0)
        with tarfile.open(fileobj=spool, mode="r:") as tar:
            members = []
            for member in tar.getmembers():
                parts = PurePosixPath(member.name).parts
                if not parts or parts[0] != top.strip("/") or len(parts) == 1:
                    continue
                member.name = str(PurePosixPath(*parts[1:]))
                if member.islnk():  # a hard link names its target by its path in the archive
                    member.linkname = str(PurePosixPath(*PurePosixPath(member.linkname).parts[1:]))
                members.append(member)
            try:
                tar.extractall(destination, members=members, filter="data")
            except tarfile.FilterError as err:
                raise DockerError(f"the static folder holds what cannot be served: {err}") from None


def _stream_lines(chunks: Iterator[bytes], on_line: OutputLine) -> None:
    """Docker's output chunks as lines (a line longer than LONGEST_LINE in pieces)."""
    pending = b""
    for chunk in chunks:
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            on_line(line.decode(errors="replace").rstrip("\r"))
        while len(pending) >= LONGEST_LINE:
            on_line(pending[:LONGEST_LINE].decode(errors="replace"))
            pending = pending[LONGEST_LINE:]
    if pending:
        on_line(pending.decode(errors="replace"))


def _failure_reason(spec: ServiceSpec, status: dict[str, Any], container: dict[str, Any],
                    state: dict[str, Any]) -> str | None:
    """Why a task stopped (or is not healthy), from its swarm status and its container's state."""
    if state.get("OOMKilled"):
        limit = f" (limit {spec.limits.memory})" if spec.limits else ""
        return f"{spec.name} ran out of memory{limit} and was killed"
    if spec.health_command is not None and (failed := _last_failed_check(state)) is not None:
        code, output = failed
        # -1: Docker could not run it, or it outlived the check's timeout; the output says which.
        ended = f"exited {code}" if code > 0 else "failed"
        said = f": {output}" if output else ""
        return f"{spec.check} of {spec.name} {ended}{said} (for {spec.health_timeout} s)"
    health = _last_health_output(state)
    if health:
        checked, _, listening = health.partition("; listening:")
        reason = f"health check failed for {spec.name}: {checked.strip()} (for {spec.health_timeout} s)"
        hint = port_hint(spec.labels.get("disco.service", spec.name), spec.port, listening.split()) \
            if spec.port and listening else None
        return f"{reason}; {hint}" if hint else reason
    if status["State"] == "pending" and status.get("Err"):  # never placed: a host port in use, say
        return f"{spec.name} could not start: {status['Err']}"
    if status["State"] not in ("failed", "rejected", "complete"):
        return None
    detail = status.get("Err") or status.get("Message") or status["State"]
    if "ExitCode" in container and status["State"] != "rejected":
        return f"{spec.name} exited with code {container['ExitCode']} ({detail})"
    return f"{spec.name}: {detail}"


_ADDRESS = re.compile(r"^(?P<host>.*):(?P<port>\d+)$")
_LOOPBACK = ("127.0.0.1", "::1")
DOCKER_DNS = "127.0.0.11"  # Docker's embedded DNS listens in every container on a network


def port_hint(service: str, port: int, listening: list[str]) -> str | None:
    """What to change when the app does not listen where the health check knocks, from the
    addresses `netstat -ltn` printed inside its container (like `0.0.0.0:8080`, `:::8080`,
    `127.0.0.1:8000`); None when the port is open to all (the app answered wrongly instead).
    Only ports the proxy could reach are offered as the fix."""
    reachable: set[int] = set()
    loopback: set[int] = set()
    for address in listening:
        match = _ADDRESS.match(address)
        if not match or match.group("host") == DOCKER_DNS:
            continue
        (loopback if match.group("host") in _LOOPBACK else reachable).add(int(match.group("port")))
    if port in reachable:
        return None
    if port in loopback:
        return (f"the app listens on 127.0.0.1:{port} only, which the proxy cannot reach: "
                f"make it listen on 0.0.0.0:{port}")
    if len(reachable) == 1:
        (other,) = reachable
        return (f"the app listens on {other}, not {port}: set [services.{service}] port = {other} in disco.toml "
                "(or make it listen on $PORT)")
    if reachable:
        shown = ", ".join(str(p) for p in sorted(reachable))
        return f"the app listens on {shown}, not {port}: set [services.{service}] port in disco.toml to the right one"
    if loopback:
        shown = ", ".join(f"127.0.0.1:{p}" for p in sorted(loopback))
        return f"the app listens on {shown} only, which the proxy cannot reach: make it listen on 0.0.0.0:$PORT"
    return f"nothing listens on a TCP port in the container (the health check knocks on {port})"


def _last_health_output(state: dict[str, Any]) -> str | None:
    """The last line the last failed health check printed, if the container ended unhealthy
    (or, still starting, has only failed checks so far)."""
    failed = _last_failed_check(state)
    if failed is None:
        return None
    return failed[1] or "no output"


def _last_failed_check(state: dict[str, Any]) -> tuple[int, str] | None:
    """(exit code, last line of output) of the last health check, if it failed and the
    container ended unhealthy (or, still starting, has only failed checks so far)."""
    health = state.get("Health") or {}
    log = health.get("Log") or []
    if health.get("Status") in ("unhealthy", "starting") and log and log[-1].get("ExitCode"):
        output = (log[-1].get("Output") or "").strip()
        return int(log[-1]["ExitCode"]), output.splitlines()[-1] if output else ""
    return None


def _constraints(spec: dict[str, Any]) -> list[str]:
    """The placement constraints of a service's spec (or of a TaskTemplate)."""
    template = spec.get("TaskTemplate", spec)
    return list((template.get("Placement") or {}).get("Constraints") or [])


def old_task_addresses(tasks: list[dict[str, Any]], deployment: str, network: str) -> frozenset[str]:
    """The addresses on `network` of the tasks that still run and are not of `deployment`,
    leaving out any a task of `deployment` has too (swarm reuses the addresses of stopped ones)."""
    def on_network(task: dict[str, Any]) -> set[str]:
        return {address.split("/")[0] for attachment in task.get("NetworksAttachments") or []
                if attachment["Network"]["Spec"]["Name"] == network for address in attachment.get("Addresses") or []}

    ours = {address for task in tasks if _task_deployment(task) == deployment for address in on_network(task)}
    running = [task for task in tasks if task["Status"]["State"] == "running" and _task_deployment(task) != deployment]
    return frozenset(address for task in running for address in on_network(task)) - ours


def _task_deployment(task: dict[str, Any]) -> str:
    return (task["Spec"]["ContainerSpec"].get("Labels") or {}).get("disco.deployment", "")


def _kill_when(process: subprocess.Popen[bytes], stop: Callable[[], bool]) -> None:
    while process.poll() is None:
        if stop():
            process.kill()
            return
        time.sleep(0.2)


def _die_with_parent() -> None:
    """In the build child: get SIGKILL if the daemon dies, so no orphan build tags an image later."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)



# -- disk use ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProjectDisk:
    """A project's images and volumes on Docker's disk (bytes)."""

    project: str
    images: int  # every image built for it that is still kept: tagged, or left untagged by a later build
    image_bytes: int  # their sizes, each with all its layers: layers they share are counted in each
    unique_bytes: int  # of which no other image on this Docker uses: removing them frees at least this
    volumes: int
    volume_bytes: int  # what Docker measured in them (a volume it could not measure counts 0)


@dataclass(frozen=True)
class DiskUse:
    projects: list[ProjectDisk]  # by name; only projects with an image or a volume
    layers_bytes: int  # every image on this Docker, each layer once (any instance, and base images)
    build_cache_bytes: int  # BuildKit's cache, not shared with images (what `docker builder prune` could free)


def disk_use_of(df: dict[str, Any], instance: str) -> DiskUse:
    """Docker's data usage (GET /system/df, API 1.41) summed per project by the `disco.project`
    label of this instance's images and volumes; another instance's, or anything unlabelled, is
    left out of the rows (but in the totals). A size Docker did not compute (-1) counts 0."""
    images: dict[str, list[dict]] = {}
    volumes: dict[str, list[int]] = {}
    for image in df.get("Images") or []:
        if project := _owned_by(image.get("Labels"), instance):
            images.setdefault(project, []).append(image)
    for volume in df.get("Volumes") or []:
        if project := _owned_by(volume.get("Labels"), instance):
            volumes.setdefault(project, []).append(_size((volume.get("UsageData") or {}).get("Size")))
    projects = [
        ProjectDisk(
            project=name,
            images=len(images.get(name, [])),
            image_bytes=sum(_size(i.get("Size")) for i in images.get(name, [])),
            unique_bytes=sum(max(0, _size(i.get("Size")) - _size(i.get("SharedSize"))) for i in images.get(name, [])),
            volumes=len(volumes.get(name, [])),
            volume_bytes=sum(volumes.get(name, [])),
        )
        for name in sorted(images.keys() | volumes.keys())
    ]
    cache = sum(_size(c.get("Size")) for c in df.get("BuildCache") or [] if not c.get("Shared"))
    return DiskUse(projects, _size(df.get("LayersSize")), cache)


def _owned_by(labels: dict[str, str] | None, instance: str) -> str:
    """The project of an object this instance labelled, else ""."""
    labels = labels or {}
    return labels.get("disco.project", "") if labels.get("disco.instance") == instance else ""


def _size(value: object) -> int:
    return value if isinstance(value, int) and value > 0 else 0
