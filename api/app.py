"""The REST API: a Starlette app over the endpoint declarations in api/endpoints.py.

Every request is authenticated with an API key (Bearer, or Basic with the key as user name),
every body and query is validated against its declared schema, and every error leaves as
`{"error": {"code", "message"}}` with a fitting status. Bad input never becomes a 500.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from api.auth import authenticate
from api.context import Context
from api.spec import (
    ApiError,
    Endpoint,
    bad_request,
    openapi_document,
    path_params,
    query_params,
    validate,
)
from api.streams import UserStreams
from api.web.routes import web_routes
from hooks import github, github_app
from hooks.errors import Refused
from hooks.platform import Platform
from runtime.docker_engine import DockerError
from runtime.secretbox import SecretError

MAX_BODY = 1 << 20  # JSON bodies are small; a larger one is a mistake or an attack
WEBHOOK_READERS = 4  # unproven bodies read at once for one project; beyond them a 503 at once, unread
WEBHOOK_READERS_IN_ALL = 16  # and for all projects together
WEBHOOK_READ_SECONDS = 10  # GitHub wants its answer within 10 s; a slower sender loses its slot
WEBHOOK_IN_MEMORY = 1 << 20  # a body past this is spooled to disk while it is unproven


class WebhookReaders:
    """How many unproven webhook bodies are being read, per project and in all, taken without
    waiting (one event loop: no lock). Per project, so a sender flooding one project's hook
    (its name is often public) cannot turn away every other project's deliveries."""

    def __init__(self, per_project: int, in_all: int) -> None:
        self.per_project, self.in_all = per_project, in_all
        self.reading: dict[str, int] = {}

    def take(self, project: str, share: int | None = None) -> bool:
        if self.reading.get(project, 0) >= (share or self.per_project) or sum(self.reading.values()) >= self.in_all:
            return False
        self.reading[project] = self.reading.get(project, 0) + 1
        return True

    def give_back(self, project: str) -> None:
        left = self.reading.get(project, 1) - 1
        if left > 0:
            self.reading[project] = left
        else:
            self.reading.pop(project, None)


def build_app(platform: Platform, endpoints: list[Endpoint]) -> Starlette:
    document = openapi_document(endpoints)

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    routes: list[BaseRoute] = [
        Route("/api/v1/openapi.json", openapi, methods=["GET"]),
        # Before the project's route, which would take "app" for a project name.
        Route("/webhooks/github/app", _secrets_kept(_github_app_webhook), methods=["POST"]),
        Route("/webhooks/github/{project}", _secrets_kept(_github_webhook), methods=["POST"]),
        Route("/github/app/new", _secrets_kept(_github_app_new), methods=["GET"]),
        Route("/github/app/created", _secrets_kept(_github_app_created), methods=["GET"]),
    ]
    by_path: dict[str, list[Endpoint]] = {}
    for ep in endpoints:
        by_path.setdefault(ep.path, []).append(ep)
    for path, eps in by_path.items():
        routes.append(Route(f"/api/v1{path}", _dispatcher(eps), methods=[e.method for e in eps]))
    routes.extend(web_routes())
    app = Starlette(routes=routes, exception_handlers={404: _not_found, 405: _not_allowed})
    app.state.platform = platform
    app.state.webhook_readers = WebhookReaders(WEBHOOK_READERS, WEBHOOK_READERS_IN_ALL)
    app.state.streams = UserStreams(platform.settings.max_streams)
    app.state.event_streams = UserStreams(platform.settings.max_streams * 2)  # dashboard tabs' /events
    return app


