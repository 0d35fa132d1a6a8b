"""The dashboard's project pages: every project at a glance, one project's deployments and
actions, and one deployment's output."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from api.spec import MAX_INT
from api.web.pages import page, platform_of, signed_in_page
from hooks.errors import Refused
from hooks.platform import Platform
from hooks.policy import Access, authorize, check_project_name, visible_projects
from hooks.sessions import SignedIn
from runtime import gitrepo
from hooks import operations
from hooks.projects import at_a_glance
from runtime.docker_engine import DockerError, ServiceHealth, ServiceUsage
from runtime.store import ACTIVE_STATUSES, WENT_LIVE, Deployment, Store

HEALTH_FRESH = 2.0  # seconds swarm's task counts are reused for: one Docker call serves every page
USAGE_FRESH = 5.0  # and a project's CPU and memory figures
T = TypeVar("T")
HISTORY = 50  # deployments listed on a project's page
FEW_PROJECTS = 5  # up to this many, a project's deployments are looked up one by one


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


SUBJECTS_KEPT = 4096
_subjects: dict[tuple[str, str], str] = {}  # (project, commit) -> subject: a commit never changes


def rows(platform: Platform, project: str, deployments: list[Deployment]) -> list[DeploymentRow]:
    """The deployments with their commits' subjects, read from the repo once per commit: the
    projects page would otherwise open a hundred repos on every view."""
    missing = sorted({d.commit_sha for d in deployments if (project, d.commit_sha) not in _subjects})
    if missing:
        found = gitrepo.commit_subjects(platform.repo_path(project), missing)
        if len(_subjects) + len(missing) > SUBJECTS_KEPT:
            _subjects.clear()
        # A commit the repo lacks (a deployment made before a restore) stays without one.
        _subjects.update({(project, sha): found.get(sha, "") for sha in missing})
    return [DeploymentRow(d, _subjects.get((project, d.commit_sha), ""), duration(d)) for d in deployments]


def latest(store: Store, names: list[str]) -> tuple[dict[str, Deployment], dict[str, Deployment]]:
    """Each project's live and newest deployment. For more than a few projects, two queries
    for all of them: two per project made the projects page run 200 with 100 projects."""
    if len(names) <= FEW_PROJECTS:
        live = {name: d for name in names if (d := store.live_deployment(name)) is not None}
        newest = {name: found[0] for name in names if (found := store.list_deployments(name, 1))}
        return live, newest
    wanted = set(names)
    return ({d.project: d for d in store.live_deployments() if d.project in wanted},
            {d.project: d for d in store.newest_deployments() if d.project in wanted})


def summaries(platform: Platform, names: list[str], health: list[ServiceHealth]) -> list[ProjectSummary]:
    store = platform.store
    by_project: dict[str, list[ServiceHealth]] = {}
    for h in health:
        by_project.setdefault(h.project, []).append(h)
    apps_domain = platform.settings.apps_domain
    hosts: dict[str, list[str]] = {}
    for d in store.domains():
        hosts.setdefault(d["project"], []).append(d["domain"])
    live_of, newest_of = latest(store, names)
    found = []
    for name in names:
        live, newest = live_of.get(name), newest_of.get(name)
        shown = [d for d in (live, newest) if d is not None]
        row = {r.record.number: r for r in rows(platform, name, shown)} if shown else {}
        found.append(ProjectSummary(
            name, at_a_glance(live, newest), row.get(live.number) if live else None,
            row.get(newest.number) if newest else None,
            hosts.get(name, []) + ([f"{name}.{apps_domain}"] if apps_domain else []),
            sorted(by_project.get(name, []), key=lambda h: h.service)))
    return found


class Kept(Generic[T]):
    """Answers from Docker kept per key and reused for `fresh` seconds; after that the kept one
    is still given at once while a fresh one is asked for in the background, so a page never
    waits on Docker except the first time. Errors are answers too (said on the page)."""

    def __init__(self, fresh: float) -> None:
        self.fresh = fresh
        self.kept: dict[str, tuple[float, T | None, str]] = {}
        self.tasks: dict[str, asyncio.Task] = {}  # held, so a refresh is not collected mid-way

    async def get(self, key: str, ask: Callable[[], T]) -> tuple[T | None, str]:
        found = self.kept.get(key)
        if found is None:
            found = self.kept[key] = await self._ask(ask)
        elif time.monotonic() - found[0] > self.fresh and key not in self.tasks:
            async def refresh() -> None:
                try:
                    self.kept[key] = await self._ask(ask)
                finally:
                    del self.tasks[key]
            self.tasks[key] = asyncio.ensure_future(refresh())
        return found[1], found[2]

    def forget(self, key: str) -> None:
        """The next get of `key` asks Docker again and waits for the answer."""
        self.kept.pop(key, None)

    @staticmethod
    async def _ask(ask: Callable[[], T]) -> tuple[float, T | None, str]:
        try:
            return time.monotonic(), await run_in_threadpool(ask), ""
        except DockerError as err:
            return time.monotonic(), None, f"Docker is not reachable: {err}"
        except Refused as err:
            return time.monotonic(), None, str(err)


def kept(request: Request, name: str, fresh: float) -> Kept:
    """The dashboard's Kept answers called `name`, in a namespace of their own (not app.state's
    attributes, which the API uses too)."""
    state = request.app.state
    if not hasattr(state, "dashboard_kept"):
        state.dashboard_kept = {}
    return state.dashboard_kept.setdefault(name, Kept(fresh))


async def services_health(request: Request) -> tuple[list[ServiceHealth], str]:
    """Swarm's task counts of every project, at most HEALTH_FRESH old (see Kept)."""
    found, error = await kept(request, "services_health", HEALTH_FRESH).get("", platform_of(request).engine.services_health)
    return found or [], error


