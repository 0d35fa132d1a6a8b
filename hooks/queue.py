"""The per-project deploy queue: one deploy at a time per project, only the newest waits.

Projects deploy in parallel (a thread per busy project). A deployment that arrives while
another runs waits; if a newer one arrives before it starts, the older one is superseded.
A deployment's turn lasts until it is done, cleanup included, though whoever waits for its
outcome (a push) is answered as soon as it is live: the next deployment of the project never
overlaps the cleanup of the one before.
Other changes to a project's swarm services (a scale) take their turn in the same queue,
between deployments, never during one (see `between`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from hooks.output import DeployOutput
from runtime.store import Deployment

log = logging.getLogger("disco.deploy")


@dataclass
class Ticket:
    """One deployment on its way through the queue. `answered` is set once its outcome is known
    (live, failed, cancelled, superseded), `done` once its turn is over (a live one has cleaned
    up after itself); `final` is the record as of the later of the two."""

    deployment: Deployment
    output: DeployOutput
    answered: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    final: Deployment | None = None
    cancelled_by: str = ""  # set while it runs: the run stops at its next check
    # Work that must happen in the queue before the build (a webhook's fetch), so that a
    # superseded deployment never does it.
    prepare: Callable[[DeployOutput], None] | None = None

    @property
    def project(self) -> str:
        return self.deployment.project

    def answer(self, outcome: Deployment) -> None:
        """The outcome is known: listeners get every line so far and are let go (a pusher's
        SSH channel closes now), and `wait` returns it. What the run does after this (a live
        deployment's cleanup) goes to the log only."""
        if self.answered.is_set():
            return
        self.final = outcome
        self.output.release_listeners()
        self.answered.set()

    def wait(self, timeout: float | None = None) -> Deployment | None:
        """The outcome, once known (a live deployment may still be cleaning up: see `done`)."""
        self.answered.wait(timeout)
        return self.final


class DeployQueue:
    def __init__(self, run: Callable[[Ticket], Deployment], supersede: Callable[[Ticket, Ticket], Deployment],
                 drained: Callable[[], None] = lambda: None) -> None:
        self._run = run
        self._supersede = supersede
        self._drained = drained  # called when a project's thread has run its last deployment
        self._lock = threading.Lock()
        self._running: dict[str, Ticket] = {}
        self._waiting: dict[str, Ticket] = {}
        self._later: dict[str, list[Callable[[], None]]] = {}  # work for after the running deployment
        self._held: set[str] = set()  # projects whose services `between` is changing right now

    def submit(self, ticket: Ticket) -> None:
        replaced: Ticket | None = None
        with self._lock:
            current = self._running.get(ticket.project)
            if current is None and ticket.project not in self._held:
                self._start(ticket)
            else:
                replaced = self._waiting.get(ticket.project)
                self._waiting[ticket.project] = ticket
                ahead = f"deployment #{current.deployment.number}" if current else "a scale"
                ticket.output.line(f"queued: waiting for {ahead} of {ticket.project} to finish")
        if replaced is not None:
            self._finish(replaced, self._supersede(replaced, ticket))

    def between(self, project: str, work: Callable[[], None]) -> bool:
        """Run `work` on the project's services when no deployment of it runs: now, in this
        thread, if none runs (none starts until it is done), else right after the running one
        ends, in the queue's thread, before the next one starts. True if it ran now.

        A deployment reads the scale when it plans its services and writes it with the rest of
        their spec when it starts them, then waits on swarm's update state: a scale made in
        between was undone by the deployment's spec, and one made during the rollout reset
        swarm's update state (the deployment waited its whole health timeout, then failed) or
        raced its update ("update out of sequence", a 500). So the two never overlap.
        """
        with self._lock:
            if project in self._running or project in self._held:
                self._later.setdefault(project, []).append(work)
                return False
            self._held.add(project)
        try:
            work()
        finally:
            if self._hand_on(project) is not None:  # a deployment came meanwhile: its turn now
                self._drain_in_thread(project)
        return True

    def cancel(self, project: str, number: int, user: str, cancelled: Callable[[Ticket], Deployment]) -> bool:
        """Cancel a waiting deployment at once, or ask a running one to stop. False if neither."""
        with self._lock:
            waiting = self._waiting.get(project)
            if waiting is not None and waiting.deployment.number == number:
                del self._waiting[project]
            else:
                waiting = None
                running = self._running.get(project)
                if running is None or running.deployment.number != number:
                    return False
                running.cancelled_by = user
                running.output.line(f"cancel requested by {user}")
                return True
        self._finish(waiting, cancelled(waiting))
        return True

    def busy_projects(self) -> list[str]:
        with self._lock:
            return sorted(self._running)

    def _start(self, ticket: Ticket) -> None:
        """Run this ticket, and the project's next ones (lock held)."""
        self._running[ticket.project] = ticket
        self._drain_in_thread(ticket.project)

    def _drain_in_thread(self, project: str) -> None:
        threading.Thread(target=self._drain, args=(project,), name=f"deploy-{project}", daemon=True).start()

    def _drain(self, project: str) -> None:
        with self._lock:
            ticket: Ticket | None = self._running[project]
        while ticket is not None:
            try:
                final = self._run(ticket)
            except Exception as err:  # the runner records failures itself; this is a last resort
                final = ticket.deployment
                ticket.output.line(f"error: internal error: {err}")
            self._finish(ticket, final)
            ticket = self._hand_on(project)
        self._drained()  # after _finish: whoever waits for the deployment is not kept waiting

    def _hand_on(self, project: str) -> Ticket | None:
        """Run the work `between` left for this turn, then hand the project to its waiting
        deployment (returned, now running) or let it go. Nothing is left behind: the check for
        more work and the letting go are one step under the lock."""
        while True:
            with self._lock:
                later = self._later.pop(project, [])
                if not later:
                    self._held.discard(project)
                    self._running.pop(project, None)
                    ticket = self._waiting.pop(project, None)
                    if ticket is not None:
                        self._running[project] = ticket
                    return ticket
            for work in later:
                try:
                    work()
                except Exception:  # whoever asked was answered already; the next deployment applies it
                    log.exception("a change to the services of %s failed between deployments", project)

    @staticmethod
    def _finish(ticket: Ticket, final: Deployment) -> None:
        ticket.answer(final)  # no-op for one that went live: it was answered then
        ticket.final = final
        ticket.output.close()
        ticket.done.set()
