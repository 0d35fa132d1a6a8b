"""Static sites on disk: the folders Caddy serves itself, under the run dir Caddy's container mounts.

    run/static/<project>/<number>/   the site of deployment <number>, complete before it serves
    run/static/<project>/live        a relative link to the folder that serves

Caddy's route for a static project always names `live`; a deploy switches by replacing the
link in one rename, so Caddy's config does not change (a config load resets some keep-alive
connections) and no request sees a half-copied site.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

STATIC_DIR = "static"
LIVE = "live"


class StaticSiteError(Exception):
    """The site's folder cannot be served; the message names it and why."""


def project_dir(run_dir: Path, project: str) -> Path:
    return run_dir / STATIC_DIR / project


def live_path(container_run_dir: str, project: str) -> str:
    """Where Caddy's container finds the project's live site."""
    return str(PurePosixPath(container_run_dir) / STATIC_DIR / project / LIVE)


def site_dir(run_dir: Path, project: str, number: int) -> Path:
    return project_dir(run_dir, project) / str(number)


def install(unpacked: Path, run_dir: Path, project: str, number: int) -> Path:
    """Move a complete site (a folder unpacked beside it) to its deployment's place; refuse one
    with a link leading out of it (Caddy would follow it into its own files)."""
    if unpacked.is_symlink() or not unpacked.is_dir():
        raise StaticSiteError("the site is not a folder")
    for path in unpacked.rglob("*"):
        shown = path.relative_to(unpacked)
        if path.is_symlink():
            try:
                inside = path.resolve().is_relative_to(unpacked.resolve())
            except (RuntimeError, OSError):  # a link loop
                raise StaticSiteError(f"{shown} is a link loop") from None
            if not inside:
                raise StaticSiteError(f"{shown} is a link leading outside the site")
        elif not (path.is_dir() or path.is_file()):
            raise StaticSiteError(f"{shown} is neither a file nor a folder")
    if not any(path.is_file() for path in unpacked.rglob("*")):
        raise StaticSiteError("the folder has no file to serve")
    target = site_dir(run_dir, project, number)
    if target.exists():  # a deployment number is used once; a leftover is from a daemon that died
        shutil.rmtree(target)
    os.replace(unpacked, target)
    _readable_by_caddy(target)
    return target


def staging_dir(run_dir: Path, project: str) -> Path:
    """A fresh folder on the same filesystem as the sites, to unpack one into."""
    parent = project_dir(run_dir, project)
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".unpacking-", dir=parent))


def point_live(run_dir: Path, project: str, number: int) -> None:
    """Serve deployment <number>'s site: the `live` link is replaced in one rename."""
    parent = project_dir(run_dir, project)
    new = parent / f".{LIVE}-{number}"
    new.unlink(missing_ok=True)
    new.symlink_to(str(number))  # relative: the same inside Caddy's container
    os.replace(new, parent / LIVE)


def live_number(run_dir: Path, project: str) -> int | None:
    try:
        target = os.readlink(project_dir(run_dir, project) / LIVE)
    except OSError:
        return None
    return int(target) if target.isdecimal() else None


def prune(run_dir: Path, project: str, keep: set[int]) -> list[int]:
    """Remove the sites (and unpacking leftovers) of deployments not in `keep`, and the `live`
    link once its site is gone (the project serves no static site any more)."""
    parent = project_dir(run_dir, project)
    if not parent.is_dir():
        return []
    removed = []
    for entry in parent.iterdir():
        if entry.name.startswith(".unpacking-"):
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.name.isdecimal() and int(entry.name) not in keep:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(int(entry.name))
    if live_number(run_dir, project) in removed:
        (parent / LIVE).unlink(missing_ok=True)
    return sorted(removed)


def remove_project(run_dir: Path, project: str) -> None:
    shutil.rmtree(project_dir(run_dir, project), ignore_errors=True)


def _readable_by_caddy(root: Path) -> None:
    """Caddy may run as another user in its container: folders 0755, files 0644."""
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        path.chmod(0o755 if path.is_dir() else 0o644)
