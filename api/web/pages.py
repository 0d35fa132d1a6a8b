"""The dashboard's plumbing: templates, who is signed in, the headers every page carries, and
signing in and out. The pages themselves are in the modules beside this one.

Pages are rendered here from the same hooks the API calls; what a page changes, its script asks
of the REST API (api/auth.py takes the session cookie with its CSRF token), so every rule and
every audit record stays in one place.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from api.auth import SESSION_COOKIE, cookie_name, is_https
from hooks import sessions
from hooks.errors import Refused
from hooks.platform import Platform
from hooks.sessions import SignedIn, SignInLimiter
from runtime.docker_engine import DockerError
from runtime.store import Store

if TYPE_CHECKING:
    import jinja2

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
SIGN_IN_COOKIE = "disco_signin"  # the sign-in form's CSRF token, before there is a session

# No inline script or style, nothing from elsewhere, never framed: a build log that prints
# markup could not run it even if some escaping were missed.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

PageHandler = Callable[[Request, SignedIn], Awaitable[Response]]


def platform_of(request: Request) -> Platform:
    return request.app.state.platform


@cache
def templates() -> jinja2.Environment:
    """The pages' templates, autoescaped; Jinja2 is imported at the first page, not at start:
    a daemon nobody opens the dashboard of does not carry it (issue 15's idle memory)."""
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def page(template: str, request: Request, who: SignedIn | None, status: int = 200, **values: Any) -> HTMLResponse:
    body = templates().get_template(template).render(who=who, csrf=who.csrf if who else "", path=request.url.path,
                                                   **values)
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


def signed_in_page(handler: PageHandler) -> Callable[[Request], Awaitable[Response]]:
    """A page for a signed-in user: others go to the sign-in page and come back after.
    A refusal or Docker being down shows as a page saying so, never a stack trace."""
    async def route(request: Request) -> Response:
        who = current_session(request)
        if who is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/sign-in?next={quote(target)}", status_code=303)
        try:
            response = await handler(request, who)
            keep_cookie(request, response, who)  # the expiry slides in the browser too
            return response
        except Refused as err:
            return page("error.html", request, who, status=err.kind.http_status, message=str(err))
        except DockerError as err:
            return page("error.html", request, who, status=503, message=f"Docker is not reachable: {err}")
    return route


def current_session(request: Request) -> SignedIn | None:
    token = request.cookies.get(cookie_name(request, SESSION_COOKIE), "")
    return sessions.verify(platform_of(request).store, token) if token else None


def client_address(request: Request) -> str:
    """Who is asking: Caddy's X-Forwarded-For when it came through Caddy's socket (no TCP peer),
    else the TCP peer. A header from a TCP peer is not believed: anyone can send one."""
    peer = request.client.host if request.client else ""
    if not peer:
        return request.headers.get("x-forwarded-for", "").split(",")[0].strip()[:100] or "unknown"
    return peer


def local_target(raw: str) -> str:
    """Where to go after signing in: a path on this server only (never `//elsewhere`)."""
    return raw if raw.startswith("/") and not raw.startswith("//") and "\\" not in raw and len(raw) < 500 else "/"


# -- signing in and out ----------------------------------------------------------------------

async def sign_in(request: Request) -> Response:
    """GET: the form (API key). POST: exchange the key for a session."""
    next_path = local_target(request.query_params.get("next", "/"))
    if request.method in ("GET", "HEAD"):
        if current_session(request) is not None:
            return RedirectResponse(next_path, status_code=303)
        return _sign_in_form(request, "sign_in.html", next_path)
    form = await small_form(request)
    if not _sign_in_csrf_ok(request, str(form.get("csrf", ""))):
        return _sign_in_form(request, "sign_in.html", next_path, "The form expired; try again.", 403)
    try:
        who = await _signed_in_by(request, sessions.sign_in_with_key, str(form.get("key", ""))[:300])
    except Refused as err:
        return _sign_in_form(request, "sign_in.html", next_path, str(err), err.kind.http_status)
    return _signed_in_redirect(request, who, next_path)


async def sign_in_with_link(request: Request) -> Response:
    """GET: a page whose script posts the token from the address's fragment (never sent to a
    server). POST: exchange the one-time token for a session."""
    if request.method in ("GET", "HEAD"):
        # Signed in already: say as whom, and sign in with the link only if asked (a click on
        # the page): a link someone else made must not quietly switch this browser to them.
        who = current_session(request)
        return _sign_in_form(request, "sign_in_link.html", "/", signed_in_as=who.user.name if who else "")
    form = await small_form(request)
    if not _sign_in_csrf_ok(request, str(form.get("csrf", ""))):
        return _sign_in_form(request, "sign_in_link.html", "/", "The form expired; try again.", 403)
    try:
        who = await _signed_in_by(request, sessions.sign_in_with_link, str(form.get("token", ""))[:200])
    except Refused as err:
        return _sign_in_form(request, "sign_in_link.html", "/", str(err), err.kind.http_status)
    return _signed_in_redirect(request, who, "/")


async def sign_out(request: Request) -> Response:
    who = current_session(request)
    if who is not None:
        form = await small_form(request)
        if not sessions.csrf_matches(who.token, str(form.get("csrf", ""))):
            return page("error.html", request, who, status=403, message="The form expired; reload and try again.")
        await run_in_threadpool(sessions.end, platform_of(request).store, who.user, who.session.id)
    response = RedirectResponse("/sign-in", status_code=303)
    response.delete_cookie(cookie_name(request, SESSION_COOKIE), path="/", secure=is_https(request), httponly=True,
                           samesite="strict")
    return response


FORM_LIMIT = 4096  # a sign-in or sign-out form is a few short fields


async def small_form(request: Request) -> dict[str, str]:
    """An urlencoded form of a few short fields (sign-in, sign-out); anything larger or of
    another type reads as empty, which every caller refuses. Parsed here: python-multipart
    would be a dependency for three fields."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return {}
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > FORM_LIMIT:
            return {}
    try:
        return dict(parse_qsl(raw.decode(), max_num_fields=5))
    except (UnicodeDecodeError, ValueError):
        return {}


async def _signed_in_by(request: Request, sign_in: Callable[[Store, str, str, str], SignedIn], secret: str) -> SignedIn:
    """A session from `sign_in`, within the limits: failures per address, sign-ins per user.
    The attempt counts before the key is looked up (a burst of guesses all waiting on the
    lookup would otherwise all pass the check), and is taken back once it succeeded."""
    limiter, address = _limiter(request), client_address(request)
    limiter.check("address", address)
    limiter.count("address", address)
    who = await run_in_threadpool(sign_in, platform_of(request).store, secret, address,
                                  request.headers.get("user-agent", ""))
    limiter.take_back("address", address)
    try:
        limiter.check("user", who.user.name)
    except Refused:
        await run_in_threadpool(sessions.end, platform_of(request).store, who.user, who.session.id)
        raise
    limiter.count("user", who.user.name)
    return who


def _limiter(request: Request) -> SignInLimiter:
    state = request.app.state
    if not hasattr(state, "sign_in_limiter"):
        state.sign_in_limiter = SignInLimiter()
    return state.sign_in_limiter


def _sign_in_form(request: Request, template: str, next_path: str, error: str = "", status: int = 200,
                  signed_in_as: str = "") -> Response:
    """The form with a fresh double-submit token: the same random value in a cookie and a field,
    which a page on another site can neither read nor set."""
    token = secrets.token_urlsafe(24)
    response = page(template, request, None, status=status, next=next_path, error=error, sign_in_csrf=token,
                    signed_in_as=signed_in_as)
    response.set_cookie(cookie_name(request, SIGN_IN_COOKIE), token, max_age=3600, path="/", secure=is_https(request),
                        httponly=True, samesite="strict")
    return response


def _sign_in_csrf_ok(request: Request, sent: str) -> bool:
    kept = request.cookies.get(cookie_name(request, SIGN_IN_COOKIE), "")
    return bool(kept) and secrets.compare_digest(kept, sent)


def keep_cookie(request: Request, response: Response, who: SignedIn) -> None:
    """The session's cookie, for SESSION_DAYS from now (the server's expiry slides the same way)."""
    response.set_cookie(cookie_name(request, SESSION_COOKIE), who.token, max_age=sessions.SESSION_DAYS * 86400, path="/",
                        secure=is_https(request), httponly=True, samesite="strict")


def _signed_in_redirect(request: Request, who: SignedIn, next_path: str) -> Response:
    replaced = current_session(request)
    if replaced is not None and replaced.session.id != who.session.id:  # its cookie is overwritten: end it
        sessions.end(platform_of(request).store, replaced.user, replaced.session.id)
    response = RedirectResponse(next_path, status_code=303)
    keep_cookie(request, response, who)
    response.delete_cookie(cookie_name(request, SIGN_IN_COOKIE), path="/", secure=is_https(request))
    return response
