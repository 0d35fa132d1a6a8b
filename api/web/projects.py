"""The dashboard's project pages: every project at a glance, one project's deployments and
actions, and one deployment's output."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from api.web.pages import page, platform_of, signed_in_page
from hooks.errors import Refused
from hooks.platform import Platform
from hooks.policy import Access, authorize, check_project_name, visible_projects
from hooks.sessions import SignedIn
from runtime import gitrepo
from runtime.docker_engine import DockerError, ServiceHealth
from runtime.store import ACTIVE_STATUSES, WENT_LIVE, Deployment, DeploymentStatus

HEALTH_FRESH = 2.0  # seconds swarm's task counts are reused for: one Docker call serves every page
HISTORY = 50  # deployments listed on a project's page


@dataclass(frozen=True)
class DeploymentRow:
    record: Deployment
    subject: str  # the commit message's first line
    seconds: float | None  # from queued to finished; None while it runs

    @property
    def short_commit(self) -> str:
        return self.record.commit_sha[:7]


@dataclass(frozen=True)
class ProjectSummary:
    name: str
    status: str  # serving, deploying, failed, not deployed
    live: DeploymentRow | None
    newest: DeploymentRow | None
    hosts: list[str]
    services: list[ServiceHealth]


def duration(d: Deployment) -> float | None:
    if not d.finished_at:
        return None
    return (datetime.fromisoformat(d.finished_at) - datetime.fromisoformat(d.created_at)).total_seconds()


def glance(live: Deployment | None, newest: Deployment | None) -> str:
    """A project's state in a word: what a person scanning the list needs first."""
    if newest is not None and newest.status in ACTIVE_STATUSES:
        return "deploying"
    if newest is not None and newest.status == DeploymentStatus.FAILED:
        return "failed"
    return "serving" if live is not None else "not deployed"


def rows(platform: Platform, project: str, deployments: list[Deployment]) -> list[DeploymentRow]:
    subjects = gitrepo.commit_subjects(platform.repo_path(project), sorted({d.commit_sha for d in deployments}))
    return [DeploymentRow(d, subjects.get(d.commit_sha, ""), duration(d)) for d in deployments]


def summaries(platform: Platform, names: list[str], health: list[ServiceHealth]) -> list[ProjectSummary]:
    store = platform.store
    by_project: dict[str, list[ServiceHealth]] = {}
    for h in health:
        by_project.setdefault(h.project, []).append(h)
    apps_domain = platform.settings.apps_domain
    hosts: dict[str, list[str]] = {}
    for d in store.domains():
        hosts.setdefault(d["project"], []).append(d["domain"])
    found = []
    for name in names:
        live = store.live_deployment(name)
        newest = next(iter(store.list_deployments(name, 1)), None)
        shown = [d for d in (live, newest) if d is not None]
        row = {r.record.number: r for r in rows(platform, name, shown)} if shown else {}
        found.append(ProjectSummary(
            name, glance(live, newest), row.get(live.number) if live else None,
            row.get(newest.number) if newest else None,
            hosts.get(name, []) + ([f"{name}.{apps_domain}"] if apps_domain else []),
            sorted(by_project.get(name, []), key=lambda h: h.service)))
    return found


async def services_health(request: Request) -> tuple[list[ServiceHealth], str]:
    """Swarm's task counts of every project (and what went wrong asking), at most HEALTH_FRESH
    old: a stale answer is given at once while a fresh one is asked for in the background."""
    state = request.app.state
    cached: tuple[float, list[ServiceHealth], str] | None = getattr(state, "services_health", None)
    if cached is None:
        cached = await _ask_health(platform_of(request))
        state.services_health = cached
    elif time.monotonic() - cached[0] > HEALTH_FRESH and not getattr(state, "asking_health", False):
        state.asking_health = True

        async def refresh() -> None:
            try:
                state.services_health = await _ask_health(platform_of(request))
            finally:
                state.asking_health = False
        state.health_task = asyncio.ensure_future(refresh())  # kept, so it is not collected mid-way
    return cached[1], cached[2]


async def _ask_health(platform: Platform) -> tuple[float, list[ServiceHealth], str]:
    try:
        return time.monotonic(), await run_in_threadpool(platform.engine.services_health), ""
    except DockerError as err:
        return time.monotonic(), [], f"Docker is not reachable: {err}"


def readable_project(request: Request, who: SignedIn) -> str:
    """The project named in the path, if this user may see it; the same 404 otherwise."""
    name = check_project_name(request.path_params["project"])
    try:
        if authorize(platform_of(request).store, who.user, name, Access.READ):
            return name
    except Refused:
        pass
    raise Refused(f"no project named {name!r}", "not_found")


def can_deploy(request: Request, who: SignedIn, name: str) -> bool:
    try:
        return authorize(platform_of(request).store, who.user, name, Access.WRITE)
    except Refused:
        return False


# -- pages -----------------------------------------------------------------------------------

@signed_in_page
async def projects_page(request: Request, who: SignedIn) -> Response:
    platform = platform_of(request)
    health, docker_error = await services_health(request)
    names = visible_projects(platform.store, who.user)
    found = await run_in_threadpool(summaries, platform, names, health)
    return page("projects.html", request, who, projects=found, docker_error=docker_error,
                counts={s: sum(1 for p in found if p.status == s) for s in ("serving", "deploying", "failed")})


@signed_in_page
async def project_page(request: Request, who: SignedIn) -> Response:
    platform = platform_of(request)
    name = readable_project(request, who)
    health, docker_error = await services_health(request)
    history = platform.store.list_deployments(name, HISTORY)
    summary, listed = await run_in_threadpool(lambda: (summaries(platform, [name], health)[0],
                                                      rows(platform, name, history)))
    live = summary.live.record.number if summary.live else None
    return page("project.html", request, who, project=summary, deployments=listed, docker_error=docker_error,
                may_deploy=can_deploy(request, who, name), active=[r for r in listed if r.record.status in ACTIVE_STATUSES],
                rollback_targets={r.record.number for r in listed if r.record.status in WENT_LIVE and r.record.number != live},
                deploy_branch=(platform.store.get_project(name) or {}).get("deploy_branch") or "main")


@signed_in_page
async def deployment_page(request: Request, who: SignedIn) -> Response:
    platform = platform_of(request)
    name = readable_project(request, who)
    number = request.path_params["number"]
    found = platform.store.get_deployment(name, number)
    if found is None:
        raise Refused(f"{name} has no deployment #{number}", "not_found")
    row = (await run_in_threadpool(rows, platform, name, [found]))[0]
    return page("deployment.html", request, who, project=name, row=row, may_deploy=can_deploy(request, who, name),
                running=found.status in ACTIVE_STATUSES)
