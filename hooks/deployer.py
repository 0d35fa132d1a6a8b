"""Asking for deployments and running them: the per-project queue (hooks/queue.py), cancels,
supersedes, and settling what a daemon restart left unfinished.

Every deployment goes through here, whether a push, a webhook, a rollback or an env change
asked for it; hooks/deployment.py runs each one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from hooks.deployment import DeploymentRun
from hooks.engine import DeployEngine
from hooks.errors import DeployFailed
from hooks.output import DeployOutput, Listener
from hooks.queue import DeployQueue, Ticket
from hooks.router import Router
from runtime import gitrepo, memory
from runtime.docker_engine import DockerError
from runtime.settings import Settings
from runtime.store import ACTIVE_STATUSES, Deployment, DeploymentStatus, Store, now

log = logging.getLogger("disco.deploy")


class Deployer:
    def __init__(self, settings: Settings, store: Store, engine: DeployEngine, router: Router) -> None:
        self.settings, self.store, self.engine, self.router = settings, store, engine, router
        # What a deployment allocated stays in its thread's malloc arena otherwise: with many
        # projects deployed, the idle daemon would keep the peak of each.
        self.queue = DeployQueue(self._run, self._supersede, drained=memory.give_back_freed_memory)

    def enqueue(
        self, project: str, commit_sha: str, branch: str, user: str, source: str,
        image: str = "", images: str = "{}", rollback_of: int | None = None, listener: Listener | None = None,
        delivery: str = "", prepare: Callable[[DeployOutput], None] | None = None,
    ) -> Ticket:
        """Record a deployment and queue it; `listener` gets every output line from the first.
        `image` and `images` (a rollback's, an env change's) are reused instead of a build."""
        deployment = self.store.create_deployment(
            project, commit_sha, branch, user, source, self.settings.deployments_dir,
            image=image, images=images, rollback_of=rollback_of, delivery=delivery,
        )
        secrets = list(self.store.env(project).values())
        ticket = Ticket(deployment, DeployOutput(Path(deployment.log_path), secrets), prepare=prepare)
        if listener is not None:
            ticket.output.subscribe(listener)
        ticket.output.line(f"deployment #{deployment.number} of {project}: {commit_sha[:7]} ({source} by {user})")
        self.queue.submit(ticket)
        return ticket

    def cancel(self, project: str, number: int, user: str) -> None:
        deployment = self.store.get_deployment(project, number)
        if deployment is None:
            raise DeployFailed(f"{project} has no deployment #{number}", "not_found")
        if deployment.status not in ACTIVE_STATUSES:
            raise DeployFailed(f"deployment #{number} is already {deployment.status}", "conflict")

        def record(ticket: Ticket) -> Deployment:
            ticket.output.line(f"deployment #{number} cancelled by {user} before it started")
            return self.store.update_deployment(project, number, status=DeploymentStatus.CANCELLED,
                                                reason=f"cancelled by {user}", finished_at=now())

        if not self.queue.cancel(project, number, user, record):
            raise DeployFailed(f"deployment #{number} is not queued or running in this daemon", "conflict")
        self.store.audit(user, "deployments:cancel", project, f"#{number}")

    def busy_projects(self) -> list[str]:
        return self.queue.busy_projects()

    def _supersede(self, old: Ticket, new: Ticket) -> Deployment:
        reason = f"superseded by deployment #{new.deployment.number}"
        old.output.line(f"deployment #{old.deployment.number} will not run: {reason}")
        return self.store.update_deployment(old.project, old.deployment.number, status=DeploymentStatus.SUPERSEDED,
                                            reason=reason, finished_at=now())

    def _run(self, ticket: Ticket) -> Deployment:
        try:
            return DeploymentRun(self.settings, self.store, self.engine, self.router, ticket).run()
        except Exception as err:  # a bug must not leave the record "building" forever
            log.exception("deployment #%d of %s crashed", ticket.deployment.number, ticket.project)
            ticket.output.line(f"deploy failed: internal error: {err}")
            return self.store.update_deployment(ticket.project, ticket.deployment.number,
                                                status=DeploymentStatus.FAILED,
                                                reason=f"internal error: {err}", finished_at=now())

    # -- after a restart -------------------------------------------------------------------

    def recover(self) -> list[Deployment]:
        """Settle every deployment the last daemon left unfinished."""
        settled = []
        for d in self.store.deployments_with_status(ACTIVE_STATUSES):
            try:
                settled.append(self._settle(d))
            except DockerError as err:
                settled.append(self.store.update_deployment(
                    d.project, d.number, status=DeploymentStatus.FAILED, finished_at=now(),
                    reason=f"interrupted by a daemon restart, and Docker could not be checked: {err}"))
            if settled[-1].status != DeploymentStatus.LIVE:
                self._put_branch_back(settled[-1])
        for d in self.store.deployments_with_status((DeploymentStatus.LIVE,)):
            if not d.finished_at:  # died cleaning up after its switch: the next deploy's cleanup does it
                settled.append(self.store.update_deployment(d.project, d.number, finished_at=now()))
        return settled

    def _put_branch_back(self, d: Deployment) -> None:
        """What the front door does when a pushed deployment fails (gitserver/gitproto.py), for
        one whose daemon died: the deploy branch names what is live again, and pushing the same
        commit retries. Only if the branch still names this deployment's commit."""
        if d.source != "push":
            return  # a webhook's branch follows GitHub; a rollback or redeploy moved no branch
        live = self.store.live_deployment(d.project)
        repo = gitrepo.repo_path(self.settings.repos_dir, d.project)
        try:
            if gitrepo.put_branch_back(repo, d.branch, d.commit_sha, live.commit_sha if live else None):
                log.info("%s: %s is back at %s, what is live", d.project, d.branch,
                         live.commit_sha[:7] if live else "nothing (removed)")
        except OSError as err:  # an unreadable repo: the next push moves the branch anyway
            log.warning("%s: could not put %s back: %s", d.project, d.branch, err)

    def _settle(self, d: Deployment) -> Deployment:
        """Live if swarm finished it (every service of the project on it), else undone and failed."""
        engine, store = self.engine, self.store
        services = engine.project_services(d.project)
        ours = [s for s in services if s.deployment == str(d.number)]
        if (d.status == DeploymentStatus.STARTING and ours and len(ours) == len(services)
                and all(s.update_state == "completed" for s in ours)):
            previous = store.live_deployment(d.project)
            if previous:
                store.update_deployment(d.project, previous.number, status=DeploymentStatus.REPLACED)
            return store.update_deployment(d.project, d.number, status=DeploymentStatus.LIVE, finished_at=now(),
                                           reason="finished by swarm while the daemon restarted")
        for role in ("release", "static"):  # a release command it ran, a static site it copied out
            engine.remove_containers(d.project, role)
        for service in ours:
            if service.has_previous:
                engine.restore_previous(service.name)
            else:
                engine.remove_service(service.name)
        # Its tag is random and a build's is not in the record yet: the tags made for this number.
        for tag in engine.project_images(d.project).get(d.number, []):
            engine.remove_image(tag)
        return store.update_deployment(d.project, d.number, status=DeploymentStatus.FAILED, finished_at=now(),
                                       reason="interrupted by a daemon restart; push again to retry")
