"""Named points in a push and a deployment where a test can hold the daemon, to kill it there.

The crash tests (tests/test_crash.py) prove that a daemon killed at any stage comes back with
nothing stuck and nothing lost. Most stages last long enough to catch by watching the output;
switching routes and cleaning up do not. So each stage passes a named point, and when the
daemon was started with DISCO_TEST_HOLD_FILE naming a file that holds that point's name, the
thread stops there and says so, until the file is removed or names another point (a test
that kills the daemon there never lets it go; one that watches what waits on it does).
Without the variable (always, in production) a point costs one dictionary lookup.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("disco.holds")

HOLD_FILE_VARIABLE = "DISCO_TEST_HOLD_FILE"
RECHECK_SECONDS = 0.05  # how often a held thread looks whether the test let it go


def point(name: str, say: Callable[[str], None] | None = None) -> None:
    """Pass the point `name`; hold here while the hold file names it."""
    hold_file = os.environ.get(HOLD_FILE_VARIABLE)
    if not hold_file or not _names(Path(hold_file), name):
        return
    message = f"held at {name} ({HOLD_FILE_VARIABLE})"
    log.warning(message)
    if say is not None:
        say(message)
    while _names(Path(hold_file), name):
        time.sleep(RECHECK_SECONDS)
    log.warning("let go at %s", name)


def _names(hold_file: Path, name: str) -> bool:
    try:
        return hold_file.read_text().strip() == name
    except FileNotFoundError:
        return False
