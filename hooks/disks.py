"""The daemon's disks, the data dir's and Docker's: how full they are for GET /meta, and a
warning in the daemon's log when one goes above 90% (runtime/disk.py holds the rule)."""

from __future__ import annotations

import logging
import time

from hooks.platform import Platform
from runtime import disk
from runtime.docker_engine import DockerError

log = logging.getLogger("disco.disk")
CHECK_SECONDS = 60.0
_crossings = disk.Crossings()  # one daemon per process: the meta endpoint and the watch share it


def check(platform: Platform, docker_root: str | None = None) -> disk.DiskReport:
    """Both disks now; a crossing of the line since the last check is logged, once.

    `docker_root` is Docker's data root when the caller already asked Docker ("" when Docker
    could not be reached); None asks Docker here.
    """
    if docker_root is None:
        try:
            docker_root = platform.engine.info().root_dir
        except DockerError:
            docker_root = ""
    platform.store.reserve.keep()  # back once there is room again
    now = disk.report({"data_dir": platform.settings.data_dir, "docker": docker_root})
    for level, line in _crossings.look(now):
        log.log(logging.WARNING if level == "warning" else logging.INFO, "%s%s",
                "warning: " if level == "warning" else "", line)
    return now


def watch(platform: Platform, every: float = CHECK_SECONDS) -> None:
    """Check the disks at start and every `every` seconds, for as long as the daemon runs."""
    while True:
        try:
            check(platform)
        except Exception:  # the watch must outlive any one bad look
            log.exception("the disk check failed")
        time.sleep(every)
