"""The per-project deploy queue: one deploy at a time per project, only the newest waits.

Projects deploy in parallel (a thread per busy project). A deployment that arrives while
another runs waits; if a newer one arrives before it starts, the older one is superseded.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from hooks.output import DeployOutput
from runtime.store import Deployment


@dataclass
class Ticket:
    """One deployment on its way through the queue; `done` is set when it reached an end."""

    deployment: Deployment
    output: DeployOutput
    done: threading.Event = field(default_factory=threading.Event)
    final: Deployment | None = None
    cancelled_by: str = ""  # set while it runs: the run stops at its next check
    # Work that must happen in the queue before the build (a webhook's fetch), so that a
    # superseded deployment never does it.
    prepare: Callable[[DeployOutput], None] | None = None

    @property
    def project(self) -> str:
        return self.deployment.project

    def wait(self, timeout: float | None = None) -> Deployment | None:
        self.done.wait(timeout)
        return self.final


class DeployQueue:
    def __init__(self, run: Callable[[Ticket], Deployment], supersede: Callable[[Ticket, Ticket], Deployment]) -> None:
        self._run = run
        self._supersede = supersede
        self._lock = threading.Lock()
        self._running: dict[str, Ticket] = {}
        self._waiting: dict[str, Ticket] = {}

    def submit(self, ticket: Ticket) -> None:
        replaced: Ticket | None = None
        with self._lock:
            current = self._running.get(ticket.project)
            if current is None:
                self._running[ticket.project] = ticket
                threading.Thread(target=self._drain, args=(ticket.project,), name=f"deploy-{ticket.project}",
                                 daemon=True).start()
            else:
                replaced = self._waiting.get(ticket.project)
                self._waiting[ticket.project] = ticket
                ticket.output.line(f"queued: waiting for deployment #{current.deployment.number} of "
                                   f"{ticket.project} to finish")
        if replaced is not None:
            self._finish(replaced, self._supersede(replaced, ticket))

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
            with self._lock:
                ticket = self._waiting.pop(project, None)
                if ticket is None:
                    del self._running[project]
                else:
                    self._running[project] = ticket

    @staticmethod
    def _finish(ticket: Ticket, final: Deployment) -> None:
        ticket.final = final
        ticket.output.close()
        ticket.done.set()
