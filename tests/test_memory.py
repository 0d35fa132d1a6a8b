"""runtime/memory.py: what a finished thread freed goes back to the system."""

from __future__ import annotations

import threading

import pytest

from runtime import memory


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
