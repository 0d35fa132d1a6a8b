"""Users and SSH keys, through one interface with two transports: the local store of a data dir
(on the server, `--data-dir` or `DISCO_DATA_DIR`) or the REST API of the logged-in server.

Both answer with the API's JSON shapes (api/serializers.py), so the commands print one way.
"""

from __future__ import annotations

import getpass
from typing import Protocol

from api.serializers import ssh_key_json, user_json
from cli.client import ApiClient
from hooks import team
from runtime.store import Store


class TeamBackend(Protocol):
    def users(self) -> list[dict]: ...
    def add_user(self, name: str, role: str) -> dict: ...
    def remove_user(self, name: str) -> None: ...
    def grant(self, name: str, project: str) -> None: ...
    def revoke(self, name: str, project: str) -> None: ...
    def keys(self, user: str | None) -> list[dict]: ...
    def add_key(self, user: str, key_line: str) -> dict: ...
    def remove_key(self, fingerprint: str) -> dict: ...


class LocalTeam:
    """Acts on the store directly, recorded in the audit log as the shell user."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.actor = f"shell:{getpass.getuser()}"

    def users(self) -> list[dict]:
        return [user_json(self.store, u) for u in self.store.list_users()]

    def add_user(self, name: str, role: str) -> dict:
        return user_json(self.store, team.add_user(self.store, self.actor, name, role))

    def remove_user(self, name: str) -> None:
        team.remove_user(self.store, self.actor, name)

    def grant(self, name: str, project: str) -> None:
        team.grant(self.store, self.actor, name, project)

    def revoke(self, name: str, project: str) -> None:
        team.revoke(self.store, self.actor, name, project)

    def keys(self, user: str | None) -> list[dict]:
        return [ssh_key_json(k) for k in self.store.list_ssh_keys(user)]

    def add_key(self, user: str, key_line: str) -> dict:
        return ssh_key_json(team.add_ssh_key(self.store, self.actor, user, key_line))

    def remove_key(self, fingerprint: str) -> dict:
        return ssh_key_json(team.remove_ssh_key(self.store, self.actor, fingerprint))


class RemoteTeam:
    """The same through the REST API, as the API key's user."""

    def __init__(self, client: ApiClient) -> None:
        self.client = client

    def users(self) -> list[dict]:
        return list(self.client.get("/users"))

    def add_user(self, name: str, role: str) -> dict:
        return dict(self.client.post("/users", {"name": name, "role": role}))

    def remove_user(self, name: str) -> None:
        self.client.delete(f"/users/{name}")

    def grant(self, name: str, project: str) -> None:
        self.client.post(f"/users/{name}/grants", {"project": project})

    def revoke(self, name: str, project: str) -> None:
        self.client.delete(f"/users/{name}/grants/{project}")

    def keys(self, user: str | None) -> list[dict]:
        return list(self.client.get("/ssh-keys", user=user))

    def add_key(self, user: str, key_line: str) -> dict:
        return dict(self.client.post("/ssh-keys", {"public_key": key_line, "user": user}))

    def remove_key(self, fingerprint: str) -> dict:
        return dict(self.client.delete("/ssh-keys", fingerprint=fingerprint))
