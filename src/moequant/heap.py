"""The C heap of this process (glibc's malloc; elsewhere these do nothing): hand its free pages
back (`trim`), and let threads share a few heaps (`few_arenas`)."""

from __future__ import annotations

import sys

ARENAS = 2  # malloc arenas the threads share after few_arenas
_M_ARENA_MAX = -8  # glibc's mallopt parameter


def _load_libc():
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:  # musl and other C libraries without them
        return None


_LIBC = _load_libc()


def trim() -> None:
    """Hand the C heap's free pages back to the system (glibc's malloc_trim). Without it a worker's
    RSS creeps up with every group it converts, though what it holds does not: 3 -> 9 layers of the
    6 GB layout, 2 workers, the larger worker's peak grew 231 -> 273 MB (with it, 200-208 -> 211 MB)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def few_arenas() -> None:
    """From now on, for the rest of the process, threads share at most ARENAS malloc arenas (glibc's
    M_ARENA_MAX; it holds once a thread has asked for a new arena, and is then fixed). By default
    each thread gets its own, up to 8 per core, and each keeps the large blocks its thread freed for
    its next ones: numpy's temporaries in the calibration pass's pool of 16 threads (emulated on the
    2-core VM, two 64-expert layers of the 6 GB layout) took the pass's peak RSS to 1.67 GiB, 1.37 GiB
    with 2 arenas. Ineffective (and harmless) once the process has made more than 8 arenas."""
    if _LIBC is not None:
        _LIBC.mallopt(_M_ARENA_MAX, ARENAS)
