#!/usr/bin/env python
"""How `moequant convert` scales with workers and cores, against mlx_lm.convert and the machine's
floors, all measured in the same run.

Floors (page cache warm, as the conversions run):
* read: SRC's files read once sequentially (16 MiB reads, one thread): the rate and SRC's time;
* write: as many bytes as moequant's output written to a new file beside DST (16 MiB writes, one
  thread, no fsync, as moequant does), then deleted;
* compute: the CPU seconds of the quantization work — the sum of the per-group `eval` column of a
  one-worker moequant run's timeline (MOEQUANT_TIMELINE=1: read + dequantize + quantize, fused by
  mlx) — divided by the cores.
The floor is the larger of the three; each run's wall is printed against it and against
mlx_lm.convert's.

Per run: wall (perf_counter around the child), CPU (user + sys of the child and its descendants, each
process's as last sampled: the workers are children of multiprocessing's forkserver, which nobody
waits for, so the kernel's count for the child misses them),
peak RSS summed over the process tree (sampled every 0.1 s; shared pages counted in every process
that maps them) and peak PSS summed over the tree (shared pages divided among their processes: the
memory the run really holds).

    python benchmarks/scaling.py SRC --workers 1 2 4 8 16          # worker sweep, all cores
    python benchmarks/scaling.py SRC --cores 1 2 4 8 16            # both tools pinned to k cores
    python benchmarks/scaling.py SRC --workers 16 --mode mxfp4 --no-mlx-lm
    python benchmarks/scaling.py SRC --workers 16 --config-cache cold --no-mlx-lm

Before the runs, untimed: `moequant inspect SRC` and the imports of the workers and of
mlx_lm.convert, which leave the bytecode of every module they import written (the runs keep it, as
an installed package has it; earlier runs of this script compiled the checkout's modules, and the
wheels device-scale.sh installs with --no-compile, in every run). Each run's wall is taken when it
exits (a thread waits on it), not at the next turn of the memory-sampling loop.

moequant keeps transformers' reading of config.json in its cache (target._transformers_config).
`--config-cache warm` (the default) gives every run a cache folder primed once, untimed: a model
converted before. `cold` gives each run an empty one: a model's first conversion, which has transformers
read config.json in a child process (without torch).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

MODE_DEFAULTS = {"affine": (4, 64), "mxfp4": (4, 32), "nvfp4": (4, 16), "mxfp8": (8, 32)}


def tree(pid: int) -> list[int]:
    """pid and its descendants (from /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def memory(pids: list[int]) -> tuple[int, int]:
    """(RSS, PSS) in bytes, summed over pids."""
    rss = pss = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            try:
                with open(f"/proc/{p}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            v = int(line.split()[1]) * 1024
                            rss += v
                            pss += v
            except OSError:
                pass
    return rss, pss


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """pid -> its user + system CPU seconds so far (/proc/PID/stat), for those still there."""
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[p] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, ValueError, IndexError):
            pass
    return out


def measure(tag: str, cmd: list[str], env: dict, timeout: float, cores: list[int] | None = None) -> dict:
    r0 = os.times()
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True,
                         preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)
    peak_rss = peak_pss = 0
    err: list[bytes] = []
    import threading

    reader = threading.Thread(target=lambda: err.append(p.stderr.read()), daemon=True)
    reader.start()
    ended: list[float] = []  # the exit's time, taken by a thread waiting on it (not the sampling loop's next turn)
    waiter = threading.Thread(target=lambda: (p.wait(), ended.append(time.perf_counter())), daemon=True)
    waiter.start()
    n, seen = 0, {}  # the tree's CPU seconds, each process's as last sampled
    while waiter.is_alive():
        if n % 3 == 0:
            pids = tree(p.pid)
        rss, pss = memory(pids)
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        seen.update(cpu_seconds(pids))
        n += 1
        if time.perf_counter() - t0 > timeout:
            os.killpg(p.pid, 9)
        waiter.join(0.1)
    wall = ended[0] - t0
    reader.join()
    r1 = os.times()
    text = b"".join(err).decode(errors="replace")
    # what the kernel counts for the child and the processes it waited for misses the workers (children of
    # multiprocessing's forkserver, which nobody waits for): the tree's processes as last sampled instead, each
    # missing up to one sampling interval (0.1 s), whichever is more
    waited = (r1.children_user - r0.children_user) + (r1.children_system - r0.children_system)
    cpu = max(waited, sum(seen.values()))
    return {"tag": tag, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_rss_gb": round(peak_rss / 1e9, 3),
            "peak_pss_gb": round(peak_pss / 1e9, 3), "rc": p.returncode, "stderr": text}


