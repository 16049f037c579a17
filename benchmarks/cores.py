#!/usr/bin/env python
"""Do the machine's cores scale for mlx's quantization? N processes at once, each timing
`mx.quantize` (affine 4-bit, group 64) of a bfloat16 [8192, 2048] 15 times on mlx's CPU; printed:
the median seconds per process and the throughput against one process alone. Hyperthreads, a
shared memory bus or a throttled clock show as a throughput well below N.

    python benchmarks/cores.py 1 4 8 16
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import time


def _one(results) -> None:
    import mlx.core as mx

    mx.set_default_device(mx.cpu)
    w = mx.random.normal((8192, 2048)).astype(mx.bfloat16)
    mx.eval(w)
    mx.eval(mx.quantize(w, 64, 4))  # warm
    start = time.perf_counter()
    for _ in range(15):
        mx.eval(mx.quantize(w, 64, 4))
    results.put(time.perf_counter() - start)


def main() -> None:
    ctx, base = mp.get_context("spawn"), None
    for n in map(int, sys.argv[1:] or ["1", "2"]):
        results = ctx.Queue()
        procs = [ctx.Process(target=_one, args=(results,)) for _ in range(n)]
        for p in procs:
            p.start()
        times = sorted(results.get() for _ in procs)
        for p in procs:
            p.join()
        median = times[len(times) // 2]
        base = base or median
        print(f"{n:3d} processes: median {median:.3f} s each (min {times[0]:.3f}, max {times[-1]:.3f}); "
              f"throughput {n * base / median:.2f}x one's", flush=True)


if __name__ == "__main__":
    main()
