"""Handing memory the daemon freed back to the system (glibc's malloc_trim, few malloc arenas),
and keeping what lives as long as the daemon out of the garbage collector's way.

glibc keeps what a thread freed in that thread's malloc arena, and frees pages to the system
only from the top of an arena: after a deployment's or a push's work (its threads gone, the
objects freed) the daemon's RSS stays at its peak. malloc_trim(0) returns every whole free page
of every arena. It costs a few milliseconds, so it is called after such work, never per request.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable


# dlopen(NULL): the symbols the process already has, libc's among them. Where the C library
# lacks a function (musl, macOS), its name below is None and the call is skipped.
_libc = ctypes.CDLL(None)
_malloc_trim: Callable[[int], int] | None = getattr(_libc, "malloc_trim", None)
_mallopt: Callable[[int, int], int] | None = getattr(_libc, "mallopt", None)

M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
MALLOC_ARENAS = 2  # the main arena and one the threads share


def use_few_malloc_arenas() -> None:
    """Let all threads share MALLOC_ARENAS malloc arenas instead of glibc's up to 8 per core.

    Each thread that mallocs gets an arena of its own up to that limit, and memory freed in an
    arena stays there, in pieces malloc_trim cannot return while one live block sits in a page:
    a daemon whose deploys, pushes and workers ran in a dozen threads kept a dozen such arenas
    (bench/projects.py: 90.0 MB with 50 projects deployed and idle, 75.6 MB with 2 arenas).
    Python takes the GIL to run code, so its threads hardly ever malloc at the same moment and
    gain nothing from arenas of their own. glibc fixes the limit when a thread first needs a
    new arena, so this is called before the daemon starts any thread. Where the C library has
    no mallopt (musl, macOS) nothing changes.
    """
    if _mallopt is not None:
        _mallopt(M_ARENA_MAX, MALLOC_ARENAS)


def give_back_freed_memory() -> None:
    """Collect cyclic garbage, then return the free pages of every malloc arena to the system."""
    gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)


def leave_start_up_objects_out_of_collections() -> None:
    """What exists now is never walked again by the cyclic garbage collector (gc.freeze).

    Called once, when start-up is done: its objects (modules, classes, functions, the app) live
    as long as the daemon, and a full collection walking them all took 20-60 ms on a 2-core
    machine, stalling whatever request ran then: that was the dashboard's p99. Objects made later
    are still collected; one of these that became garbage later would be kept, which start-up's
    objects, by being the daemon's own, do not become.
    """
    gc.freeze()
