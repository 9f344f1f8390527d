"""Bound glibc's malloc arenas in the service and the processes it spawns.

glibc gives each thread that allocates concurrently an arena of its own, up to eight per core,
and returns little of an arena's memory to the system. The receiver runs one thread per
association and each C-STORE allocates the whole instance, so under concurrent large stores
its resident memory climbs step by step and stays up (a soak showed +250 MiB without a bound,
flat with two arenas). The systemd unit sets MALLOC_ARENA_MAX=2 for this; `bound_arenas`
applies the same bound to a node started any other way (`make run`, a container, a test), to
this process with mallopt and to the workers and receivers it spawns through the environment
glibc reads at their start.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

ARENAS = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter number


def bound_arenas(arenas: int = ARENAS) -> bool:
    """Apply the bound unless MALLOC_ARENA_MAX is set already (the admin's value wins); True
    when this process's allocator took it (glibc), False elsewhere (musl, macOS)."""
    wanted = int(os.environ.setdefault("MALLOC_ARENA_MAX", str(arenas)))
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    taken = bool(mallopt(_M_ARENA_MAX, wanted) == 1)
    if not taken:
        log.debug("mallopt(M_ARENA_MAX, %d) was refused", wanted)
    return taken