def read_floor(src: Path) -> tuple[float, int]:
    """Seconds to read SRC's files once, sequentially, and their bytes."""
    files = sorted(src.glob("*.safetensors"))
    buf = bytearray(16 << 20)
    total = 0
    t = time.perf_counter()
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                total += n
    return time.perf_counter() - t, total


def write_floor(folder: Path, nbytes: int) -> float:
    """Seconds to write nbytes to a new file (16 MiB writes, no fsync), then deleted."""
    path = folder / ".scaling-write-floor"
    buf = b"\x5a" * (16 << 20)
    t = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        done = 0
        while done < nbytes:
            done += os.write(fd, buf[: min(len(buf), nbytes - done)])
    finally:
        os.close(fd)
    seconds = time.perf_counter() - t
    path.unlink()
    return seconds


def eval_seconds(stderr: str) -> float:
    """Sum of the `eval` column of a MOEQUANT_TIMELINE table."""
    total = 0.0
    for line in stderr.splitlines():
        m = re.match(r"\s*\d+\s+(\S+)\s+[-\d.]+\s+[-\d.]+\s+[-\d.]+\s+([-\d.]+)\s", line)
        if m and not m[1].startswith("("):
            total += float(m[2])
    return total


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path)
    sweep = ap.add_mutually_exclusive_group()
    sweep.add_argument("--workers", type=int, nargs="+", help="moequant --workers values, on every core")
    sweep.add_argument("--cores", type=int, nargs="+",
                       help="pin both tools to the first k cores for each k (moequant's default workers)")
    ap.add_argument("--mode", choices=sorted(MODE_DEFAULTS), default="affine")
    ap.add_argument("--pool", choices=["processes", "threads"], default="processes")
    ap.add_argument("--moequant-args", default="", help="extra moequant arguments, one string")
    ap.add_argument("--no-mlx-lm", action="store_true", help="skip mlx_lm.convert")
    ap.add_argument("--config-cache", choices=["warm", "cold"], default="warm",
                    help="moequant's cache of transformers' config reading: primed once (warm) or empty per run")
    ap.add_argument("--out-dir", type=Path, default=Path("/tmp/scaling"))
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--floor-from", type=Path,
                    help="take the compute floor's CPU seconds from an earlier --json (no one-worker run here)")
    a = ap.parse_args()
    bits, group = MODE_DEFAULTS[a.mode]
    ncores = len(os.sched_getaffinity(0))
    a.out_dir.mkdir(parents=True, exist_ok=True)
    dst = a.out_dir / "out"
    py = sys.executable
    # bytecode written and kept (PYTHONDONTWRITEBYTECODE dropped), as an installed package has it: a source
    # checkout or wheels installed with --no-compile (../shared/bench/device-scale.sh) would otherwise have every
    # run compile typer, rich, pydantic, mlx-lm's and moequant's modules anew (0.45 s of CPU on the 2-core VM)
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}, "HF_HUB_OFFLINE": "1"}

    def moequant(workers: int | None, timeline: bool = False) -> list[str]:
        cmd = [py, "-m", "moequant", "convert", str(a.src), str(dst), "--mode", a.mode, "--bits", str(bits),
               "--group-size", str(group), "--quiet", "--pool", a.pool, *a.moequant_args.split()]
        return cmd + (["--workers", str(workers)] if workers else [])

    mlx_lm = [py, "-m", "mlx_lm", "convert", "--hf-path", str(a.src), "--mlx-path", str(dst), "-q", "--q-bits",
              str(bits), "--q-group-size", str(group), "--q-mode", a.mode]

    cache = a.out_dir / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    # untimed: the modules both tools import compiled, and SRC's config reading cached (emptied per run if cold)
    subprocess.run([py, "-m", "moequant", "inspect", str(a.src), "--quiet"], env={**env, "XDG_CACHE_HOME": str(cache)},
                   stdout=subprocess.DEVNULL, check=True)
    subprocess.run([py, "-c", "import moequant._workerboot, huggingface_hub.repocard_data" +
                    ("" if a.no_mlx_lm else "; import mlx_lm.convert")], env=env, check=True)

    def run(tag, cmd, timeline=False, cores=None):
        shutil.rmtree(dst, ignore_errors=True)
        if a.config_cache == "cold":
            shutil.rmtree(cache, ignore_errors=True)
        read_floor(a.src)  # the page cache warm for every run alike
        run_env = {**env, "XDG_CACHE_HOME": str(cache), **({"MOEQUANT_TIMELINE": "1"} if timeline else {})}
        r = measure(tag, cmd, run_env, a.timeout, cores)
        r["output_bytes"] = folder_bytes(dst)
        shutil.rmtree(dst, ignore_errors=True)
        if r["rc"]:
            print(f"{tag}: exit {r['rc']}: {r['stderr'][-400:]}", file=sys.stderr)
        print(json.dumps({k: v for k, v in r.items() if k != "stderr"}), file=sys.stderr, flush=True)
        return r

    read_s, src_bytes = read_floor(a.src)
    read_s, src_bytes = read_floor(a.src)  # warm
    if a.floor_from:
        earlier = json.loads(a.floor_from.read_text())
        one = {"stderr": "", "output_bytes": 0}
        compute_cpu = earlier["compute_cpu_s"] * src_bytes / earlier["src_bytes"]
        print(f"compute floor from {a.floor_from}, scaled by SRC size", file=sys.stderr)
    else:
        one = run("moequant w1 (timeline)", moequant(1, True), timeline=True, cores=None)
        compute_cpu = eval_seconds(one["stderr"])
    out_bytes = one["output_bytes"] or src_bytes // 3
    write_s = write_floor(a.out_dir, out_bytes)
    rows = []
    if a.cores:
        for k in a.cores:
            cores = list(sorted(os.sched_getaffinity(0)))[:k]
            base = None if a.no_mlx_lm else run(f"mlx_lm {k} cores", mlx_lm, cores=cores)
            r = run(f"moequant {k} cores", moequant(None), cores=cores)
            rows.append((f"{k} cores", k, r, base))
    else:
        base = None if a.no_mlx_lm else run("mlx_lm", mlx_lm)
        for w in a.workers or [1, 2, 4, 8, ncores]:
            r = (one if w == 1 and a.pool == "processes" and not a.floor_from
                 else run(f"moequant w{w}", moequant(w)))
            rows.append((f"{w} workers", ncores, r, base))

    print(f"\nSRC {a.src} {src_bytes / 1e9:.2f} GB, {a.mode} {bits}-bit g{group}, pool {a.pool}, {ncores} cores here, "
          f"config cache {a.config_cache}")
    print(f"floors: read {src_bytes / 1e9 / read_s:.2f} GB/s = {read_s:.2f} s; write {out_bytes / 1e9 / write_s:.2f} GB/s "
          f"= {write_s:.2f} s ({out_bytes / 1e9:.2f} GB); quantization CPU {compute_cpu:.1f} s "
          f"(sum of eval, 1 worker)")
    print("| run | wall s | CPU s | peak RSS GB (tree sum) | peak PSS GB | compute floor s | floor s | wall / floor "
          "| mlx_lm wall s | mlx_lm RSS GB | wall / mlx_lm |")
    print("| --- " * 11 + "|")
    for name, k, r, base in rows:
        compute = compute_cpu / k
        floor = max(read_s, write_s, compute)
        b = f"{base['wall_s']:.1f} | {base['peak_rss_gb']:.2f} | {r['wall_s'] / base['wall_s']:.2f}x" if base else "- | - | -"
        print(f"| {name} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['peak_rss_gb']:.2f} | {r['peak_pss_gb']:.2f} | "
              f"{compute:.2f} | {floor:.2f} | {r['wall_s'] / floor:.2f}x | {b} |")
    if a.json:
        a.json.write_text(json.dumps({"src_bytes": src_bytes, "read_s": read_s, "write_s": write_s,
                                      "compute_cpu_s": compute_cpu, "out_bytes": out_bytes, "cores": ncores,
                                      "rows": [{"name": n, "k": k, "run": {x: y for x, y in r.items() if x != "stderr"},
                                                "mlx_lm": base and {x: y for x, y in base.items() if x != "stderr"}}
                                               for n, k, r, base in rows],
                                      "timeline_w1": one["stderr"][-6000:]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
