"""Projects' bare repos: where they are, making one, and reading pushed commits out of them
(single files for checks, whole trees for builds).

dulwich is imported inside the functions that read or write a repo: an idle daemon reads none,
and importing it costs ~4 MB of RSS (issue 15).
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dulwich.repo import Repo


class GitRepoError(Exception):
    pass


def read_file(repo_path: Path, commit_sha: str, path: str) -> bytes | None:
    """The content of `path` at `commit_sha`, or None if it is not a file there."""
    from dulwich.errors import NotTreeError  # lazy: see the module's docstring
    from dulwich.objects import Commit, Tree

    with open_repo(repo_path) as repo:
        commit = repo[commit_sha.encode()]
        if not isinstance(commit, Commit):
            raise GitRepoError(f"{commit_sha[:7]} is not a commit")
        tree = repo[commit.tree]
        if not isinstance(tree, Tree):
            raise GitRepoError(f"{commit_sha[:7]} has no tree")
        try:
            _mode, sha = tree.lookup_path(repo.__getitem__, path.encode())
        except (KeyError, NotTreeError):  # NotTreeError: a folder on the way is a file (or a symlink)
            return None
        blob = repo[sha]
        return None if isinstance(blob, Tree) else blob.as_raw_string()


def commit_subjects(repo_path: Path, shas: list[str]) -> dict[str, str]:
    """The first line of each commit's message (of those the repo has), cut at 200 characters."""
    from dulwich.objects import Commit  # lazy: see the module's docstring

    found: dict[str, str] = {}
    if not repo_path.is_dir():
        return found
    with open_repo(repo_path) as repo:
        for sha in shas:
            try:
                commit = repo[sha.encode()]
            except (KeyError, ValueError):  # not pushed here (a webhook's fetch gone), or not a sha
                continue
            if isinstance(commit, Commit):
                found[sha] = commit.message.decode(errors="replace").strip().split("\n", 1)[0][:200]
    return found


def has_commit(repo_path: Path, commit_sha: str) -> bool:
    from dulwich.objects import ObjectID  # lazy: see the module's docstring

    with open_repo(repo_path) as repo:
        return ObjectID(commit_sha.encode()) in repo


def submodules(repo_path: Path, commit_sha: str) -> list[str]:
    """Paths of submodule entries, which a build context cannot contain."""
    listing = _git(repo_path, "ls-tree", "-r", "-z", commit_sha)
    found = []
    for entry in listing.split(b"\0"):
        if entry.startswith(b"160000 "):
            found.append(entry.split(b"\t", 1)[1].decode(errors="replace"))
    return found


def export_tree(repo_path: Path, commit_sha: str, destination: Path) -> None:
    """Write the exact tree of the commit (symlinks kept) into `destination`.

    `git archive` rather than dulwich, whose tar writer turns symlinks into plain files.
    """
    destination.mkdir(parents=True, exist_ok=True)
    archive = subprocess.Popen(
        ["git", "--git-dir", str(repo_path), "archive", "--format=tar", commit_sha],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert archive.stdout is not None and archive.stderr is not None  # both are pipes
    with tarfile.open(fileobj=archive.stdout, mode="r|") as tar:
        tar.extractall(destination, filter="tar")
    if archive.wait() != 0:
        raise GitRepoError(f"git archive failed: {archive.stderr.read().decode(errors='replace').strip()}")


def branch_head(repo_path: Path, branch: str) -> str | None:
    from dulwich.refs import Ref  # lazy: see the module's docstring

    with open_repo(repo_path) as repo:
        sha = repo.refs.as_dict().get(Ref(f"refs/heads/{branch}".encode()))
        return sha.decode() if sha else None


def resolve_commit(repo_path: Path, prefix: str) -> str | None:
    """The full sha of a commit given in full or abbreviated, if the repo has exactly one."""
    result = subprocess.run(["git", "--git-dir", str(repo_path), "rev-parse", "--verify", "-q", f"{prefix}^{{commit}}"],
                            capture_output=True, text=True)
    return result.stdout.strip() or None


def repo_path(repos_dir: Path, project: str) -> Path:
    return repos_dir / f"{project}.git"


def init_bare(repo_path: Path) -> None:
    from dulwich.repo import Repo  # lazy: see the module's docstring

    Repo.init_bare(str(repo_path), mkdir=True, default_branch=b"main").close()


def is_ancestor(repo_path: Path, ancestor: str, descendant: str) -> bool:
    result = subprocess.run(["git", "--git-dir", str(repo_path), "merge-base", "--is-ancestor", ancestor, descendant],
                            capture_output=True)
    return result.returncode == 0


def set_branch(repo_path: Path, branch: str, new: str, expected_old: str | None) -> None:
    """Move a branch, only if it still points where we last saw it (a push may race us)."""
    from dulwich.objects import ZERO_SHA, ObjectID  # lazy: see the module's docstring
    from dulwich.refs import Ref

    with open_repo(repo_path) as repo:
        old = ObjectID(expected_old.encode()) if expected_old else ZERO_SHA
        if not repo.refs.set_if_equals(Ref(f"refs/heads/{branch}".encode()), old, ObjectID(new.encode())):
            raise GitRepoError(f"{branch} moved while it was being updated; try again")


def put_branch_back(repo_path: Path, branch: str, from_commit: str, to_commit: str | None) -> bool:
    """Move a branch from `from_commit` back to `to_commit` (None: remove it), only if it still
    names `from_commit`; True if it moved."""
    from dulwich.objects import ObjectID  # lazy: see the module's docstring
    from dulwich.refs import Ref

    ref = Ref(f"refs/heads/{branch}".encode())
    if not repo_path.exists():
        return False
    with open_repo(repo_path) as repo:
        if to_commit is None:
            return bool(repo.refs.remove_if_equals(ref, ObjectID(from_commit.encode())))
        return bool(repo.refs.set_if_equals(ref, ObjectID(from_commit.encode()), ObjectID(to_commit.encode())))


def open_repo(repo_path: Path) -> Repo:
    """The repo at `repo_path`, to use in a `with`."""
    from dulwich.repo import Repo  # lazy: see the module's docstring

    return Repo(str(repo_path))


def remove_repo(repo_path: Path) -> None:
    shutil.rmtree(repo_path, ignore_errors=True)


def _git(repo_path: Path, *args: str) -> bytes:
    result = subprocess.run(["git", "--git-dir", str(repo_path), *args], capture_output=True)
    if result.returncode != 0:
        raise GitRepoError(f"git {args[0]} failed: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout
