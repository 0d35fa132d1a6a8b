"""Reading a repo's `Procfile`, Heroku's list of process types, as Dokku and Piku read it.

Each line is `<type>: <command>`. Every type becomes a service of the app (`web` gets the
HTTP route), its command run by the image's shell; `release` is not a service but the release
command, run once per deployment before the new version starts (hooks/deployment.py).
Blank lines and lines starting with `#` are skipped. Anything else is refused, naming the line,
before the pushed ref moves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RELEASE = "release"
MAX_TEXT = 64 << 10  # a Procfile is a few lines; a huge one is a mistake or an attack
# Heroku's own rule for a process type; appconfig then holds it to a service name's rule.
LINE = re.compile(r"^([A-Za-z0-9_-]+)[ \t]*:[ \t]*(.*)$")


class ProcfileError(ValueError):
    """The Procfile is malformed; the message names the line."""


@dataclass(frozen=True)
class Process:
    name: str
    command: str
    line: int  # for messages that name where it was written


@dataclass(frozen=True)
class Procfile:
    processes: tuple[Process, ...]  # in the file's order, `release` excluded
    release: Process | None = None


def parse_procfile(text: str) -> Procfile:
    """Parse a Procfile's text; ProcfileError names the first bad line."""
    if len(text) > MAX_TEXT:
        raise ProcfileError(f"Procfile is larger than {MAX_TEXT >> 10} KiB")
    processes: list[Process] = []
    seen: dict[str, int] = {}
    release = None
    for number, raw in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "\x00" in line:
            raise ProcfileError(f"Procfile line {number}: contains a NUL byte")
        match = LINE.match(line)
        if not match:
            raise ProcfileError(f"Procfile line {number}: {_shown(line)} is not `<process type>: <command>` "
                                "(a type is letters, digits, '_' and '-')")
        name, command = match.group(1), match.group(2).strip()
        if not command:
            raise ProcfileError(f"Procfile line {number}: process type {name!r} has no command")
        if name in seen:
            raise ProcfileError(f"Procfile line {number}: process type {name!r} is already on line {seen[name]}")
        seen[name] = number
        process = Process(name, command, number)
        if name == RELEASE:
            release = process
        else:
            processes.append(process)
    if not processes and release is None:
        raise ProcfileError("Procfile names no process type; write lines like `web: ./server`")
    return Procfile(tuple(processes), release)


def _shown(line: str) -> str:
    return repr(line if len(line) <= 60 else line[:57] + "...")
