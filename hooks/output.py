"""The output of one deployment: written to its log file and streamed to whoever follows it."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from pathlib import Path

Listener = Callable[[str], None]
MASK = "*****"


class DeployOutput:
    """Lines go to the log file and to every listener as they come.

    Env var values are masked in every line (an app's build or start-up might echo them), so a
    secret never reaches a log or a pusher's terminal.
    """

    def __init__(self, log_path: Path, secrets: list[str] | None = None) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._file = log_path.open("a", encoding="utf-8")
        self._listeners: list[_Buffered] = []
        self._lock = threading.Lock()
        # Longest first, so a secret containing another is masked whole; tiny values would mask noise.
        self._secrets = sorted((s for s in secrets or [] if len(s) >= 4), key=len, reverse=True)

    def line(self, text: str) -> None:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        with self._lock:
            self._file.write(text + "\n")
            self._file.flush()
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(text)
            except Exception:  # a listener that hung up must not break the deploy
                self._unsubscribe(listener)

    def subscribe(self, listener: Listener) -> None:
        """Listeners that may block (a pusher's SSH channel) get their own thread and buffer,
        so a client that stops reading cannot stall the deployment."""
        with self._lock:
            self._listeners.append(_Buffered(listener, self._unsubscribe))

    def _unsubscribe(self, listener: _Buffered) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def close(self) -> None:
        """Close the log; listeners get what is buffered, then stop."""
        with self._lock:
            self._file.close()
            listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener.finish()


class _Buffered:
    """Feeds one listener from a bounded queue on its own thread; drops it when it falls behind."""

    LIMIT = 10_000

    def __init__(self, listener: Listener, drop: Callable[[_Buffered], None]) -> None:
        self._listener, self._drop = listener, drop
        self._queue: queue.Queue[str | None] = queue.Queue(self.LIMIT)
        self._thread = threading.Thread(target=self._pump, daemon=True, name="output-listener")
        self._thread.start()

    def __call__(self, line: str) -> None:
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            self._drop(self)

    def finish(self, timeout: float = 30) -> None:
        try:
            self._queue.put(None, timeout=1)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _pump(self) -> None:
        while (line := self._queue.get()) is not None:
            try:
                self._listener(line)
            except Exception:  # the client hung up: the deployment goes on without it
                self._drop(self)
                return
