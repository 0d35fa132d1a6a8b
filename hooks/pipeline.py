"""The receive pipeline of a git push over SSH.

Every deployment, whoever asks for it (a push here, a webhook in hooks/github.py, the API
through hooks/operations.py), goes through Deployer.enqueue (hooks/deployer.py) and the
project's queue. A push goes through three calls, made by the front door in this order:
1. `check_push` before anything is read: may this user push to (or create) this project?
2. `check_ref_update` for each ref, after the pack is stored and before the ref moves;
   a returned reason refuses that ref (`! [remote rejected] main -> main (<reason>)`).
   For the deploy branch this is where a malformed disco.toml or a missing Dockerfile is caught.
3. `after_receive` once the refs have moved, with a Reporter that streams lines back to the
   pusher and can fail the push (non-zero exit) with a reason. A push to the deploy branch
   deploys here and waits for the outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Protocol

from hooks.platform import Platform
from hooks.policy import Access, authorize
from hooks.ports import published_port_problem
from runtime import disk, gitrepo
from runtime.appconfig import DEFAULT_IMAGE, AppConfigError, check_caps
from runtime.appsource import config_at
from runtime.store import DeploymentStatus, User

ZERO_SHA = "0" * 40
ALLOWED_REF_PREFIXES = ("refs/heads/", "refs/tags/")


@dataclass(frozen=True)
class RefUpdate:
    project: str
    ref: str
    old_sha: str
    new_sha: str
    user: str

    @property
    def short_ref(self) -> str:
        for prefix in ALLOWED_REF_PREFIXES:
            if self.ref.startswith(prefix):
                return self.ref[len(prefix) :]
        return self.ref

    @property
    def is_delete(self) -> bool:
        return self.new_sha == ZERO_SHA


class Reporter(Protocol):
    def say(self, line: str) -> None:
        """Send one line to the pusher now (shown as `remote: <line>`)."""

    def fail(self, reason: str) -> None:
        """End the push with this reason and a non-zero exit status."""


def check_push(platform: Platform, user: User, project: str, access: Access) -> None:
    """Raise PolicyError if this user may not fetch from (READ) or push to (WRITE) the project."""
    authorize(platform.store, user, project, access)


def deploy_branch(platform: Platform, project: str) -> str:
    row = platform.store.get_project(project)
    return row["deploy_branch"] if row else "main"


def ref_name_problem(ref: str) -> str | None:
    """Which of git's ref-name rules (`git check-ref-format`) `ref` breaks, or None.

    Pure, and run before anything else looks at the name: the filesystem treats
    `refs/heads//main` as `refs/heads/main`, so a name compared as a string before git's rules
    could move the deploy branch under another spelling.
    """
    if not ref:
        return "it is empty"
    if ref == "@":
        return "it is '@', git's shorthand for HEAD"
    for char in ref:
        if ord(char) < 0x20 or ord(char) == 0x7F:
            return f"it contains the control character {char!r}"
        if "\udc80" <= char <= "\udcff":  # a byte that was not UTF-8 (decoded with surrogateescape)
            return "it is not valid UTF-8"
        if char in " ~^:?*[\\":
            return f"it contains {char!r}"
    if ref.startswith("/"):
        return "it starts with '/'"
    if ref.endswith("/"):
        return "it ends with '/'"
    if "//" in ref:
        return "it contains '//' (an empty component)"
    if ".." in ref:
        return "it contains '..'"
    if "@{" in ref:
        return "it contains '@{'"
    if ref.endswith("."):
        return "it ends with '.'"
    for component in ref.split("/"):
        if component.startswith("."):
            return f"the component {component!r} starts with '.'"
        if component.endswith(".lock"):
            return f"the component {component!r} ends with '.lock'"
        if component == "@":
            return "a component is '@', git's shorthand for HEAD"
    if "/" not in ref:
        return "it has a single level (a ref is like refs/heads/<name>)"
    for prefix, kind in (("refs/heads/", "branch"), ("refs/tags/", "tag")):
        name = ref[len(prefix):] if ref.startswith(prefix) else None
        if name is not None and name.startswith("-"):
            return f"the {kind} name {name!r} starts with '-'"
    if ref == "refs/heads/HEAD":
        return "'HEAD' is not a valid branch name"
    return None


def check_ref_update(platform: Platform, update: RefUpdate) -> str | None:
    """Return why this ref may not move, or None to let it move."""
    problem = ref_name_problem(update.ref)
    if problem:
        return f"invalid ref name {update.ref!r}: {problem}"
    if not update.ref.startswith(ALLOWED_REF_PREFIXES):
        return f"only branches and tags can be pushed, not {update.ref}"
    if not update.is_delete and (short := _short_of_space(platform, update.project)):
        return short
    branch = deploy_branch(platform, update.project)
    if update.ref != f"refs/heads/{branch}":
        return None
    if update.is_delete:
        return f"the deploy branch {branch!r} cannot be deleted"
    return _deployable(platform, update)


def _short_of_space(platform: Platform, project: str) -> str | None:
    """Refuse a ref while the data dir has less room than the ref, the store's rows and the
    deployment's log need: better now, before the ref moves, than halfway through."""
    repo = platform.repo_path(project)
    try:
        free = disk.usage(repo).free_bytes
    except OSError:
        return None  # the checks after this one say what is wrong with the repo
    if free >= disk.PUSH_HEADROOM:
        return None
    return disk.no_space(f"a push needs {disk.human_size(disk.PUSH_HEADROOM)} free besides its objects", repo)


