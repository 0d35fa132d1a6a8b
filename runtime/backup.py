"""Backup and restore of a data dir: one archive, made while the daemon runs.

What a server cannot be rebuilt without: the store (copied with SQLite's online backup, so it is
consistent while the daemon writes), the bare repos, the SSH host key (so clients keep trusting
the server), config.toml, the key that opens the store's sealed secrets, the build cache key,
and the deployment and scheduled-run logs. Not run/ (sockets and Caddy's generated config) and
not Docker's images and volumes (a restored server rebuilds on its next deploy; volumes hold
the apps' own data and are backed up with Docker's own tools).

A repo's refs are archived before its objects: objects are only ever added, so every ref in the
archive names objects that are in it too, even while a push lands.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import tarfile
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

FORMAT = 1
MANIFEST = "disco-backup.json"
STORE = "disco.sqlite3"
KEY_FILES = ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "config.toml", "secrets.key", "build_cache_key")
LOG_DIRS = ("deployments", "cron")
SECRET_FILES = ("ssh_host_ed25519_key", "secrets.key", "build_cache_key")
DAILY = "disco-backup-{}.tar.gz"


class BackupError(Exception):
    """A backup or restore that cannot be done; the message says why and what to do."""


@dataclass(frozen=True)
class BackupSummary:
    path: Path
    repos: int
    size: int


def write_backup(data_dir: Path, target: Path) -> BackupSummary:
    """Write the archive (0600: it holds the server's keys) atomically at `target`."""
    if not (data_dir / STORE).exists():
        raise BackupError(f"{data_dir} has no {STORE}: not a Disco data dir")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".disco-backup-", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with tempfile.TemporaryDirectory(prefix="disco-backup-") as scratch:
            store_copy = Path(scratch) / STORE
            _copy_store(data_dir / STORE, store_copy)
            repos = sorted(p for p in (data_dir / "repos").glob("*.git") if p.is_dir())
            with os.fdopen(fd, "wb") as handle, tarfile.open(fileobj=handle, mode="w:gz") as archive:
                manifest = {"format": FORMAT, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                            "repos": [p.name for p in repos]}
                _add_bytes(archive, MANIFEST, json.dumps(manifest, indent=2).encode())
                archive.add(store_copy, STORE)
                for name in KEY_FILES:
                    if (data_dir / name).is_file():
                        archive.add(data_dir / name, name)
                for repo in repos:
                    _add_repo(archive, repo, f"repos/{repo.name}")
                for folder in LOG_DIRS:
                    if (data_dir / folder).is_dir():
                        archive.add(data_dir / folder, folder)
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return BackupSummary(target, len(repos), target.stat().st_size)


def restore_backup(archive_path: Path, data_dir: Path) -> dict:
    """Make a fresh data dir from an archive; refuses a data dir that holds anything."""
    if data_dir.exists() and any(data_dir.iterdir()):
        raise BackupError(f"{data_dir} is not empty: restore into a new, empty data dir")
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    # Unpacked beside it and moved in whole: a restore that fails leaves no half data dir.
    with tempfile.TemporaryDirectory(prefix=".disco-restore-", dir=data_dir.parent) as scratch:
        unpacked = Path(scratch) / "data"
        try:
            with tarfile.open(archive_path, mode="r:gz") as archive:
                manifest = _manifest(archive)
                # The "data" filter refuses absolute paths, '..', links out of the dir and devices.
                archive.extractall(unpacked, filter="data")
        except (tarfile.TarError, OSError, EOFError) as err:
            raise BackupError(f"{archive_path} cannot be read as a Disco backup: {err}") from None
        for name in SECRET_FILES:
            if (unpacked / name).exists():
                os.chmod(unpacked / name, 0o600)
        with sqlite3.connect(unpacked / STORE) as conn:
            (check,) = conn.execute("PRAGMA integrity_check").fetchone()
        if check != "ok":
            raise BackupError(f"the store in {archive_path} is damaged: {check}")
        if data_dir.exists():
            data_dir.rmdir()  # empty, checked above
        unpacked.rename(data_dir)
    return manifest


def backup_due(folder: Path, now: float, every: float = 86400) -> bool:
    """Whether the newest daily backup in `folder` is older than `every` seconds (or missing)."""
    newest = max((p.stat().st_mtime for p in folder.glob(DAILY.format("*"))), default=None)
    return newest is None or now - newest >= every


def prune_backups(folder: Path, keep: int) -> list[Path]:
    """Remove daily backups beyond the newest `keep`; returns what went."""
    found = sorted(folder.glob(DAILY.format("*")), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in found[keep:]:
        old.unlink(missing_ok=True)
    return found[keep:]


def daily_backup(data_dir: Path, folder: Path, keep: int) -> BackupSummary | None:
    """The daemon's daily backup: one when due, then the oldest beyond `keep` go."""
    if not backup_due(folder, time.time()):
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    summary = write_backup(data_dir, folder / DAILY.format(stamp))
    prune_backups(folder, keep)
    return summary


def _copy_store(source: Path, target: Path) -> None:
    """SQLite's online backup: a consistent copy while the daemon keeps writing."""
    src = sqlite3.connect(source, timeout=30)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


def _add_repo(archive: tarfile.TarFile, repo: Path, name: str) -> None:
    """Refs first, then everything else; a push's unfinished pack (tmp_pack_*) is left out."""
    firsts = [p for p in (repo / "packed-refs", repo / "HEAD") if p.exists()]
    refs = sorted(p for p in (repo / "refs").rglob("*") if p.is_file()) if (repo / "refs").is_dir() else []
    taken = set(firsts + refs)
    for path in [*firsts, *refs]:
        archive.add(path, f"{name}/{path.relative_to(repo)}", recursive=False)
    for path in sorted(repo.rglob("*")):  # folders too: git wants refs/ and objects/ even empty
        if path in taken or path.name.startswith("tmp_") or not (path.is_file() or path.is_dir()):
            continue
        archive.add(path, f"{name}/{path.relative_to(repo)}", recursive=False)


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
    archive.addfile(info, fileobj=io.BytesIO(data))


def _manifest(archive: tarfile.TarFile) -> dict:
    try:
        member = archive.extractfile(MANIFEST)
    except KeyError:
        member = None
    if member is None:
        raise BackupError(f"no {MANIFEST} in the archive: not a Disco backup")
    try:
        manifest = json.loads(member.read())
    except ValueError:
        raise BackupError(f"{MANIFEST} in the archive is not JSON: not a Disco backup") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"backup format {manifest.get('format') if isinstance(manifest, dict) else '?'} is not "
                          f"the one this version reads ({FORMAT})")
    return manifest
