#!/usr/bin/env python
"""Which part of a conversion scales with cores? Times the three pieces of moequant's per-layer
work — reading tensors (mx.load + eval), mx.quantize (affine), and both — in N threads (each on
its own mlx stream, as convert's workers were) and in N processes, and prints GB/s of bf16 input.

    python benchmarks/probe_scaling.py SRC --workers 1 4 16
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import threading
import time
from pathlib import Path

import mlx.core as mx


def expert_keys(src: Path, limit: int) -> list[tuple[str, str]]:
    index = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    keys = sorted(k for k in index if ".experts." in k)[:limit]
    return [(str(src / index[k]), k) for k in keys]


def job(kind: str, items: list[tuple[str, str]]) -> float:
    """Seconds of work on `items` in this thread/process; returns bytes done via the clock only."""
    with mx.stream(mx.new_stream(mx.cpu)):
        t = time.perf_counter()
        loaded: dict[str, dict] = {}
        shape = mx.load(items[0][0])[items[0][1]].shape
        for file, key in items:
            if kind == "quantize":
                w = mx.random.normal(shape, dtype=mx.bfloat16) * 0.02
                mx.eval(w)
            else:
                arrays = loaded.get(file) or loaded.setdefault(file, mx.load(file))
                w = arrays[key]
            if kind == "read":
                mx.eval(w)
            else:
                mx.eval(mx.quantize(w, 64, 4))
        return time.perf_counter() - t


def _proc(kind, items, q):
    q.put(job(kind, items))


def run(kind: str, how: str, n: int, items: list) -> float:
    """Wall seconds to do `items` split over n threads/processes (started before the clock)."""
    shares = [items[i::n] for i in range(n)]
    if how == "threads":
        barrier = threading.Barrier(n + 1)
        def go(share):
            barrier.wait()
            job(kind, share)
        ts = [threading.Thread(target=go, args=(s,)) for s in shares]
        for t in ts:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in ts:
            t.join()
        return time.perf_counter() - t0
    ctx = mp.get_context("forkserver")
    q = ctx.Queue()
    t0 = time.perf_counter()
    ps = [ctx.Process(target=_proc, args=(kind, s, q)) for s in shares]
    for p in ps:
        p.start()
    inner = max(q.get() for _ in ps)
    for p in ps:
        p.join()
    return inner  # the slowest worker's own time, process start excluded


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("src", type=Path)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--tensors", type=int, default=384)
    a = ap.parse_args()
    items = expert_keys(a.src, a.tensors)
    gb = sum(mx.load(f)[k].nbytes for f, k in items) / 1e9  # lazy: headers only
    print(f"{len(items)} expert tensors, {gb:.2f} GB bf16 (page cache warm)")
    print(f"{'piece':10s} {'how':10s} " + " ".join(f"{n:>3d} workers" for n in a.workers) + "   (GB/s)")
    for kind in ("read", "quantize", "both"):
        for how in ("threads", "processes"):
            rates = [gb / run(kind, how, n, items) for n in a.workers]
            print(f"{kind:10s} {how:10s} " + " ".join(f"{r:11.2f}" for r in rates), flush=True)


if __name__ == "__main__":
    main()