def _deployable(platform: Platform, update: RefUpdate) -> str | None:
    """Refuse, before the ref moves, a commit that could never deploy."""
    repo = platform.repo_path(update.project)
    settings = platform.settings
    try:
        config = config_at(repo, update.new_sha)
        check_caps(config, settings.caps)
    except AppConfigError as err:
        return str(err)
    for name, image in config.images_to_build.items():
        if gitrepo.read_file(repo, update.new_sha, str(PurePosixPath(image.dockerfile))) is None:
            which = "" if name == DEFAULT_IMAGE else f" (image {name})"
            return f"no Dockerfile at {image.dockerfile}{which}: Disco builds the app from it"
    if not platform.engine.reachable():
        return "Docker is not reachable on the server: nothing can build or start until dockerd is back"
    return published_port_problem(config, update.project, settings, platform.store.scale(update.project),
                                  platform.engine.host_ports)


def after_receive(platform: Platform, updates: list[RefUpdate], reporter: Reporter) -> list[RefUpdate]:
    """Record what landed, deploy the deploy branch, tell the pusher.

    Returns the updates whose deployment did not go live: the front door moves those refs
    back, so the branch keeps naming what is deployed and pushing the same commit retries.
    """
    if not updates:
        return []
    store = platform.store
    first = updates[0]
    if store.get_project(first.project) is None:
        store.add_project(first.project, created_by=first.user)
        store.audit(first.user, "projects:create", first.project, "created by first push")
        reporter.say(f"created project {first.project}")
    branch = deploy_branch(platform, first.project)
    to_deploy = None
    for update in updates:
        store.audit(update.user, "push", update.project,
                    f"{update.ref} {update.old_sha[:7]}..{update.new_sha[:7]}")
        if update.is_delete:
            reporter.say(f"{update.short_ref} deleted")
        elif update.ref == f"refs/heads/{branch}":
            reporter.say(f"{update.short_ref} -> {update.new_sha[:7]} received")
            to_deploy = update
        else:
            reporter.say(f"{update.short_ref} -> {update.new_sha[:7]} stored (only {branch} deploys)")
    if to_deploy is None:
        return []
    ticket = platform.deployer.enqueue(to_deploy.project, to_deploy.new_sha, branch, to_deploy.user, "push",
                              listener=reporter.say)
    final = ticket.wait()
    if final is None or final.status != DeploymentStatus.LIVE:
        status = final.status if final else "unknown"
        reason = final.reason if final else "the deployment did not finish"
        reporter.fail(f"deployment #{ticket.deployment.number} {status}: {reason}")
        return [to_deploy]
    return []
