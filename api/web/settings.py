"""The dashboard's settings and logs of a project: env var names (values revealed on request),
domains with their certificates, replicas per service, the GitHub link; and live logs per
service. Read here from the hooks the API calls; every change is the page's script asking the
REST API, so the rules and the audit records stay there."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from api.web.pages import page, platform_of, signed_in_page
from api.web.projects import can_deploy, readable_project, services_health
from hooks import certificates, github, github_app
from hooks.platform import Platform
from hooks.sessions import SignedIn
from runtime.docker_engine import ServiceHealth

LOG_TAIL = 200  # lines a log view starts with, before following new ones
LOG_WINDOW = 5000  # lines a log view keeps in the page


@dataclass(frozen=True)
class ServiceScale:
    service: str
    wanted: int
    running: int
    recorded: bool  # wanted was set with scale (kept across deploys), else it is what the deploy asked


def scales(health: list[ServiceHealth], recorded: dict[str, int]) -> list[ServiceScale]:
    """Each running service's wanted replicas (the recorded count, else swarm's) and running tasks."""
    return [ServiceScale(h.service, recorded.get(h.service, h.desired), h.running, h.service in recorded)
            for h in sorted(health, key=lambda h: h.service)]


def github_state(platform: Platform, name: str) -> dict | None:
    """The project's GitHub link as the API shows it to readers (no secret, no token), or None."""
    if platform.store.github_link(name) is None:
        return None
    return github_app.shown_link(platform, name)


def project_services(health: list[ServiceHealth], name: str) -> list[ServiceHealth]:
    return [h for h in health if h.project == name]


@signed_in_page
async def settings_page(request: Request, who: SignedIn) -> Response:
    platform = platform_of(request)
    name = readable_project(request, who)
    health, docker_error = await services_health(request)
    domains = await run_in_threadpool(certificates.domain_statuses, platform, name)
    link = await run_in_threadpool(github_state, platform, name)
    return page("settings.html", request, who, project=name, may_deploy=can_deploy(request, who, name),
                env_names=sorted(platform.store.env(name)), domains=domains, docker_error=docker_error,
                scales=scales(project_services(health, name), platform.store.scale(name)),
                max_replicas=platform.settings.max_replicas, live=platform.store.live_deployment(name),
                github=link, app=github_app.summary(platform, who.user),
                webhook_url=f"{github.server_base_url(platform)}/webhooks/github/{name}")


@signed_in_page
async def logs_page(request: Request, who: SignedIn) -> Response:
    name = readable_project(request, who)
    health, docker_error = await services_health(request)
    services = sorted(h.service for h in project_services(health, name))
    asked = request.query_params.get("service", "")
    chosen = asked if asked in services else ("web" if "web" in services else next(iter(services), ""))
    return page("logs.html", request, who, project=name, services=services, chosen=chosen,
                docker_error=docker_error, tail=LOG_TAIL, window=LOG_WINDOW)