def _secrets_kept(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """A route that reads sealed secrets answers 503, not 500, when they cannot be opened."""
    async def route(request: Request) -> Response:
        try:
            return await handler(request)
        except SecretError as err:
            return error_response(503, "secrets_unavailable", str(err))
    return route


async def _github_webhook(request: Request) -> Response:
    """GitHub's call for a project linked by a webhook: no API key, the signature is the auth."""
    platform: Platform = request.app.state.platform
    project = request.path_params["project"]
    headers = {k.lower(): v for k, v in request.headers.items()}
    checked = github.check_headers(platform, project, headers)
    if isinstance(checked, github.WebhookReply):
        return JSONResponse(checked.body, status_code=checked.status)
    proven = await _proven_body(request, project, checked["secret"], headers)
    if isinstance(proven, Response):
        return proven
    reply = await run_in_threadpool(github.handle_delivery, platform, project, headers, proven)
    return JSONResponse(reply.body, status_code=reply.status)


async def _github_app_webhook(request: Request) -> Response:
    """The GitHub App's deliveries, signed with the App's webhook secret."""
    platform: Platform = request.app.state.platform
    headers = {k.lower(): v for k, v in request.headers.items()}
    checked = await run_in_threadpool(github_app.check_headers, platform, headers)
    if isinstance(checked, github.WebhookReply):
        return JSONResponse(checked.body, status_code=checked.status)
    # GitHub does not redeliver by itself: the App's deliveries may use every reader slot.
    proven = await _proven_body(request, "(github app)", checked["webhook_secret"], headers, WEBHOOK_READERS_IN_ALL)
    if isinstance(proven, Response):
        return proven
    reply = await run_in_threadpool(github_app.handle_delivery, platform, headers, proven)
    return JSONResponse(reply.body, status_code=reply.status)


async def _proven_body(request: Request, reader: str, secret: str, headers: dict[str, str],
                       share: int = WEBHOOK_READERS) -> bytes | Response:
    """The body of a delivery whose signature matches `secret`, or the answer refusing it.

    An unproven delivery costs nothing: its headers were checked before a byte of its body is
    read, at most `share` bodies per `reader` (WEBHOOK_READERS_IN_ALL in all) are read
    at once (the next gets a 503 at once), each within WEBHOOK_READ_SECONDS and 25 MB, into an
    HMAC and a spool file that keeps only 1 MB in memory. Only a proven body is held.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdecimal() and (len(declared) > 12 or int(declared) > github.MAX_BODY):
        return error_response(413, "too_large", "webhook body is larger than 25 MB")
    readers: WebhookReaders = request.app.state.webhook_readers
    if not readers.take(reader, share):
        response = error_response(503, "busy", "too many webhook deliveries are being read; try again")
        response.headers["Retry-After"] = "1"
        return response
    try:
        mac = github.signer(secret)
        with tempfile.SpooledTemporaryFile(max_size=WEBHOOK_IN_MEMORY) as spool:
            size = 0
            with anyio.move_on_after(WEBHOOK_READ_SECONDS) as timer:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > github.MAX_BODY:
                        return error_response(413, "too_large", "webhook body is larger than 25 MB")
                    mac.update(chunk)
                    spool.write(chunk)
            if timer.cancel_called:
                return error_response(408, "timeout", f"the body did not arrive within {WEBHOOK_READ_SECONDS} s")
            if not github.signed(mac, headers):
                reply = github.unsigned()
                return JSONResponse(reply.body, status_code=reply.status)
            spool.seek(0)
            return spool.read()
    finally:
        readers.give_back(reader)


async def _github_app_new(request: Request) -> Response:
    """The one-time link of `disco github:app:create`: posts the App's manifest to GitHub."""
    platform: Platform = request.app.state.platform
    page = await run_in_threadpool(github_app.creation_page, platform, request.query_params.get("flow", "")[:100],
                                   request.query_params.get("token", "")[:200], request.url.scheme == "https"
                                   or request.headers.get("x-forwarded-proto") == "https")
    return _page(page)


async def _github_app_created(request: Request) -> Response:
    """GitHub's redirect back with the code of the new App."""
    platform: Platform = request.app.state.platform
    page = await run_in_threadpool(github_app.finish_creation, platform, request.query_params.get("code", "")[:200],
                                   request.query_params.get("state", "")[:200],
                                   request.cookies.get(github_app.COOKIE, "")[:200])
    return _page(page)


def _page(page: github_app.Page) -> Response:
    response = HTMLResponse(page.body, status_code=page.status, headers=page.headers)
    if page.location:
        response.headers["Location"] = page.location
    return response


def _dispatcher(eps: list[Endpoint]) -> Callable[[Request], Awaitable[Response]]:
    by_method = {ep.method: ep for ep in eps}

    async def dispatch(request: Request) -> Response:
        ep = by_method["GET" if request.method == "HEAD" else request.method]  # Starlette adds HEAD to a GET
        platform: Platform = request.app.state.platform
        try:
            caller = authenticate(platform.store, request)
            if ep.admin_only and not caller.user.is_admin:
                raise ApiError(403, "forbidden", "only admins may do this")
            path = path_params(request, ep.path_params)
            query = query_params(request, ep.query)
            body = await _body(request, ep)
            response = await ep.handler(Context(platform, caller, request, body, query, path))
            if caller.session is not None:  # a browser's: no answer (an env value) kept in its cache
                response.headers["Cache-Control"] = "no-store"
            return response
        except ApiError as err:
            return error_response(err.status, err.code, err.message)
        except Refused as err:
            return error_response(err.kind.http_status, err.kind, str(err))
        except DockerError as err:  # Docker down or refusing: the server's trouble, said plainly
            return error_response(503, "docker_unavailable", str(err))
        except SecretError as err:  # the data dir lost its secrets.key: said plainly, never a 500
            return error_response(503, "secrets_unavailable", str(err))

    return dispatch


async def _body(request: Request, ep: Endpoint) -> Any:
    if ep.body is None:
        return None
    declared = request.headers.get("content-length")
    if declared and declared.isdecimal() and int(declared) > MAX_BODY:
        raise ApiError(413, "too_large", f"request body is larger than {MAX_BODY} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise ApiError(413, "too_large", f"request body is larger than {MAX_BODY} bytes")
    if not raw:
        raise bad_request("a JSON body is required")
    try:
        body = json.loads(raw)
    except RecursionError:
        raise bad_request("the body is nested too deeply to be valid input here") from None
    except ValueError as err:  # bad JSON, bad UTF-8, or an integer of more digits than Python parses
        raise bad_request(f"the body is not valid JSON: {err}") from None
    if not github.is_text(body):  # a lone surrogate would pass validation and fail in the store
        raise bad_request("the body holds a lone UTF-16 surrogate (like \\ud800), which is not text")
    validate(body, ep.body)
    return body


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


async def _not_found(request: Request, exc: Exception) -> Response:
    return error_response(404, "not_found", f"no such endpoint: {request.method} {request.url.path}")


async def _not_allowed(request: Request, exc: Exception) -> Response:
    response = error_response(405, "method_not_allowed", f"{request.method} is not allowed on {request.url.path}")
    allowed = (getattr(exc, "headers", None) or {}).get("Allow")
    if allowed:
        response.headers["Allow"] = allowed  # RFC 9110: a 405 lists what is allowed
    return response
