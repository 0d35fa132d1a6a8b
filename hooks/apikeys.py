"""API keys: random, shown once, stored only as a SHA-256 hash, optionally expiring, revocable.

A hash (not a slow password hash) is enough: the keys carry 256 random bits, so there is
nothing to guess, and a fast lookup keeps every request cheap.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta

from hooks.errors import Refused
from runtime.store import ApiKey, Store, User, now

PREFIX = "disco_"
# Recording last use on every request would make every read a write; once a minute is plenty.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create(store: Store, actor: str, owner: str, label: str, expires_in_days: int | None = None) -> tuple[ApiKey, str]:
    """Make a key for `owner`; returns the record and the secret, which is never stored."""
    if store.get_user(owner) is None:
        raise Refused(f"no user named {owner!r}", "not_found")
    if not label.strip() or len(label) > 100:
        raise Refused("a key needs a label of 1 to 100 characters (what or where it is used)")
    secret = PREFIX + secrets.token_urlsafe(32)
    expires_at = ""
    if expires_in_days is not None:
        if not 1 <= expires_in_days <= 3650:
            raise Refused("expires_in_days must be from 1 to 3650")
        expires_at = (datetime.now(UTC) + timedelta(days=expires_in_days)).isoformat(timespec="seconds")
    with store.transaction():  # the key and its audit record commit together
        key = store.add_api_key(owner, label.strip(), digest(secret), secret[: len(PREFIX) + 4], expires_at)
        store.audit(actor, "apikeys:create", owner, f"key {key.id} ({key.label})")
    return key, secret


def verify(store: Store, secret: str) -> tuple[ApiKey, User] | None:
    """The key and its user, if the secret is a live key; None otherwise."""
    if not secret.startswith(PREFIX) or len(secret) > 200:
        return None
    found = store.api_key_by_digest(digest(secret))
    if found is None:
        return None
    key, user = found
    current = datetime.now(UTC)
    if not is_live(key, current):
        return None
    if not key.last_used_at or datetime.fromisoformat(key.last_used_at) + LAST_USED_RESOLUTION < current:
        store.touch_api_key(key.id, now())
    return key, user


def is_live(key: ApiKey, current: datetime | None = None) -> bool:
    """Neither revoked nor expired (what a session made with the key needs too)."""
    current = current or datetime.now(UTC)
    return not key.revoked_at and not (key.expires_at and datetime.fromisoformat(key.expires_at) <= current)


def revoke(store: Store, actor: User, key_id: int) -> ApiKey:
    key = store.get_api_key(key_id)
    if key is None or (not actor.is_admin and key.user != actor.name):
        raise Refused(f"no API key {key_id}", "not_found")  # others' keys are not even confirmed
    if key.revoked_at:
        raise Refused(f"API key {key_id} is already revoked", "conflict")
    with store.transaction(durable=True):  # no power loss brings a revoked key back
        store.revoke_api_key(key_id, now())
        store.audit(actor.name, "apikeys:revoke", key.user, f"key {key_id} ({key.label})")
    return key
