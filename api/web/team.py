"""The dashboard's team pages: users with their roles and grants, SSH keys, API keys and
dashboard sessions (an admin sees everyone's, a deployer their own), and the audit log (admins).

What these pages change, their forms ask of the REST API (/users, /ssh-keys, /api-keys,
/sessions), so the rules and the audit records stay in hooks/ with the API's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from api.web.pages import page, platform_of, signed_in_page
from hooks import sessions
from hooks.errors import Refused
from hooks.sessions import SignedIn
from runtime.store import ApiKey, Session, SSHKey, Store, User

AUDIT_LIMITS = (50, 100, 200, 500, 1000)  # the audit page's choice of how many records
FILTER_LENGTH = 100  # a filter longer than any user name, action or target matches nothing anyway


@dataclass(frozen=True)
class Member:
    user: User
    grants: list[str]


@dataclass(frozen=True)
class KeyRow:
    key: ApiKey
    state: str  # live, expired, revoked
    sessions: int  # live dashboard sessions signed in with it: they end when it is revoked


@dataclass(frozen=True)
class SessionRow:
    session: Session
    key_label: str  # of the API key it was signed in with
    current: bool  # the session this page is shown in


def key_state(key: ApiKey, current: datetime) -> str:
    if key.revoked_at:
        return "revoked"
    if key.expires_at and datetime.fromisoformat(key.expires_at) <= current:
        return "expired"
    return "live"


def team_of(store: Store, who: SignedIn) -> dict:
    """Everything the team page lists: everyone's for an admin, your own for a deployer."""
    mine = None if who.user.is_admin else who.user.name
    users = store.list_users() if mine is None else [who.user]
    keys = sorted(store.list_api_keys(mine), key=lambda k: (k.revoked_at != "", -k.id))  # live first, newest first
    live = sessions.live_sessions(store, mine)
    current = datetime.now(UTC)
    per_key: dict[int, int] = {}
    for s in live:
        per_key[s.api_key_id] = per_key.get(s.api_key_id, 0) + 1
    labels = {k.id: k.label for k in keys}
    return {
        "members": [Member(u, store.grants_of(u.name)) for u in users],
        "ssh_keys": store.list_ssh_keys(mine),
        "api_keys": [KeyRow(k, key_state(k, current), per_key.get(k.id, 0)) for k in keys],
        "sessions": [SessionRow(s, labels.get(s.api_key_id, ""), s.id == who.session.id)
                     for s in sorted(live, key=lambda s: s.last_seen_at, reverse=True)],
        "projects": [p["name"] for p in store.list_projects()] if mine is None else [],
    }


def just_added(keys: list[SSHKey], fingerprint: str) -> SSHKey | None:
    """The key the page's script just added (its fingerprint in ?added=), if it is listed."""
    return next((k for k in keys if k.fingerprint == fingerprint), None) if fingerprint else None


@signed_in_page
async def team_page(request: Request, who: SignedIn) -> Response:
    found = team_of(platform_of(request).store, who)
    added = just_added(found["ssh_keys"], request.query_params.get("added", ""))
    return page("team.html", request, who, admin=who.user.is_admin, added=added, **found)


@signed_in_page
async def audit_page(request: Request, who: SignedIn) -> Response:
    if not who.user.is_admin:
        raise Refused("only admins may read the audit log", "forbidden")
    query = request.query_params
    filters = {name: query.get(name, "").strip()[:FILTER_LENGTH] for name in ("user", "action", "target")}
    limit = int(query["limit"]) if query.get("limit", "").isdigit() and int(query["limit"]) in AUDIT_LIMITS else 100
    store = platform_of(request).store
    records = store.audit_log(limit, filters["target"] or None, user=filters["user"] or None,
                              action=filters["action"] or None)
    return page("audit.html", request, who, records=records, filters=filters, limit=limit, limits=AUDIT_LIMITS,
                users=[u.name for u in store.list_users()])
