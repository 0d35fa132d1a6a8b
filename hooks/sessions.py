"""Dashboard sessions: a browser signs in once with an API key (or a one-time link the CLI made
with one) and then holds a random token in an HttpOnly cookie, stored here only as its hash.

A session lasts SESSION_DAYS from its last use, ends when its user signs out, when someone ends
it from the team page, or when the API key it came from is revoked or expires: keys stay the one
credential, and a session is never more than the key it was made with.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hooks import apikeys
from hooks.errors import Refused
from runtime.store import ApiKey, Session, Store, User, now

SESSION_DAYS = 7
LINK_MINUTES = 5
# Moving the expiry on every request would make every page view a write; once a minute is plenty.
TOUCH_RESOLUTION = timedelta(minutes=1)
TOKEN_PREFIX = "dses_"
AGENT_LENGTH = 120


@dataclass(frozen=True)
class SignedIn:
    session: Session
    key: ApiKey
    user: User
    token: str  # the cookie's value, kept only for the CSRF token derived from it

    @property
    def csrf(self) -> str:
        return csrf_token(self.token)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token(token: str) -> str:
    """The session's CSRF token: derived from the cookie (which no other site can read), so it
    needs no storage, differs per session, and dies with it."""
    return hmac.new(token.encode(), b"disco-csrf", hashlib.sha256).hexdigest()


def csrf_matches(token: str, sent: str) -> bool:
    return bool(sent) and hmac.compare_digest(csrf_token(token), sent)


def sign_in_with_key(store: Store, secret: str, address: str, agent: str) -> SignedIn:
    """A new session for the owner of a live API key; Refused (401) for anything else."""
    found = apikeys.verify(store, secret.strip())
    if found is None:
        raise Refused("that is not a live API key: paste a key `disco apikeys:create` made, or run "
                      "`disco dashboard` for a sign-in link", "unauthorized")
    key, user = found
    return _start(store, user, key, address, agent, "with an API key")


def make_link(store: Store, user: User, key: ApiKey) -> str:
    """A one-time sign-in token for `user`, tied to the key that asked for it (usable once,
    within LINK_MINUTES). Only its hash is stored."""
    token = secrets.token_urlsafe(32)
    expires = datetime.now(UTC) + timedelta(minutes=LINK_MINUTES)
    with store.transaction():
        store.add_sign_in_link(user.name, key.id, digest(token), expires.isoformat(timespec="seconds"))
        store.audit(user.name, "sessions:link", user.name, f"from key {key.id} ({key.label})")
    return token


def sign_in_with_link(store: Store, token: str, address: str, agent: str) -> SignedIn:
    taken = store.take_sign_in_link(digest(token.strip()), now()) if 0 < len(token) <= 100 else None
    if taken is None:
        raise Refused("this sign-in link is used, expired or wrong: links work once, for "
                      f"{LINK_MINUTES} minutes; run `disco dashboard` for a new one", "unauthorized")
    user_name, key_id = taken
    key = store.get_api_key(key_id)
    user = store.get_user(user_name)
    if key is None or user is None or not apikeys.is_live(key):
        raise Refused("the API key that made this sign-in link is revoked or expired", "unauthorized")
    return _start(store, user, key, address, agent, "with a one-time link")


def _start(store: Store, user: User, key: ApiKey, address: str, agent: str, how: str) -> SignedIn:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with store.transaction():
        session = store.add_session(user.name, key.id, digest(token), _expiry(), address[:100],
                                    agent[:AGENT_LENGTH])
        store.audit(user.name, "sessions:start", user.name, f"session {session.id} {how} (key {key.id}) from {address[:100]}")
    return SignedIn(session, key, user, token)


def verify(store: Store, token: str) -> SignedIn | None:
    """The live session holding `token`, its expiry moved on; None for anything else."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 100:
        return None
    found = store.session_by_digest(digest(token))
    if found is None:
        return None
    session, key, user = found
    current = datetime.now(UTC)
    if session.ended_at or datetime.fromisoformat(session.expires_at) <= current or not apikeys.is_live(key):
        return None
    if datetime.fromisoformat(session.last_seen_at) + TOUCH_RESOLUTION < current:
        store.touch_session(session.id, now(), _expiry())
    return SignedIn(session, key, user, token)


def end(store: Store, actor: User, session_id: int) -> Session:
    """End a session (sign-out, or from the team page): yours, or anyone's for an admin."""
    session = store.get_session(session_id)
    if session is None or (not actor.is_admin and session.user != actor.name):
        raise Refused(f"no session {session_id}", "not_found")  # others' sessions are not even confirmed
    if session.ended_at:
        raise Refused(f"session {session_id} has already ended", "conflict")
    with store.transaction(durable=True):
        store.end_session(session_id, now())
        store.audit(actor.name, "sessions:end", session.user, f"session {session_id}")
    return session


def live_sessions(store: Store, user: str | None = None) -> list[Session]:
    """Sessions that still let a browser in (expired ones and those of dead keys left out)."""
    current = datetime.now(UTC)
    keys = {key.id: key for key in store.list_api_keys(user)}
    return [s for s in store.list_sessions(user) if datetime.fromisoformat(s.expires_at) > current
            and s.api_key_id in keys and apikeys.is_live(keys[s.api_key_id], current)]


def forget_old(store: Store) -> None:
    """Drop sessions and sign-in links that ended or expired more than a day ago (kept that long
    so the team page can still say what just ended)."""
    store.forget_old_sessions((datetime.now(UTC) - timedelta(days=1)).isoformat(timespec="seconds"))


def not_expired(session: Session) -> bool:
    return datetime.fromisoformat(session.expires_at) > datetime.now(UTC)


def _expiry() -> str:
    return (datetime.now(UTC) + timedelta(days=SESSION_DAYS)).isoformat(timespec="seconds")


class SignInLimiter:
    """Sign-in attempts in a sliding window: failed ones per address (a guesser gets a 429 with
    the wait, not an oracle; people signing in again and again do not), and every one per user
    (a leaked key cannot mint sessions without end). One event loop uses it, so no lock.

    At most KEPT addresses and users are remembered, the least recently seen forgotten first,
    so a flood of addresses costs a bounded dict, never a sweep of it per attempt."""

    KEPT = 10_000

    def __init__(self, failures_per_address: int = 10, per_user: int = 20, window: float = 60.0) -> None:
        self.limits = {"address": failures_per_address, "user": per_user}
        self.window = window
        self.attempts: OrderedDict[str, deque[float]] = OrderedDict()

    def check(self, kind: str, who: str) -> None:
        """Refused (429) when `who` ("address" or "user") is at its limit."""
        seen = self._recent(f"{kind}:{who}")
        if len(seen) >= self.limits[kind]:
            wait = math.ceil(seen[0] + self.window - time.monotonic())
            raise Refused(f"too many sign-in attempts from this {kind}; try again in {wait} s", "too_many")

    def count(self, kind: str, who: str) -> None:
        key = f"{kind}:{who}"
        self.attempts[key] = self._recent(key)
        self.attempts.move_to_end(key)
        self.attempts[key].append(time.monotonic())
        while len(self.attempts) > self.KEPT:
            self.attempts.popitem(last=False)

    def take_back(self, kind: str, who: str) -> None:
        """Uncount the last attempt counted (it succeeded)."""
        seen = self.attempts.get(f"{kind}:{who}")
        if seen:
            seen.pop()

    def _recent(self, key: str) -> deque[float]:
        seen = self.attempts.get(key, deque())
        while seen and seen[0] <= time.monotonic() - self.window:
            seen.popleft()
        return seen
