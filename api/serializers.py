"""Records as the JSON the API answers with; the CLI's local transport prints the same shapes."""

from __future__ import annotations

from runtime.store import ApiKey, Session, SSHKey, Store, User


def user_json(store: Store, user: User) -> dict:
    return {"name": user.name, "role": user.role, "projects": store.grants_of(user.name), "created_at": user.created_at}


def ssh_key_json(key: SSHKey) -> dict:
    return {"user": key.user, "type": key.key_type, "fingerprint": key.fingerprint, "comment": key.comment,
            "added_at": key.added_at}


def api_key_json(key: ApiKey) -> dict:
    return {"id": key.id, "user": key.user, "label": key.label, "prefix": key.prefix, "created_at": key.created_at,
            "last_used_at": key.last_used_at, "expires_at": key.expires_at, "revoked_at": key.revoked_at}


def session_json(session: Session, current: int | None) -> dict:
    """A session as listed: never its token or the token's hash."""
    return {"id": session.id, "user": session.user, "api_key_id": session.api_key_id,
            "created_at": session.created_at, "expires_at": session.expires_at,
            "last_seen_at": session.last_seen_at, "address": session.address, "agent": session.agent,
            "current": session.id == current}
