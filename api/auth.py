"""Who is calling: an API key from `Authorization: Bearer <key>` or Basic with the key as user,
or a dashboard session's cookie, which for anything but a read must come with the session's
CSRF token in `X-CSRF-Token` (what the dashboard's own scripts send; no other site can)."""

from __future__ import annotations

import base64
import binascii

from starlette.requests import Request

from api.context import Caller
from api.spec import ApiError
from hooks import apikeys, sessions
from runtime.store import Store, User

SESSION_COOKIE = "disco_session"


def cookie_name(request: Request, name: str) -> str:
    """A dashboard cookie's name: over HTTPS with the __Host- prefix, which browsers accept only
    from this very host (Secure, Path=/, no Domain), so an app on a sibling subdomain of the
    same site cannot plant one for this server."""
    return f"__Host-{name}" if is_https(request) else name


def is_https(request: Request) -> bool:
    """Served over HTTPS: directly, or by Caddy, which says so in X-Forwarded-Proto on its unix
    socket (no TCP peer); a header from a TCP peer is not believed."""
    forwarded = request.headers.get("x-forwarded-proto", "") if not request.client else ""
    return request.url.scheme == "https" or forwarded == "https"


SAFE_METHODS = ("GET", "HEAD")


def authenticate(store: Store, request: Request) -> Caller:
    header = request.headers.get("authorization", "")
    if not header and cookie_name(request, SESSION_COOKIE) in request.cookies:
        return _session_caller(store, request)
    secret = _secret_from(header)
    found = apikeys.verify(store, secret)
    if found is None:
        raise ApiError(401, "unauthorized", "invalid, revoked or expired API key")
    key, user = found
    return Caller(user, key)


def _session_caller(store: Store, request: Request) -> Caller:
    signed_in = sessions.verify(store, request.cookies[cookie_name(request, SESSION_COOKIE)])
    if signed_in is None:
        raise ApiError(401, "unauthorized", "your dashboard session has ended; sign in again")
    if request.method not in SAFE_METHODS and not sessions.csrf_matches(
            signed_in.token, request.headers.get("x-csrf-token", "")):
        raise ApiError(403, "csrf", "missing or wrong X-CSRF-Token: reload the page and try again")
    return Caller(signed_in.user, signed_in.key, signed_in.session)


def still_allowed(store: Store, caller: Caller) -> User | None:
    """The caller's user as the store has it now, if what let them in still does (their key not
    revoked or expired, their session not ended or expired, the user not removed): a long
    stream asks again when access changes, so revoking a key ends what it opened."""
    key = store.get_api_key(caller.key.id)
    if key is None or not apikeys.is_live(key):
        return None
    if caller.session is not None:
        session = store.get_session(caller.session.id)
        if session is None or session.ended_at or not sessions.not_expired(session):
            return None
    return store.get_user(caller.user.name)


def _secret_from(header: str) -> str:
    scheme, _, value = header.strip().partition(" ")
    if not scheme:
        raise ApiError(401, "unauthorized", "no API key: send 'Authorization: Bearer <key>' (or curl -u KEY:)")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise ApiError(401, "unauthorized", "malformed Basic credentials") from None
        return decoded.partition(":")[0]
    raise ApiError(401, "unauthorized", f"unsupported authorization scheme {scheme[:20]!r}: use Bearer or Basic")
