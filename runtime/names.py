"""Docker object names that never collide.

Names join their parts (instance, project, service or volume) with '-', which the parts may
contain too: project `a` with service `b-web` and project `a-b` with service `web` would both
be `disco-a-b-web`. So a '-' inside a part is doubled and parts are joined by a single one:
`disco-a-b--web` and `disco-a--b-web`. No part starts with '-', so in a name every run of
hyphens of odd length holds exactly one separator, its last: `split` undoes `join`, and two
different lists of parts can never give one name. Names without a '-' in their parts read as
they always did (`disco-myapp-web`), so most existing objects keep their names.

A swarm service name is also a DNS label (63 characters at most). A longer name becomes `0`,
15 hex digits of the full name's SHA-256, '-' and as much of the name as fits: it starts with a
digit where every joined name starts with the instance's first letter, so a long name can only
meet another long one, and only if their digests do (2**-60).
"""

from __future__ import annotations

import hashlib
import re

DNS_LABEL_MAX = 63
_DIGEST_LENGTH = 15


def join(*parts: str) -> str:
    if any(not part or part.startswith("-") for part in parts):
        raise ValueError(f"name parts must be non-empty and not start with '-': {parts!r}")
    return "-".join(part.replace("-", "--") for part in parts)


def split(name: str) -> list[str]:
    """The parts `join` made `name` from."""
    parts, current = [], []
    for piece in re.split(r"(-+)", name):
        if not piece.startswith("-"):
            current.append(piece)
            continue
        current.append("-" * (len(piece) // 2))
        if len(piece) % 2:  # the last hyphen of an odd run separates two parts
            parts.append("".join(current))
            current = []
    parts.append("".join(current))
    return parts


def dns_label(name: str) -> str:
    """`name` itself if it fits a DNS label, else a prefix of it and a digest of all of it."""
    if len(name) <= DNS_LABEL_MAX:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:_DIGEST_LENGTH]
    return f"0{digest}-{name[:DNS_LABEL_MAX - _DIGEST_LENGTH - 2]}".rstrip("-")


def legacy(*parts: str) -> str:
    """How names were made before `join` (parts joined by '-' as they are): what objects made
    by earlier versions are still called, until a deploy replaces them."""
    return "-".join(parts)
