"""Projects as a whole: create, describe, delete; their domains. The REST API calls these;
each checks its input and audits."""

from __future__ import annotations

import json
import logging
import re
import shutil

from hooks import registry
from hooks.errors import Refused
from hooks.platform import Platform
from hooks.policy import check_project_name
from runtime import gitrepo, staticsites
from runtime.appconfig import AppConfigError
from runtime.appsource import config_at
from runtime.docker_engine import DockerError
from runtime.docker_specs import volume_label
from runtime.store import (
    ACTIVE_STATUSES,
    Deployment,
    DeploymentStatus,
    Store,
    StoreError,
)
from runtime.swarm_nodes import ServicePlacement

# A host name: dot-separated DNS labels, at least two, no trailing dot.
DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")

log = logging.getLogger("disco.projects")


def create_project(platform: Platform, user: str, name: str) -> dict:
    check_project_name(name)
    if platform.store.get_project(name) is not None:
        raise Refused(f"project {name!r} already exists", "conflict")
    project = platform.store.add_project(name, created_by=user)
    platform.store.audit(user, "projects:create", name)
    return project


def describe(platform: Platform, name: str) -> dict:
    project = require_project(platform, name)
    live = platform.store.live_deployment(name)
    hosts = [d["domain"] for d in platform.store.domains(name)]
    if platform.settings.apps_domain:
        hosts.append(f"{name}.{platform.settings.apps_domain}")
    return {**project, "live_deployment": deployment_json(live) if live else None, "domains": hosts,
            "scale": platform.store.scale(name), "internal": internal_services(platform, live) if live else []}


def placements(platform: Platform, name: str) -> list[ServicePlacement]:
    require_project(platform, name)
    try:
        return platform.engine.project_placements(name)
    except DockerError as err:
        raise Refused(f"cannot ask Docker where {name} runs: {err}", "conflict") from None


def internal_services(platform: Platform, live: Deployment) -> list[dict[str, str]]:
    """The live deployment's internal services, each with the name other projects reach it by
    (on the instance network; see runtime/docker_specs.service_networks)."""
    try:
        config = config_at(platform.repo_path(live.project), live.commit_sha)
    except (AppConfigError, gitrepo.GitRepoError):
        return []  # the deployment record still says what runs; its commit is unreadable now
    return [{"service": service.name, "name": platform.engine.internal_name(live.project, service.name)}
            for service in config.running_services.values() if service.internal]


def delete_project(platform: Platform, user: str, name: str, volumes: bool) -> list[str]:
    """Remove a project with what it owns; named volumes only when asked. Returns what went."""
    require_project(platform, name)
    if name in platform.deployer.busy_projects():
        raise Refused(f"{name} has a deployment running; wait for it or cancel it first", "conflict")
    with platform.scheduler.paused(name):  # no scheduled run starts while its things go
        removed = _remove_docker_objects(platform, name, volumes)
        gitrepo.remove_repo(platform.repo_path(name))
        # Its deployment logs too: a new project of this name starts its numbering at #1 again.
        shutil.rmtree(platform.settings.deployments_dir / name, ignore_errors=True)
        shutil.rmtree(platform.settings.cron_dir / name, ignore_errors=True)
        platform.store.delete_project(name)
    platform.store.audit(user, "projects:remove", name, "with volumes" if volumes else "volumes kept")
    platform.router.apply_routes_if_up()
    staticsites.remove_project(platform.settings.run_dir, name)  # once no route names its site
    return removed


def _remove_docker_objects(platform: Platform, name: str, volumes: bool) -> list[str]:
    engine, removed = platform.engine, []
    try:
        for service in engine.project_services(name):  # selected by their project label
            engine.remove_service(service.name)
            removed.append(f"service {service.name}")
        for role in ("cron", "release", "run", "static"):  # containers of commands still running
            if engine.remove_containers(name, role):
                removed.append(f"{role} containers")
        if (network := engine.remove_project_network(name)) is not None:  # once nothing is on it
            removed.append(f"network {network}")
        tags = [tag for tags in engine.project_images(name).values() for tag in tags]
        for tag in tags:
            engine.remove_image(tag)
            removed.append(f"image {tag}")
        if tags and (pushed_to := registry.pushed_to(platform.settings, platform.store)) is not None:
            registry.forget(engine, pushed_to, tags, [], log.warning)
        if volumes:
            for volume in engine.project_volumes(name):
                engine.remove_volume(volume)
                engine.unlabel_volume_node(volume_label(volume))
                removed.append(f"volume {volume}")
    except DockerError as err:
        raise Refused(f"could not remove {name}'s Docker objects: {err}", "conflict") from None
    return removed


def add_domain(platform: Platform, user: str, project: str, domain: str) -> str:
    """Route a domain to the project (Caddy asks for its certificate); returns it as stored."""
    require_project(platform, project)
    domain = domain.strip().lower()
    if not DOMAIN.fullmatch(domain):
        raise Refused(f"invalid domain {domain[:100]!r}: expected a host name like www.example.com", "bad_request")
    apps_domain = platform.settings.apps_domain
    if domain == platform.router.api_host or (apps_domain and (domain == apps_domain or domain.endswith("." + apps_domain))):
        # These names belong to the server itself and to every project's default address.
        raise Refused(f"{domain} is reserved by this server; use a domain of your own", "conflict")
    try:
        platform.store.add_domain(project, domain)
    except StoreError as err:
        raise Refused(str(err), "conflict") from None
    platform.store.audit(user, "domains:add", project, domain)
    platform.router.apply_routes_if_up()
    return domain


def remove_domain(platform: Platform, user: str, project: str, domain: str) -> None:
    require_project(platform, project)
    try:
        platform.store.remove_domain(project, domain.strip().lower())
    except StoreError as err:
        raise Refused(str(err), "not_found") from None
    platform.store.audit(user, "domains:remove", project, domain)
    platform.router.apply_routes_if_up()


def at_a_glance(live: Deployment | None, newest: Deployment | None) -> str:
    """A project's state in a word, what a person scanning a list needs first: deploying,
    failed (its last deploy), serving, or not deployed."""
    if newest is not None and newest.status in ACTIVE_STATUSES:
        return "deploying"
    if newest is not None and newest.status == DeploymentStatus.FAILED:
        return "failed"
    return "serving" if live is not None else "not deployed"


def glance_json(store: Store, name: str) -> dict:
    """A project's state for a follower of /events: the word, its newest and live deployments."""
    live = store.live_deployment(name)
    newest = next(iter(store.list_deployments(name, 1)), None)
    return {"project": name, "status": at_a_glance(live, newest), "live": live.number if live else None,
            "newest": {"number": newest.number, "status": newest.status, "reason": newest.reason} if newest else None}


def deployment_json(d: Deployment) -> dict:
    return {
        "number": d.number, "project": d.project, "commit": d.commit_sha, "branch": d.branch, "user": d.user,
        "source": d.source, "status": d.status, "reason": d.reason, "image": d.image,
        "rollback_of": d.rollback_of, "timings": json.loads(d.timings or "{}"),
        "created_at": d.created_at, "finished_at": d.finished_at, "delivery": d.delivery,
    }


def require_project(platform: Platform, name: str) -> dict:
    project = platform.store.get_project(name)
    if project is None:
        raise Refused(f"no project named {name!r}", "not_found")
    return project
