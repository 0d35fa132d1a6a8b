"""The one refusal type every front door understands.

`kind` says what went wrong in terms a front door can map: the REST API to a status code, the
CLI and git to a one-line message.
"""

from __future__ import annotations

KINDS = ("bad_request", "forbidden", "not_found", "conflict", "invalid_config")


class Refused(Exception):
    """A request that cannot be done as asked; the message is for the person who asked."""

    def __init__(self, message: str, kind: str = "bad_request") -> None:
        assert kind in KINDS, kind
        super().__init__(message)
        self.kind = kind
