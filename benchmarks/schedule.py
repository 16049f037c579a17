"""Predicted pool wall of a plain conversion's units (procpool.units) against the earlier schedule
(3 or so equal shares of each layer when there are fewer groups than workers, the first share with
the layer's other tensors; whole groups in order otherwise), for a machine with more cores than
this one (issue 16).

Each unit costs SCALE x (A + B x its source bytes), the embeddings' and lm_head's bytes EMB times
as much; a worker's first unit WARMUP more, a unit of a group the worker did before (the graph
rebuilt) REBUILD more. Each worker takes the next unit as soon as it is free, as the pool's queue
does. A, B and EMB were measured with one worker on the 2-core VM (MOEQUANT_TIMELINE=1, units of
4 to 64 experts of the 6 GB layout: 0.045 s a unit, 2.0 ms a MB; the embeddings group 0.65-0.70 s
for 268 MB); SCALE 1.35 with WARMUP 0 gives 1.26 s for the earlier schedule on 16 workers, where
the 16-core device measured a pool of 1.24 s (BENCHMARKS.md, 06:00 UTC run).

    python benchmarks/schedule.py SRC [--workers 8 16] [--scale 1.35] [--warmup 0] [--units]
"""

from __future__ import annotations

import argparse
import heapq
from pathlib import Path

from moequant import procpool
from moequant.convert import Conversion
from moequant.formats import Quant
from moequant.procpool import Unit

A, B, EMB = 0.045, 2.0e-3 / 2**20, 33 / 28.4


def earlier(sizes: list[tuple[int, int, int]], workers: int) -> list[Unit]:
    """procpool.units before the balanced schedule (at 72c6491), plain conversion."""
    stacked = [i for i, (r, x, n) in enumerate(sizes) if x] if len(sizes) < workers else []
    free = max(workers - (len(sizes) - len(stacked)), 1)
    n = min(range(1, 5), key=lambda s: (-(-len(stacked) * s // free) / s, s)) if stacked else 1
    shares = [n if i in stacked else 1 for i in range(len(sizes))]
    return sorted((Unit(i, k, k + 1, shares[i], k == 0) for i in range(len(sizes)) for k in range(shares[i])),
                  key=lambda u: (u.start, u.group))


def seconds(u: Unit, sizes, scale: float) -> float:
    r, x, _ = sizes[u.group]
    if u.slices == 1:
        return scale * (A + B * (r + x) * (1 if x else EMB))
    return scale * (A + B * ((r if u.rest else 0) + x * (u.stop - u.start) / u.slices))


def simulate(units: list[Unit], sizes, workers: int, scale: float, warmup: float, rebuild: float):
    """(pool wall, each worker's busy seconds)."""
    free = [(0.0, w) for w in range(workers)]
    seen: dict[int, set] = {w: set() for w in range(workers)}
    busy = [0.0] * workers
    for u in units:
        t, w = heapq.heappop(free)
        c = seconds(u, sizes, scale) + (0 if seen[w] else warmup) + (rebuild if u.group in seen[w] else 0)
        seen[w].add(u.group)
        busy[w] += c
        heapq.heappush(free, (t + c, w))
    return max(t for t, _ in free), busy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 4, 8, 10, 12, 16, 24, 32])
    ap.add_argument("--scale", type=float, default=1.35, help="the machine's unit time / the VM's one-worker time")
    ap.add_argument("--warmup", type=float, default=0.0, help="seconds more for a worker's first unit")
    ap.add_argument("--rebuild", type=float, default=0.03, help="seconds more for a second unit of a group")
    ap.add_argument("--units", action="store_true", help="list the units for the largest worker count")
    a = ap.parse_args()
    conv = Conversion(a.src, Quant.make("affine", 4, 64))
    groups = conv.ckpt.groups()
    sizes = procpool._sizes(conv, groups)
    work = sum(seconds(Unit(i), sizes, a.scale) for i in range(len(sizes)))
    for workers in a.workers:
        rows = []
        for name, units in (("earlier", earlier(sizes, workers)), ("now", procpool.units(conv, groups, workers))):
            wall, busy = simulate(units, sizes, workers, a.scale, a.warmup, a.rebuild)
            rows.append(f"{name} {len(units):3d} units {wall:5.2f} s ({wall / (work / workers):.2f}x, "
                        f"busy {min(busy):.2f}-{max(busy):.2f})")
        print(f"{workers:3d} workers, whole groups' work / workers {work / workers:5.2f} s | " + " | ".join(rows))
    if a.units:
        for u in procpool.units(conv, groups, a.workers[-1]):
            print(u, f"{seconds(u, sizes, a.scale):.3f} s")


if __name__ == "__main__":
    main()
