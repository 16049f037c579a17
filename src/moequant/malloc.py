"""Let glibc keep freed memory for reuse during a conversion (Linux only; a no-op elsewhere).

mlx's CPU allocator takes every buffer from `malloc`. glibc serves blocks above 32 MB with a
fresh `mmap` and returns them with `munmap` when freed, so each expert stack read, stacked and
quantized is page-faulted in anew: on a 6 GB checkpoint that is ~2.7 million minor faults and
about 10 s of system time, 40 % of the conversion's CPU. Serving every block from the one main
heap and never trimming it makes the second and later layers reuse the first one's pages. Peak
RSS stays the peak of live memory (measured +3 % on that checkpoint), but it is no longer given
back before exit, so this is for the `moequant` process only, set before any thread allocates.
(On macOS, mlx's Metal allocator keeps its own buffer cache.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
NEVER_TRIM = 2**31 - 1  # the largest value mallopt takes (an int)


def keep_freed_memory() -> bool:
    """One heap for every thread, no mmap'd blocks, no trimming. True if glibc took all three."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(p, v) == 1 for p, v in ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER_TRIM)))