async def project_usage(request: Request, name: str) -> tuple[list[ServiceUsage], str]:
    """CPU and memory per service of the project, at most USAGE_FRESH old (see Kept): asking
    Docker takes a second or two, which only the first look at a project waits for."""
    platform = platform_of(request)
    found, error = await kept(request, "project_usage", USAGE_FRESH).get(name, lambda: operations.usage(platform, name))
    return found or [], error


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
    usage, usage_error = await project_usage(request, name)
    from markupsafe import Markup  # here, like Jinja2 itself (api/web/pages.py templates())

    from api.web.charts import deploy_chart, usage_bars  # xml.etree only once a project is looked at
    chart = deploy_chart(history[:30], subjects={r.record.commit_sha: r.subject for r in listed},
                         link=lambda d: f"/projects/{name}/deployments/{d.number}")
    return page("project.html", request, who, project=summary, deployments=listed, docker_error=docker_error,
                chart=Markup(chart), usage=Markup(usage_bars(usage)), usage_error=usage_error,
                may_deploy=can_deploy(request, who, name), active=[r for r in listed if r.record.status in ACTIVE_STATUSES],
                rollback_targets={r.record.number for r in listed if r.record.status in WENT_LIVE and r.record.number != live},
                deploy_branch=(platform.store.get_project(name) or {}).get("deploy_branch") or "main")


@signed_in_page
async def deployment_page(request: Request, who: SignedIn) -> Response:
    platform = platform_of(request)
    name = readable_project(request, who)
    number = request.path_params["number"]
    found = platform.store.get_deployment(name, number) if number <= MAX_INT else None  # SQLite's INTEGER
    if found is None:
        raise Refused(f"{name} has no deployment #{number}", "not_found")
    row = (await run_in_threadpool(rows, platform, name, [found]))[0]
    return page("deployment.html", request, who, project=name, row=row, may_deploy=can_deploy(request, who, name),
                running=found.status in ACTIVE_STATUSES)
