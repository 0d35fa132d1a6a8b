"""Host ports a project's services publish (`publish = ["5432:5432/tcp"]`): the one rule that
refuses a port Disco itself uses or one something else on the swarm already publishes.

disco.toml's own checks (runtime/appconfig.py) need no server: ports from 1024 up, none twice in
the app. This rule needs the server's settings and what Docker runs, so it is asked twice: before
the ref moves (hooks/pipeline.py) and again in the deployment's plan stage (hooks/deployment.py),
since another project may have taken the port in between.
"""

from __future__ import annotations

from collections.abc import Callable

from runtime.appconfig import AppConfig, PublishedPort, ServiceConfig
from runtime.docker_engine import HostPort
from runtime.settings import Settings


def disco_ports(settings: Settings) -> dict[int, str]:
    """The TCP ports Disco itself listens on, and what each is."""
    return {
        settings.http_port: "the port Disco's proxy serves HTTP on (http_port)",
        settings.https_port: "the port Disco's proxy serves HTTPS on (https_port)",
        settings.api_port: "the port of Disco's API (api_port)",
        settings.ssh_port: "the port of Disco's git-over-SSH server (ssh_port)",
        settings.registry_port: "the port of Disco's image registry, once the swarm has a second node "
                                "(registry_port)",
    }


def published_port_problem(config: AppConfig, project: str, settings: Settings, scale: dict[str, int],
                           host_ports: Callable[[], list[HostPort]]) -> str | None:
    """Why this app's published ports cannot be had, or None. `scale` is the project's replica
    counts set by `disco scale`; `host_ports` lists what the swarm publishes now (asked only
    when the app publishes something)."""
    publishing = {name: s for name, s in config.running_services.items() if s.publish}
    if not publishing:
        return None
    ours = disco_ports(settings)
    taken = host_ports()
    for name, service in publishing.items():
        if problem := replicas_problem(name, service, scale.get(name, service.replicas), project):
            return problem
        for port in service.publish:
            what = f"services.{name}.publish: host port {port.published}/{port.protocol}"
            if port.protocol == "tcp" and port.published in ours:
                return f"{what} is {ours[port.published]}; publish another host port, like \"{_other(port)}\""
            for other in taken:
                if (other.port, other.protocol) != (port.published, port.protocol):
                    continue
                if other.instance == settings.instance and other.project == project:
                    continue  # this project's own service: the deploy replaces it
                return (f"{what} is already published by {_owner(other, settings.instance)}; publish another "
                        f"host port, like \"{_other(port)}\", or free it there first")
    return None


def replicas_problem(name: str, service: ServiceConfig, replicas: int, project: str) -> str | None:
    """A service publishing host ports runs one task: a second could never bind them."""
    if not service.publish or replicas <= 1:
        return None
    return (f"services.{name} publishes {_ports(service.publish)} on the host, so it runs one task: "
            f"it is set to {replicas} replicas, and two tasks cannot share a host port "
            f"(set replicas = 1, or `disco scale:set {name}=1 -p {project}`)")


def _owner(port: HostPort, instance: str) -> str:
    if port.instance == instance and port.project:
        return f"project {port.project!r} (swarm service {port.service})"
    if port.instance == instance:
        return f"Disco's own swarm service {port.service}"
    return f"the swarm service {port.service}, which is not one of this Disco's projects"


def _ports(ports: tuple[PublishedPort, ...]) -> str:
    return ", ".join(f"{p.published}/{p.protocol}" for p in ports)


def _other(port: PublishedPort) -> str:
    other = port.published + 1 if port.published < 65535 else port.published - 1
    return f"{other}:{port.target}/{port.protocol}"
