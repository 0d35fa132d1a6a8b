"""An in-memory Docker engine with the promises of runtime/docker_engine.Engine that the deployer
and the router rely on (hooks/engine.DeployEngine), plus a fake Caddy admin API.

Strict: what the real engine refuses (an unknown service or image, a name owned by another
project), this one refuses with the same DockerError. Scriptable: a build that fails with given
output, a service that never gets healthy (swarm rolls it back, or the wait times out), work to
do in the middle of a build (a cancel arriving), Caddy down.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from runtime import names
from runtime.caddy import CaddyError
from runtime.docker_engine import (
    DockerError,
    DockerUnreachable,
    Engine,
    HostPort,
    RunResult,
    ServiceSpec,
    ServiceState,
    project_tags,
)
from runtime.docker_specs import TaskLimits
from runtime.dockerfile import ImageOwner


@dataclass
class FakeService:
    spec: ServiceSpec
    previous: ServiceSpec | None = None
    update_state: str = "completed"

    def state(self) -> ServiceState:
        labels = self.spec.labels
        return ServiceState(name=self.spec.name, service=labels.get("disco.service", self.spec.name),
                            deployment=labels.get("disco.deployment", ""), replicas=self.spec.replicas,
                            update_state=self.update_state, has_previous=self.previous is not None)


@dataclass
class FakeEngine:
    instance: str
    images: dict[str, dict[str, str]] = field(default_factory=dict)  # tag -> labels
    built_dockerfiles: list[str] = field(default_factory=list)  # the text each build was given
    exposed: dict[str, list[int]] = field(default_factory=dict)  # tag -> EXPOSEd ports (default [8000])
    services: dict[str, FakeService] = field(default_factory=dict)
    volumes: dict[str, str] = field(default_factory=dict)  # name -> project
    calls: list[tuple[str, str]] = field(default_factory=list)  # (method, name) of every change, in order
    # -- the script
    build_output: list[str] = field(default_factory=lambda: ["#1 [internal] load build definition", "#2 DONE"])
    build_error: str = ""  # non-empty: the build fails, its last output line being this
    during_build: Callable[[], None] = lambda: None
    never_healthy: dict[str, str] = field(default_factory=dict)  # service name -> "rollback" | "timeout"
    # Containers run to their end (the release command, scheduled runs): what each was asked,
    # and what the next ones print and return (the default: nothing, exit 0).
    runs: list[dict] = field(default_factory=list)
    run_output: list[str] = field(default_factory=list)
    run_result: RunResult = field(default_factory=lambda: RunResult(0))
    during_run: Callable[[], None] = lambda: None  # what a run waits for (a test's gate)
    image_files: dict[str, dict[str, str]] = field(default_factory=dict)  # folder -> {file: text}, for copy_out
    # dockerd stops while a rollout is awaited, and answers again after this many pings.
    docker_stops_in_rollout: int = 0
    dns_unwatched: set[str] = field(default_factory=set)  # services whose old tasks cannot be watched leave swarm's DNS
    dns_watch_seconds: float = 0  # how long the old tasks of the others take to leave it
    _unreachable_pings: int = 0

    def here_node_id(self) -> str:
        return "fake-node"

    def node_count(self) -> int:
        return 1  # one node: nothing is pushed (the registry is tested on real engines, test_multinode.py)

    def push(self, tag: str, access: object, on_line: object) -> str:
        raise AssertionError("a swarm of one node pushes nothing")

    def label_volume_node(self, label: str) -> str:
        raise AssertionError("a swarm of one node pins no volume")

    def reachable(self) -> bool:
        if self._unreachable_pings:
            self._unreachable_pings -= 1
            return False
        return True

    def __post_init__(self) -> None:
        self._names = Engine(self.instance)  # names and labels only: it never connects

    # -- names -----------------------------------------------------------------------------

    @property
    def network_name(self) -> str:
        return self._names.network_name

    def project_network_name(self, project: str) -> str:
        return self._names.project_network_name(project)

    def internal_name(self, project: str, service: str) -> str:
        return self._names.internal_name(project, service)

    def service_name(self, project: str, service: str) -> str:
        return self._names.service_name(project, service)

    def image_tag(self, project: str, number: int) -> str:
        return self._names.image_tag(project, number)

    def legacy_service_name(self, project: str, service: str) -> str:
        return self._names.legacy_service_name(project, service)

    def volume_name(self, project: str, volume: str) -> str:
        old = names.legacy(self.instance, project, volume)  # the real one keeps a project's old volume
        return old if self.volumes.get(old) == project else names.join(self.instance, project, volume)

    def labels(self, **extra: str) -> dict[str, str]:
        return self._names.labels(**extra)

    # -- the proxy -------------------------------------------------------------------------

    def ensure_network(self) -> None:
        self.calls.append(("ensure_network", self.network_name))

    def ensure_project_network(self, project: str) -> str:
        self.calls.append(("ensure_project_network", self.project_network_name(project)))
        return self.project_network_name(project)

    def ensure_proxy(self, image: str, run_dir: Path, http_port: int, https_port: int, command: list[str]) -> bool:
        self.calls.append(("ensure_proxy", image))
        return True

    # -- images ----------------------------------------------------------------------------

    def build(self, context: Path, dockerfile: Path, tag: str, args: dict[str, str], labels: dict[str, str],
              on_line: Callable[[str], None], stop: Callable[[], bool] = lambda: False) -> None:
        assert dockerfile.is_file() and context.is_dir(), "the deployer exports the tree before building"
        self.calls.append(("build", tag))
        self.built_dockerfiles.append(dockerfile.read_text())
        for line in self.build_output:
            on_line(line)
        self.during_build()
        if stop():
            raise DockerError("build stopped: the deployment was cancelled")
        if self.build_error:
            on_line(self.build_error)
            raise DockerError(f"build failed: {self.build_error.strip()}")
        self.images[tag] = dict(labels)

    def exposed_ports(self, tag: str) -> list[int]:
        self._require_image(tag)
        return self.exposed.get(tag, [8000])

    def image_shell(self, tag: str) -> list[str]:
        self._require_image(tag)
        return ["/bin/sh", "-c"]

    def retag(self, source: str, target: str) -> None:
        if source not in self.images:
            raise DockerError(f"image {source} is no longer kept")
        self.images[target] = dict(self.images[source])

    def remove_image(self, tag: str) -> bool:
        self.calls.append(("remove_image", tag))
        self.images.pop(tag, None)
        return True

    def remove_untagged_images(self, project: str) -> None:
        self.calls.append(("remove_untagged_images", project))

    def copy_out(self, tag: str, path: str, destination: Path, labels: dict[str, str]) -> None:
        """The image's `path` holds what `image_files` says (none: the image has no such folder)."""
        files = self.image_files.get(path)
        if files is None:
            raise DockerError(f"the image has no /{path} (static = {path!r} in disco.toml)")
        self.calls.append(("copy_out", tag))
        for name, text in files.items():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            (destination / name).write_text(text)

    def project_images(self, project: str) -> dict[int, list[str]]:
        ours = [tag for tag, labels in self.images.items() if labels.get("disco.project") in (project, None)]
        return project_tags((names.legacy(self.instance, project), names.join(self.instance, project)), ours)

    def image_owner(self, name: str) -> ImageOwner | None:
        labels = self.images.get(name)
        if labels is None:
            return None
        return ImageOwner(labels.get("disco.instance", ""), labels.get("disco.project", ""), labels.get("disco.role", ""))

    def tag_of(self, number: int, project: str = "shop") -> str:
        """The tag the deployment's image got (random since tags are not to be guessed)."""
        [tag] = self.project_images(project)[number]  # one image per deployment in these tests
        return tag

    # -- services --------------------------------------------------------------------------

    def ensure_volume(self, name: str, project: str) -> None:
        owner = self.volumes.setdefault(name, project)
        if owner != project:
            raise DockerError(f"the volume {name} belongs to something else; rename this volume in disco.toml")

    def service_state(self, name: str, project: str | None = None) -> ServiceState | None:
        service = self.services.get(name)
        if service is None or (project is not None and service.spec.labels.get("disco.project") != project):
            return None
        return service.state()

    def project_services(self, project: str) -> list[ServiceState]:
        return [s.state() for s in self.services.values()
                if s.spec.labels.get("disco.instance") == self.instance
                and s.spec.labels.get("disco.project") == project]

    def host_ports(self) -> list[HostPort]:
        return [HostPort(p.published, p.protocol, s.spec.name, s.spec.labels.get("disco.instance", ""),
                         s.spec.labels.get("disco.project", ""))
                for s in self.services.values() for p in s.spec.publish]

    def apply(self, spec: ServiceSpec) -> bool:
        self._require_image(spec.image)
        current = self.services.get(spec.name)
        owner = current.spec.labels.get("disco.project") if current else None
        if current is not None and owner != spec.labels.get("disco.project"):
            raise DockerError(f"the swarm service {spec.name} belongs to {owner or 'something else'}; "
                              "rename this service in disco.toml")
        self.calls.append(("apply", spec.name))
        if current is None:
            self.services[spec.name] = FakeService(spec)
            return True
        self.services[spec.name] = FakeService(spec, previous=current.spec, update_state="updating")
        return False

    def wait_rollout(self, spec: ServiceSpec, created: bool, timeout: float, on_wait: Callable[[str], None],
                     stop: Callable[[], bool] = lambda: False) -> None:
        service = self.services.get(spec.name)
        if service is None:
            raise DockerError(f"service {spec.name} disappeared during the deploy")
        on_wait(f"waiting for {spec.name}: 0/{spec.replicas} task(s) healthy")
        if self.docker_stops_in_rollout:
            self._unreachable_pings = self.docker_stops_in_rollout
            raise DockerUnreachable("no such file or directory on its socket")
        if stop():
            raise DockerError(f"stopped waiting for {spec.name}: the deployment was cancelled")
        failure = self.never_healthy.get(spec.name)
        if failure == "rollback" and service.previous is not None:  # swarm puts the old spec back itself
            self.services[spec.name] = FakeService(service.previous, previous=service.spec,
                                                   update_state="rollback_completed")
        if failure:
            raise DockerError(f"health check failed for {spec.name}: GET {spec.health_path} on port {spec.port} got "
                              f"HTTP/1.1 500 Internal Server Error (for {spec.health_timeout} s)")
        service.update_state = "completed"

    def wait_old_tasks_unresolved(self, spec: ServiceSpec, timeout: float, on_wait: Callable[[str], None]) -> bool:
        self.calls.append(("wait_old_tasks_unresolved", spec.name))
        if spec.name in self.dns_unwatched:
            return False
        time.sleep(self.dns_watch_seconds)
        return True

    def restore_previous(self, name: str) -> None:
        service = self.services.get(name)
        if service is None or service.previous is None:
            return
        self.calls.append(("restore_previous", name))
        self.services[name] = FakeService(service.previous, previous=service.spec, update_state="rollback_completed")

    def remove_service(self, name: str) -> None:
        if self.services.pop(name, None) is not None:
            self.calls.append(("remove_service", name))

    def scale(self, name: str, replicas: int) -> None:
        service = self.services.get(name)
        if service is None:
            raise DockerError(f"service {name} does not exist")
        self.calls.append(("scale", name))
        service.spec = ServiceSpec(**{**service.spec.__dict__, "replicas": replicas})

    def run_to_end(self, image: str, command: list[str] | None, env: dict[str, str], mounts: list[tuple[str, str]],
                   labels: dict[str, str], limits: TaskLimits, on_line: Callable[[str], None], timeout: float,
                   stop: Callable[[], bool] = lambda: False) -> RunResult:
        self._require_image(image)
        self.calls.append(("run_to_end", labels.get("disco.role", "")))
        self.runs.append({"image": image, "command": command, "env": env, "mounts": mounts, "labels": labels,
                          "timeout": timeout})
        for line in self.run_output:
            on_line(line)
        self.during_run()
        return RunResult(None, cancelled=True) if stop() else self.run_result

    def remove_containers(self, project: str, role: str) -> int:
        self.calls.append(("remove_containers", f"{project}/{role}"))
        return 0

    # -- for the tests ---------------------------------------------------------------------

    def deployment_of(self, name: str) -> str:
        """The deployment number the service's current spec belongs to."""
        return self.services[name].spec.labels["disco.deployment"]

    def started(self) -> list[str]:
        return [name for method, name in self.calls if method == "apply"]

    def _require_image(self, tag: str) -> None:
        if tag not in self.images:
            raise DockerError(f"image {tag} does not exist")


class FakeCaddy:
    """The part of Caddy's admin API the router uses; `down` makes every load fail."""

    def __init__(self) -> None:
        self.loaded: list[dict] = []
        self.down = False

    def wait_until_up(self, timeout: float = 60) -> None:
        if self.down:
            raise CaddyError(f"Caddy's admin API did not answer within {timeout:.0f} s")

    def load(self, config: dict) -> bool:
        if self.down:
            raise CaddyError("cannot reach Caddy's admin API: connection refused")
        self.loaded.append(config)
        return True

    def routed_hosts(self) -> set[str]:
        """Every host the last loaded config routes."""
        server = self.loaded[-1]["apps"]["http"]["servers"]["disco"]
        return {host for route in server["routes"] for match in route.get("match", []) for host in match["host"]}
