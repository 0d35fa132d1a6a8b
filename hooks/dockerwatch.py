"""Docker going away and coming back (dockerd restarted, upgraded, crashed) while the daemon runs.

Nothing here reconnects by hand: every call to the engine opens what it needs afresh once
dockerd answers again (runtime/docker_engine.py). What the watch adds is telling: the log says
when Docker went and when it came back, and the proxy is checked again on its return (swarm
starts Caddy's task again by itself; loading the routes makes sure it serves what the store says).
A deployment that was running when Docker went away settles itself (hooks/deployment.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("disco.docker")

CHECK_EVERY = 2.0  # seconds between pings while all is well


class DockerWatch:
    def __init__(self, reachable: Callable[[], bool], on_back: Callable[[], None], every: float = CHECK_EVERY) -> None:
        self._reachable, self._on_back, self._every = reachable, on_back, every
        self._stop = threading.Event()
        self.up = True  # as last seen

    def start(self) -> None:
        threading.Thread(target=self._run, name="docker-watch", daemon=True).start()

    def stop(self) -> None:
        """No wait: a proxy check going on (up to two minutes) must not hold up the shutdown."""
        self._stop.set()

    def check(self) -> None:
        """One look: say so when Docker went away or came back."""
        up = self._reachable()
        if up == self.up:
            return
        self.up = up
        if not up:
            log.warning("Docker is not reachable: deploys, scheduled runs and the API calls that need it "
                        "fail until it is back")
            return
        log.info("Docker is reachable again")
        self._on_back()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self.check()
            except Exception:  # the watch must outlive a bug in what it calls on Docker's return
                log.exception("checking Docker failed")
