"""The dashboard's server page: Disco's version, Docker's and swarm's state, the proxy's, the
disks with their warnings (what GET /meta says, from the same hook), and Docker's disk used by
each project's images and volumes.

Any signed-in user may look: a deployer sees the server's state as `disco meta` shows it to
them, and the disk rows of their own projects only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response

from api.spec import VERSION
from api.web.pages import page, platform_of, signed_in_page
from api.web.projects import kept
from hooks import operations
from hooks.policy import visible_projects
from hooks.sessions import SignedIn
from runtime.disk import human_size
from runtime.docker_engine import DiskUse, ProjectDisk

T = TypeVar("T")
STATE_FRESH = 1.0  # seconds Docker's and the proxy's state is reused for, as GET /meta does
STATE_OLDEST = 15.0  # an older one is asked for again before the page answers (a 20-60 ms Docker call)
DISK_FRESH = 30.0  # Docker's df walks every volume: seconds on a full server, so asked in the background


async def measured(request: Request, name: str, fresh: float, ask: Callable[[], T],
                   oldest: float = math.inf) -> tuple[T | None, str, str]:
    """`ask()`'s answer kept as `Kept` keeps it (api/web/projects.py), with when it was asked
    (ISO time, shown on the page), and the error text if it failed. One older than `oldest`
    seconds is not shown: the page waits for a new one instead."""
    def timed() -> tuple[float, T]:
        return time.time(), ask()

    answers = kept(request, name, fresh)
    found, error = await answers.get("", timed)
    if found is not None and time.time() - found[0] > oldest:
        answers.forget("")
        found, error = await answers.get("", timed)
    if found is None:
        return None, "", error
    return found[1], datetime.fromtimestamp(found[0], UTC).isoformat(timespec="seconds"), error


def rows_for(disk: DiskUse, visible: list[str], admin: bool) -> list[tuple[ProjectDisk, bool]]:
    """The disk rows this user may see, each with whether its project still exists: an admin
    sees every row (a removed project's leftovers too), a deployer their projects' only."""
    known = set(visible)
    return [(row, row.project in known) for row in disk.projects if admin or row.project in known]


@signed_in_page
async def server_page(request: Request, who: SignedIn) -> Response:
    platform = platform_of(request)
    state, state_at, state_error = await measured(request, "server_page_state", STATE_FRESH,
                                                  lambda: operations.server_state(platform), STATE_OLDEST)
    disk, disk_at, disk_error = await measured(request, "disk_use_kept", DISK_FRESH, platform.engine.disk_use)
    visible = visible_projects(platform.store, who.user)
    rows = rows_for(disk, visible, who.user.is_admin) if disk else []
    settings = platform.settings
    return page("server.html", request, who, version=VERSION, settings=settings, state=state or {},
                state_at=state_at, state_error=state_error, disk=disk, disk_at=disk_at, disk_error=disk_error,
                rows=rows, size=human_size, disk_fresh=int(DISK_FRESH),
                totals={field: sum(getattr(r, field) for r, _ in rows)
                        for field in ("images", "image_bytes", "unique_bytes", "volumes", "volume_bytes")})
