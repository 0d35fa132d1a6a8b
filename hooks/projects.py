"""Projects as a whole: create, describe, delete; their domains; deploying a branch or commit;
logs and one-off commands. The REST API calls these; each checks its input and audits."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator

from hooks.deploy import DeployFailed, Platform, check_service_name
from hooks.errors import Refused
from hooks.policy import check_project_name
from hooks.queue import Ticket
from runtime import gitrepo
from runtime.appconfig import AppConfigError, parse_app_config
from runtime.docker_engine import DockerError
from runtime.store import Deployment, StoreError

# A host name: dot-separated DNS labels, at least two, no trailing dot.
DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def create_project(platform: Platform, user: str, name: str) -> dict:
    check_project_name(name)
    if platform.store.get_project(name) is not None:
        raise Refused(f"project {name!r} already exists", "conflict")
    project = platform.store.add_project(name, created_by=user)
    platform.store.audit(user, "projects:create", name)
    return project


def describe(platform: Platform, name: str) -> dict:
    project = _require(platform, name)
    live = platform.store.live_deployment(name)
    hosts = [d["domain"] for d in platform.store.domains(name)]
    if platform.settings.apps_domain:
        hosts.append(f"{name}.{platform.settings.apps_domain}")
    return {**project, "live_deployment": deployment_json(live) if live else None, "domains": hosts,
            "scale": platform.store.scale(name)}


def delete_project(platform: Platform, user: str, name: str, volumes: bool) -> list[str]:
    """Remove a project with what it owns; named volumes only when asked. Returns what went."""
    _require(platform, name)
    if name in platform.queue.busy_projects():
        raise Refused(f"{name} has a deployment running; wait for it or cancel it first", "conflict")
    engine, removed = platform.engine, []
    try:
        for service in engine.project_services(name):
            engine.remove_service(service.name)
            removed.append(f"service {service.name}")
        for tag in engine.project_images(name).values():
            engine.remove_image(tag)
            removed.append(f"image {tag}")
        if volumes:
            for volume in engine.project_volumes(name):
                engine.remove_volume(volume)
                removed.append(f"volume {volume}")
    except DockerError as err:
        raise Refused(f"could not remove {name}'s Docker objects: {err}", "conflict") from None
    gitrepo.remove_repo(platform.repo_path(name))
    # Its deployment logs too: a new project of this name starts its numbering at #1 again.
    shutil.rmtree(platform.settings.deployments_dir / name, ignore_errors=True)
    platform.store.delete_project(name)
    platform.store.audit(user, "projects:remove", name, "with volumes" if volumes else "volumes kept")
    platform.apply_routes_if_up()
    return removed


def add_domain(platform: Platform, user: str, project: str, domain: str) -> None:
    _require(platform, project)
    domain = domain.strip().lower()
    if not DOMAIN.fullmatch(domain):
        raise Refused(f"invalid domain {domain[:100]!r}: expected a host name like www.example.com", "bad_request")
    apps_domain = platform.settings.apps_domain
    if domain == platform.api_host or (apps_domain and (domain == apps_domain or domain.endswith("." + apps_domain))):
        # These names belong to the server itself and to every project's default address.
        raise Refused(f"{domain} is reserved by this server; use a domain of your own", "conflict")
    try:
        platform.store.add_domain(project, domain)
    except StoreError as err:
        raise Refused(str(err), "conflict") from None
    platform.store.audit(user, "domains:add", project, domain)
    platform.apply_routes_if_up()


def remove_domain(platform: Platform, user: str, project: str, domain: str) -> None:
    _require(platform, project)
    try:
        platform.store.remove_domain(project, domain.strip().lower())
    except StoreError as err:
        raise Refused(str(err), "not_found") from None
    platform.store.audit(user, "domains:remove", project, domain)
    platform.apply_routes_if_up()


def deploy_ref(platform: Platform, user: str, project: str, branch: str | None, commit: str | None) -> Ticket:
    """Deploy the head of a branch (default: the deploy branch) or a given commit."""
    row = _require(platform, project)
    repo = platform.repo_path(project)
    if not repo.exists():
        raise Refused(f"{project} has no code yet: git push to it first", "conflict")
    branch = branch or row["deploy_branch"]
    if commit:
        if not re.fullmatch(r"[0-9a-f]{4,40}", commit):
            raise Refused(f"commit must be a hex commit id, got {commit[:60]!r}", "bad_request")
        sha = gitrepo.resolve_commit(repo, commit)
        if sha is None:
            raise Refused(f"no commit {commit} in {project}", "not_found")
    else:
        sha = gitrepo.branch_head(repo, branch)
        if sha is None:
            raise Refused(f"{project} has no branch {branch!r}", "not_found")
    text = gitrepo.read_file(repo, sha, "disco.toml")
    try:
        parse_app_config(text.decode() if text is not None else None)
    except (AppConfigError, UnicodeDecodeError) as err:
        raise Refused(f"{sha[:7]} cannot deploy: {err}", "invalid_config") from None
    return platform.enqueue(project, sha, branch, user, "api")


def logs(platform: Platform, project: str, service: str, tail: int, follow: bool) -> Iterator[str]:
    _require(platform, project)
    name = platform.engine.service_name(project, check_service_name(service))
    if platform.engine.find_service(name, project) is None:
        raise Refused(f"{project} has no running service {service!r}", "not_found")
    return platform.engine.service_logs(name, tail, follow)


def run_command(platform: Platform, user: str, project: str, command: list[str], service: str = "web"):  # type: ignore[no-untyped-def]
    """Start a one-off container of the live image with the project's env and volumes.

    Returns (container, output lines); the caller reads the lines and then the exit code.
    """
    check_service_name(service)
    live = platform.store.live_deployment(project)
    if live is None:
        raise Refused(f"{project} has no live deployment to run a command in", "conflict")
    platform.store.audit(user, "run", project, f"{len(command)} argument(s)")  # commands may hold secrets
    try:
        return platform.engine.run_oneoff(
            image=live.image,
            command=command,
            env={**platform.store.env(project), "DISCO_PROJECT": project, "DISCO_SERVICE": service,
                 "DISCO_DEPLOYMENT": str(live.number), "DISCO_COMMIT": live.commit_sha},
            mounts=[(platform.engine.volume_name(project, v), m) for v, m in _service_volumes(platform, live, service)],
            labels=platform.engine.labels(project=project, role="run"),
        )
    except DockerError as err:
        raise DeployFailed(str(err)) from None


def _service_volumes(platform: Platform, live: Deployment, service: str) -> list[tuple[str, str]]:
    text = gitrepo.read_file(platform.repo_path(live.project), live.commit_sha, "disco.toml")
    config = parse_app_config(text.decode() if text else None)
    chosen = config.services.get(service)
    return [(v.name, v.mount) for v in chosen.volumes] if chosen else []


def deployment_json(d: Deployment) -> dict:
    return {
        "number": d.number, "project": d.project, "commit": d.commit_sha, "branch": d.branch, "user": d.user,
        "source": d.source, "status": d.status, "reason": d.reason, "image": d.image,
        "rollback_of": d.rollback_of, "timings": json.loads(d.timings or "{}"),
        "created_at": d.created_at, "finished_at": d.finished_at, "delivery": d.delivery,
    }


def _require(platform: Platform, name: str) -> dict:
    project = platform.store.get_project(name)
    if project is None:
        raise Refused(f"no project named {name!r}", "not_found")
    return project
