"""Disk space: how full a filesystem is, the 90% rule, and telling a full disk from other errors.

Pure apart from `usage` (one `os.statvfs`). The daemon warns when the data dir's filesystem or
Docker's (its data root) is above WARN_PERCENT full; a write that fails for lack of space is
reported to people as NO_SPACE, never as a traceback.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

WARN_PERCENT = 90.0
NO_SPACE = "no space left on the server"
# What a push needs beyond its own objects: its ref, the store's rows, the deployment's log.
PUSH_HEADROOM = 1 << 20
RESERVE_NAME = "space.reserve"  # in the data dir: see Reserve
RESERVE_SIZE = 1 << 20
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class DiskUsage:
    path: str  # the directory asked about
    total_bytes: int
    free_bytes: int  # what an unprivileged writer may still use (f_bavail)

    @property
    def used_percent(self) -> float:
        """Of the space an unprivileged writer could have, as `df` counts it (root's reserve excluded)."""
        usable = self.total_bytes
        if usable <= 0:
            return 0.0
        return round(100.0 * (usable - self.free_bytes) / usable, 1)

    def as_json(self) -> dict:
        return {"path": self.path, "used_percent": self.used_percent, "free_bytes": self.free_bytes,
                "total_bytes": self.total_bytes}


def usage(path: str | Path) -> DiskUsage:
    """The filesystem holding `path`, as statvfs sees it. Raises OSError when it cannot be read."""
    st = os.statvfs(path)
    # f_blocks - f_bfree + f_bavail: what `df` calls size (used + available), without root's reserve.
    total = (st.f_blocks - st.f_bfree + st.f_bavail) * st.f_frsize
    return DiskUsage(str(path), total, st.f_bavail * st.f_frsize)


def warning(name: str, disk: DiskUsage, limit: float = WARN_PERCENT) -> str | None:
    """One line when `disk` is above `limit` percent full, else None. `name` says whose disk it is."""
    if disk.used_percent <= limit:
        return None
    return (f"{name} ({disk.path}) is {disk.used_percent:g}% full, {human_size(disk.free_bytes)} free: "
            f"free some space (old images: docker image prune; old deployment logs)")


@dataclass(frozen=True)
class DiskReport:
    """The disks the daemon watches, by name ("data_dir", "docker"): usage, or why it is unknown."""

    disks: dict[str, DiskUsage | str]
    limit: float = WARN_PERCENT

    def warnings_by_disk(self) -> dict[str, str]:
        return {name: w for name, d in self.disks.items()
                if isinstance(d, DiskUsage) and (w := warning(DISK_NAMES.get(name, name), d, self.limit))}

    @property
    def warnings(self) -> list[str]:
        return list(self.warnings_by_disk().values())

    def as_json(self) -> dict:
        out: dict = {name: d.as_json() if isinstance(d, DiskUsage) else {"error": d} for name, d in self.disks.items()}
        out["warn_percent"] = self.limit
        out["warnings"] = self.warnings
        return out


DISK_NAMES = {"data_dir": "the data dir's disk", "docker": "Docker's disk"}


def report(paths: dict[str, str | Path | None], limit: float = WARN_PERCENT) -> DiskReport:
    """Usage of each named path; a path that is unknown (None, "") or unreadable says so instead."""
    disks: dict[str, DiskUsage | str] = {}
    for name, path in paths.items():
        if not path:
            disks[name] = "unknown"
            continue
        try:
            disks[name] = usage(path)
        except OSError as err:
            disks[name] = f"cannot read {path}: {err.strerror or err}"
    return DiskReport(disks, limit)


class Crossings:
    """Which disks were over the line at the last look, so each crossing is told once.

    `look` returns the lines to log: a warning for each disk that went over (each one over at
    the first look, at start), a note for each that came back under. A disk that cannot be read
    this time keeps what was known of it.
    """

    def __init__(self) -> None:
        self._over: set[str] = set()
        self._lock = threading.Lock()

    def look(self, now: DiskReport) -> list[tuple[str, str]]:
        """(level, line) pairs, level "warning" or "info"."""
        over = now.warnings_by_disk()
        known = {name for name, d in now.disks.items() if isinstance(d, DiskUsage)}
        with self._lock:
            went_over = [w for name, w in over.items() if name not in self._over]
            came_back = sorted((self._over & known) - set(over))
            self._over = (self._over - known) | set(over)
        return [("warning", w) for w in went_over] + [
            ("info", f"{DISK_NAMES.get(name, name)} is {now.limit:g}% full or less again") for name in came_back]


class DiskFull(Exception):
    """A write refused for lack of space, with the reason people see (see `no_space`)."""


class Reserve:
    """A file of `size` bytes kept in the data dir while there is room, deleted when the disk is
    full, so that what failed can still be recorded (a deployment settled as failed, not left
    `building`). The daemon puts it back once there is room again."""

    def __init__(self, path: Path, size: int = RESERVE_SIZE) -> None:
        self.path, self.size = path, size

    def keep(self) -> bool:
        """Write it if it is missing and the disk has room for it and a push; True if it is there."""
        if self.path.exists():
            return True
        try:
            if usage(self.path.parent).free_bytes < self.size + PUSH_HEADROOM:
                return False
            partial = self.path.with_name(self.path.name + ".partial")
            try:
                with partial.open("wb") as f:
                    f.write(os.urandom(self.size))  # real blocks: zeros could be stored sparse or compressed
                partial.rename(self.path)
            finally:
                partial.unlink(missing_ok=True)
        except OSError:
            return False
        return True

    def release(self) -> bool:
        """Delete it; True if it was there (and its room is now free)."""
        try:
            self.path.unlink()
        except OSError:
            return False
        return True


def is_disk_full(err: BaseException) -> bool:
    """Whether an error means the filesystem (or the user's quota) is full."""
    if isinstance(err, OSError):
        return err.errno in _FULL_ERRNOS
    if isinstance(err, sqlite3.Error):  # SQLITE_FULL: "database or disk is full"
        return getattr(err, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(err)
    if isinstance(err, DiskFull):
        return True
    return False


def no_space(what: str, where: str | Path | None = None) -> str:
    """The reason people see for a write refused for lack of space: `what` could not be done,
    and how much is free in the data dir (`where`, a path in it) when that can be read."""
    try:
        free = f"; {human_size(usage(where).free_bytes)} free in the data dir" if where is not None else ""
    except OSError:
        free = ""
    return f"{NO_SPACE}: {what}{free}"


def human_size(size: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.4g} {unit}"
        size /= 1024
    return f"{size:.4g} TiB"
