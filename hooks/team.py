"""Managing the team: users, their roles and grants, their SSH keys. Every change is audited,
in the transaction that makes it (one commit, and never a change without its record); a change
that takes access away commits durably (runtime/store.py).

`actor` names who asked (a user name, or "server-shell" for the local `disco` command).
"""

from __future__ import annotations

import re

from hooks.errors import Refused
from hooks.policy import check_project_name
from runtime.sshkeys import KeyFormatError, parse_public_key
from runtime.store import SSHKey, Store, StoreError, User, now

USER_NAME = re.compile(r"[a-z][a-z0-9._-]{0,38}")


class TeamError(Refused):
    """A refused team change; the message is meant for the person who asked."""


def add_user(store: Store, actor: str, name: str, role: str) -> User:
    if not USER_NAME.fullmatch(name):
        raise TeamError(
            f"invalid user name {name[:60]!r}: use 1 to 39 characters of a-z, 0-9, '.', '_' "
            "and '-', starting with a letter"
        )
    with store.transaction():
        user = _store_call(store.add_user, name, role)
        store.audit(actor, "users:add", name, f"role={role}")
    return user


def remove_user(store: Store, actor: str, name: str) -> None:
    user = store.get_user(name)
    if user and user.is_admin and store.count_admins() == 1:
        raise TeamError(f"{name!r} is the last admin; add another admin before removing them", "conflict")
    with store.transaction(durable=True):
        _store_call(store.remove_user, name)
        store.audit(actor, "users:remove", name)


def grant(store: Store, actor: str, name: str, project: str) -> None:
    check_project_name(project)
    with store.transaction():
        _store_call(store.grant, name, project)
        store.audit(actor, "users:grant", name, f"project={project}")


def revoke(store: Store, actor: str, name: str, project: str) -> None:
    with store.transaction(durable=True):
        _store_call(store.revoke, name, project)
        store.audit(actor, "users:revoke", name, f"project={project}")


def add_ssh_key(store: Store, actor: str, user: str, key_line: str) -> SSHKey:
    try:
        parsed = parse_public_key(key_line)
    except KeyFormatError as err:
        raise TeamError(str(err)) from None  # bad_request: the key itself is malformed
    key = SSHKey(
        fingerprint=parsed.fingerprint,
        user=user,
        key_type=parsed.key_type,
        public_key=parsed.openssh,
        comment=parsed.comment,
        added_at=now(),
    )
    with store.transaction():
        _store_call(store.add_ssh_key, key)
        store.audit(actor, "keys:add", user, key.fingerprint)
    return key


def remove_ssh_key(store: Store, actor: str, fingerprint: str) -> SSHKey:
    with store.transaction(durable=True):
        key = _store_call(store.remove_ssh_key, fingerprint)
        store.audit(actor, "keys:remove", key.user, fingerprint)
    return key


def _store_call(method, *args):  # type: ignore[no-untyped-def]
    try:
        return method(*args)
    except StoreError as err:
        raise TeamError(str(err), err.kind) from None
