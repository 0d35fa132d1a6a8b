"""Every route of the dashboard, handed to build_app beside the API's."""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from api.web import pages, projects, server, settings, team


def web_routes() -> list[BaseRoute]:
    return [
        Route("/", projects.projects_page, methods=["GET"]),
        Route("/sign-in", pages.sign_in, methods=["GET", "POST"]),
        Route("/sign-in/link", pages.sign_in_with_link, methods=["GET", "POST"]),
        Route("/sign-out", pages.sign_out, methods=["POST"]),
        Route("/projects/{project}", projects.project_page, methods=["GET"]),
        Route("/projects/{project}/deployments/{number:int}", projects.deployment_page, methods=["GET"]),
        Route("/projects/{project}/settings", settings.settings_page, methods=["GET"]),
        Route("/projects/{project}/logs", settings.logs_page, methods=["GET"]),
        Route("/team", team.team_page, methods=["GET"]),
        Route("/team/audit", team.audit_page, methods=["GET"]),
        Route("/server", server.server_page, methods=["GET"]),
        Mount("/static", StaticFiles(directory=pages.STATIC_DIR), name="static"),
    ]
