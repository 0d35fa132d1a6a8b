"""Bare repositories on disk, one per project, and the per-project bookkeeping pushes need."""

from __future__ import annotations

import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from runtime import gitrepo

if TYPE_CHECKING:
    from dulwich.repo import Repo


class RepoRegistry:
    """Knows where each project's repo lives and which ones have a push in flight.

    The ref lock makes "compare old value, then write new value" one step per project, so two
    concurrent pushes cannot both win. The active count lets us sweep temporary pack files
    left by interrupted pushes only when no other push to that repo is still writing one.
    """

    def __init__(self, repos_dir: Path) -> None:
        self.repos_dir = repos_dir
        self._guard = threading.Lock()
        self._active: Counter[str] = Counter()
        self._ref_locks: dict[str, threading.Lock] = {}

    def path(self, project: str) -> Path:
        return gitrepo.repo_path(self.repos_dir, project)

    def exists(self, project: str) -> bool:
        return (self.path(project) / "HEAD").exists()

    def open(self, project: str) -> Repo:
        return gitrepo.open_repo(self.path(project))

    def create(self, project: str) -> None:
        gitrepo.init_bare(self.path(project))

    def ref_lock(self, project: str) -> threading.Lock:
        with self._guard:
            return self._ref_locks.setdefault(project, threading.Lock())

    @contextmanager
    def session(self, project: str, create: bool = False) -> Iterator[None]:
        """Bracket one push or fetch; on the way out, clean what an aborted push left.

        With create=True a missing repo is made first, and removed again at the end if no
        ref ever landed in it, so a failed first push leaves no trace on disk.
        """
        with self._guard:
            self._active[project] += 1
            created = create and not self.exists(project)
            if created:
                self.create(project)
        try:
            yield
        finally:
            with self._guard:
                self._active[project] -= 1
                if self._active[project] == 0:
                    del self._active[project]
                    self._tidy(project, remove_if_empty=created)

    def sweep_all(self) -> None:
        """Remove temporary packs in every repo (on start, nothing is in flight)."""
        for repo_dir in self.repos_dir.glob("*.git"):
            sweep_temporary_packs(repo_dir)

    def _tidy(self, project: str, remove_if_empty: bool) -> None:
        repo_dir = self.path(project)
        if not repo_dir.exists():
            return
        if remove_if_empty:
            with gitrepo.open_repo(repo_dir) as repo:
                if not repo.get_refs():
                    shutil.rmtree(repo_dir, ignore_errors=True)
                    return
        sweep_temporary_packs(repo_dir)


def sweep_temporary_packs(repo_dir: Path) -> None:
    """Drop the `objects/tmp_pack_*` files an interrupted push left behind.

    Only dulwich's own temporary packs: a webhook's `git fetch` may be writing into
    objects/pack/ at this very moment, and its files must stay. The path rather than dulwich's
    object store: our repos are bare, their objects in `objects/`, and the sweep on start then
    needs no dulwich (an idle daemon does not load it).
    """
    for leftover in (repo_dir / "objects").glob("tmp_pack_*"):
        leftover.unlink(missing_ok=True)
