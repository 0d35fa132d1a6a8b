"""runtime/memory.py: what a finished thread freed goes back to the system."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from runtime import memory

ROOT = Path(__file__).resolve().parent.parent


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.mark.skipif(memory._malloc_trim is None, reason="the C library has no malloc_trim")
def test_memory_a_finished_thread_freed_leaves_the_rss():
    kept: list[bytes] = []

    def work() -> None:  # like a deployment: its own thread, so its own malloc arena
        blocks = [bytes(2000) for _ in range(50_000)]  # 100 MB
        kept.extend(blocks[::25])  # a survivor every 50 KB: glibc alone gives none of it back

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    before = rss_mb()
    memory.give_back_freed_memory()
    assert rss_mb() < before - 50, "the ~96 MB freed stayed in the process"
    assert len(kept) == 2000


ARENAS_AFTER_SIX_THREADS = """
import ctypes, sys, threading
from runtime import memory
if sys.argv[1] == "capped":
    memory.use_few_malloc_arenas()
started, done = threading.Barrier(7), threading.Event()
def work():
    kept = bytearray(4000)  # malloc's, not Python's small-object allocator: the thread's arena
    started.wait()  # all six hold memory at once, so none may take a finished thread's arena
    done.wait()
threads = [threading.Thread(target=work) for _ in range(6)]
for thread in threads:
    thread.start()
started.wait()
ctypes.CDLL(None).malloc_stats()  # one "Arena N:" paragraph per arena, on stderr
done.set()
"""


@pytest.mark.skipif(memory._malloc_trim is None, reason="not glibc")
@pytest.mark.parametrize("variant, most", [("capped", memory.MALLOC_ARENAS), ("glibc's default", 7)])
def test_the_daemons_threads_share_few_malloc_arenas(variant: str, most: int):
    """Six threads holding memory at once: with the daemon's cap they share MALLOC_ARENAS arenas
    (the main one among them); with glibc's default (the control) each gets its own."""
    glibc_defaults = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")}
    result = subprocess.run([sys.executable, "-c", ARENAS_AFTER_SIX_THREADS, variant], cwd=ROOT, env=glibc_defaults,
                            capture_output=True, text=True, check=True)
    arenas = len(re.findall(r"^Arena \d+:", result.stderr, re.MULTILINE))
    # The control's 7 shows the six threads would each take an arena, so the cap's 2 is the cap's doing.
    assert arenas == most, result.stderr
