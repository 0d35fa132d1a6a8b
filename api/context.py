"""What a handler gets: the platform, who asked, and the request's validated parts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from hooks.platform import Platform
from runtime.store import ApiKey, Session, Store, User


@dataclass(frozen=True)
class Caller:
    user: User
    key: ApiKey
    session: Session | None = None  # a dashboard session's requests: the key it came from


@dataclass(frozen=True)
class Context:
    platform: Platform
    caller: Caller
    request: Request
    body: Any  # validated against the endpoint's body schema; None when it declares none
    query: dict[str, Any]  # declared query parameters, converted
    path: dict[str, Any]  # path parameters, validated, integers converted

    @property
    def store(self) -> Store:
        return self.platform.store

    @property
    def user(self) -> User:
        return self.caller.user

    def param(self, name: str) -> str:
        return str(self.path[name])

    def number(self, name: str) -> int:
        return int(self.path[name])
