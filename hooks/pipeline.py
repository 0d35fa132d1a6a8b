"""The receive pipeline: the one entry that git pushes (and later webhooks and API redeploys) call.

A push goes through three calls, made by the front door in this order:
1. `check_push` before anything is read: may this user push to (or create) this project?
2. `check_ref_update` for each ref, after the pack is stored and before the ref moves;
   a returned reason refuses that ref (`! [remote rejected] main -> main (<reason>)`).
3. `after_receive` once the refs have moved, with a Reporter that streams lines back to the
   pusher and can fail the push (non-zero exit) with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from hooks.policy import Access, authorize
from runtime.store import Store, User

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


def check_push(store: Store, user: User, project: str, access: Access) -> bool:
    """Raise PolicyError if refused; return whether the project already exists."""
    return authorize(store, user, project, access)


def check_ref_update(store: Store, update: RefUpdate) -> str | None:
    """Return why this ref may not move, or None to let it move."""
    if not update.ref.startswith(ALLOWED_REF_PREFIXES):
        return f"only branches and tags can be pushed, not {update.ref}"
    project = store.get_project(update.project)
    deploy_branch = project["deploy_branch"] if project else "main"
    if update.is_delete and update.ref == f"refs/heads/{deploy_branch}":
        return f"the deploy branch {deploy_branch!r} cannot be deleted"
    return None


def after_receive(store: Store, updates: list[RefUpdate], reporter: Reporter) -> None:
    """Record what landed and tell the pusher. The deploy step will hang off this call."""
    if not updates:
        return
    first = updates[0]
    if store.get_project(first.project) is None:
        store.add_project(first.project, created_by=first.user)
        store.audit(first.user, "projects:create", first.project, "created by first push")
        reporter.say(f"created project {first.project}")
    for update in updates:
        if update.is_delete:
            reporter.say(f"{update.short_ref} deleted")
        else:
            reporter.say(f"{update.short_ref} -> {update.new_sha[:7]} received")
        store.audit(
            update.user,
            "push",
            update.project,
            f"{update.ref} {update.old_sha[:7]}..{update.new_sha[:7]}",
        )
