"""The output of one deployment: written to its log file and streamed to whoever follows it."""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from runtime.disk import is_disk_full, no_space

log = logging.getLogger("disco.deploy")

Listener = Callable[[str], None]
MASK = "*****"
SHORT = 4  # values shorter than this are masked only where they stand as a whole word


def masker(secrets: list[str]) -> Callable[[str], str]:
    """What masks every env value in a line of output.

    Every non-blank value is masked. A value of 4 characters or more is masked wherever it
    appears, longest first so a secret containing another is masked whole. A shorter value
    (`1`, `on`, `abc`) is masked only where it stands alone: not touching a letter, digit or `_`
    on either side. So `PIN=42` hides `42` in `pin is 42` and `42,` but leaves `1420`, `step
    42a` and every word merely containing it alone; otherwise one tiny value would turn ordinary
    output into asterisks. The price: a short value also hides the same number or word where it
    means something else (`#1` in `deployment #1` when a value is `1`): a masked line is safer
    than a leaked one. A value of only whitespace cannot be told from layout and is not masked.
    Output is masked a line at a time, so a value of several lines (a PEM key) is masked by each
    of its lines too.
    """
    pieces = [piece for s in secrets for piece in (s, *s.splitlines())]
    values = sorted({s for s in pieces if s.strip()}, key=len, reverse=True)
    if not values:
        return lambda text: text
    parts = [re.escape(v) if len(v) >= SHORT else rf"(?<![A-Za-z0-9_]){re.escape(v)}(?![A-Za-z0-9_])"
             for v in values]
    pattern = re.compile("|".join(parts))
    return lambda text: pattern.sub(MASK, text)


class DeployOutput:
    """Lines go to the log file and to every listener as they come.

    Env var values are masked in every line (an app's build or start-up might echo them), so a
    secret never reaches a log or a pusher's terminal.
    """

    def __init__(self, log_path: Path, secrets: list[str] | None = None) -> None:
        self.log_path = log_path
        self._listeners: list[_Buffered] = []
        self._lock = threading.Lock()
        self._mask = masker(secrets or [])  # every value; see masker for how short ones are kept quiet
        # A log that cannot be written (a full disk) must not stop the deployment or its
        # listeners: the lines still stream, with one that says the log stopped (log_error).
        self.log_error: str | None = None
        self._file: TextIO | None = None
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self._file = log_path.open("a", encoding="utf-8")
        except OSError as err:
            self._lost(err)

    def line(self, text: str) -> None:
        text = self._mask(text)
        notice = None
        with self._lock:
            if self._file is not None:
                try:
                    self._file.write(text + "\n")
                    self._file.flush()
                except OSError as err:
                    notice = self._lost(err)
            listeners = list(self._listeners)
        for line in (text, notice) if notice else (text,):
            self._tell(listeners, line)

    def _lost(self, err: OSError) -> str:
        """Stop writing the log after a failed write; the line that says so, for listeners."""
        reason = no_space("the deployment log could not be written") if is_disk_full(err) else str(err)
        self.log_error = f"{self.log_path}: {reason}"
        log.warning("deployment log %s", self.log_error)
        if self._file is not None:
            with contextlib.suppress(OSError):  # what is still buffered cannot be written either
                self._file.close()
            self._file = None
        return f"warning: {reason}; the output goes on here only"

    def _tell(self, listeners: list[_Buffered], text: str) -> None:
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

    def release_listeners(self) -> None:
        """Listeners get what is buffered, then stop; later lines go to the log only."""
        with self._lock:
            listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener.finish()

    def close(self) -> None:
        """Close the log; listeners get what is buffered, then stop."""
        self.release_listeners()
        with self._lock:
            if self._file is not None:
                try:
                    self._file.close()
                except OSError as err:
                    self._lost(err)
                self._file = None


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


def as_a_terminal_shows(line: str) -> str:
    """A line with carriage returns in it (a progress bar redrawn in place) as a terminal shows
    it at the end: each part after a "\r" overwrites the start of what came before. An SSE
    event cannot carry a "\r" (it ends a field), so a follower gets this instead."""
    if "\r" not in line:
        return line
    shown = ""
    for part in line.rstrip("\r").split("\r"):
        shown = part + shown[len(part):]
    return shown
