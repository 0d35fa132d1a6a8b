"""How the CLI prints: JSON for scripts (--json), aligned tables and lines for people."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

Row = Callable[[Any], list[Any]]


def show(args: argparse.Namespace, data: Any, headers: list[str] | None = None, row: Row | None = None) -> None:
    """JSON for scripts (--json, or when there is no table), a table for people."""
    if getattr(args, "json", False) or headers is None or row is None:
        print(json.dumps(data, indent=2))
        return
    print_table(headers, [row(item) for item in data])


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    for line in [headers, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip())


# Tables shared by the commands that list the same things.
USERS = (["NAME", "ROLE", "PROJECTS", "CREATED"],
         lambda u: [u["name"], u["role"], "(all)" if u["role"] == "admin" else ",".join(u["projects"]) or "-",
                    u["created_at"]])
SSH_KEYS = (["USER", "TYPE", "FINGERPRINT", "COMMENT", "ADDED"],
            lambda k: [k["user"], k["type"], k["fingerprint"], k["comment"] or "-", k["added_at"]])
