"""The one refusal type every front door understands.

`kind` says what went wrong in terms a front door can map: the REST API to a status code, the
CLI and git to a one-line message.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    """What kind of refusal, with the HTTP status the API answers it with."""

    BAD_REQUEST = "bad_request"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    INVALID_CONFIG = "invalid_config"  # a commit whose disco.toml cannot deploy
    UNAUTHORIZED = "unauthorized"  # a dashboard sign-in with no live key or link
    TOO_MANY = "too_many"  # sign-in attempts past their rate limit

    @property
    def http_status(self) -> int:
        return {"bad_request": 400, "forbidden": 403, "not_found": 404, "conflict": 409,
                "invalid_config": 422,
                "unauthorized": 401, "too_many": 429}[self.value]


class Refused(Exception):
    """A request that cannot be done as asked; the message is for the person who asked."""

    def __init__(self, message: str, kind: str = ErrorKind.BAD_REQUEST) -> None:
        super().__init__(message)
        self.kind = ErrorKind(kind)  # an unknown kind is a bug: ValueError here


class DeployFailed(Refused):
    """Ends a deployment, or refuses to start one; the message is the reason shown and recorded."""
