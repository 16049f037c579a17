"""heap.py: the C heap's settings, read back from glibc itself (malloc_info's arenas)."""

import subprocess
import sys

import pytest

from moequant import heap

pytestmark = pytest.mark.skipif(heap._LIBC is None, reason="glibc's malloc only")

# 8 threads allocate and free 1 MB blocks at once (below glibc's mmap threshold once raised, so from
# their arenas), then malloc_info's XML says how many heaps (arenas) the process has
THREADS = """
import ctypes, sys, threading
from moequant import heap
if sys.argv[1] == "few":
    heap.few_arenas()
barrier = threading.Barrier(8)
def work():
    blocks = []
    barrier.wait()
    for _ in range(20):
        blocks.append(bytearray(1 << 20))
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
libc = ctypes.CDLL("libc.so.6")
libc.open_memstream.restype = ctypes.c_void_p
buf, size = ctypes.c_char_p(), ctypes.c_size_t()
stream = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
libc.malloc_info(0, ctypes.c_void_p(stream))
libc.fclose(ctypes.c_void_p(stream))
print(buf.value.decode().count("<heap nr="))
"""


def _arenas(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", THREADS, mode], capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_few_arenas_bounds_the_threads_arenas():
    assert _arenas("default") > heap.ARENAS  # each thread its own: the test can tell
    assert _arenas("few") <= heap.ARENAS
