#!/usr/bin/env python
"""Benchmark `moequant convert` against `mlx_lm.convert` on the same checkpoint.

Runs the two tools alternately (A B A B ..., --pairs pairs), each as its own subprocess, and
measures for every run:

* wall time (perf_counter around the child's life),
* CPU time (user + sys of the child and its descendants, from os.wait4's rusage),
* peak RSS (ru_maxrss from os.wait4, KB on Linux; also VmHWM sampled from /proc/PID/status every
  --sample-interval seconds while it runs, which is all there is for a run killed by --timeout),

then deletes the run's DST. Prints a table of medians and the ratios moequant / mlx-lm, and with
--json the full record. --compare-outputs keeps the last pair's outputs and checks that modules both
tools quantized with the same parameters dequantize to the same values (and that tensors both kept
float are equal), listing what was compared and what was not.

    python benchmarks/run_convert.py /work/bench-data/qwen3moe-2.8gb --pairs 3 --compare-outputs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOLS = ("moequant", "mlx-lm")
MODE_DEFAULTS = {"affine": (4, 64), "mxfp4": (4, 32), "nvfp4": (4, 16), "mxfp8": (8, 32)}  # bits, group


# ---------------------------------------------------------------------------------------------
# one measured run


@dataclass
class Run:
    tool: str
    pair: int
    cmd: list[str]
    status: str = ""  # ok | failed | did not finish
    returncode: int | None = None
    wall_s: float = 0.0
    user_s: float = 0.0
    sys_s: float = 0.0
    cpu_s: float = 0.0
    maxrss_kb: int = 0  # ru_maxrss of the child (from os.wait4)
    vmhwm_kb: int = 0  # largest VmHWM sampled from /proc/PID/status while it ran
    samples: int = 0
    in_blocks: int = 0  # ru_inblock: 512-byte blocks read from disk (not page cache)
    out_blocks: int = 0
    major_faults: int = 0
    output_bytes: int = 0
    # machine-wide, from /proc/stat over the run: CPU time not spent by this run (other processes:
    # a concurrent test suite skews the figures) and time CPUs sat idle waiting for I/O
    other_cpu_s: float = 0.0
    iowait_s: float = 0.0
    log: str = ""
    rss_trace: list = field(default_factory=list)  # (seconds, VmRSS KB) every few samples

    @property
    def peak_kb(self) -> int:
        return max(self.maxrss_kb, self.vmhwm_kb)


def _proc_status(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return out


def _cpu_jiffies() -> tuple[int, int, int]:
    """(busy, iowait, total) jiffies of all CPUs, from the first line of /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0, 0
    idle, iowait = fields[3], fields[4] if len(fields) > 4 else 0
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle - iowait, iowait, total


def measure(tool: str, pair: int, cmd: list[str], log_path: Path, timeout: float, interval: float,
            env: dict) -> Run:
    run = Run(tool, pair, cmd, log=str(log_path))
    with open(log_path, "w") as log:
        log.write("$ " + shlex.join(cmd) + "\n")
        log.flush()
        busy0, iowait0, _ = _cpu_jiffies()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
        done = threading.Event()
        killed = threading.Event()

        def sample() -> None:
            n = 0
            while not done.wait(interval):
                st = _proc_status(proc.pid)
                if st:
                    run.vmhwm_kb = max(run.vmhwm_kb, st.get("VmHWM", 0))
                    run.samples += 1
                    if n % 4 == 0:  # every 2 s at the default interval
                        run.rss_trace.append((round(time.perf_counter() - start, 1), st.get("VmRSS", 0)))
                    n += 1
                if time.perf_counter() - start > timeout and not killed.is_set() and not done.is_set():
                    killed.set()
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, ru = os.wait4(proc.pid, 0)
        run.wall_s = time.perf_counter() - start
        busy1, iowait1, _ = _cpu_jiffies()
        done.set()
        sampler.join()
    proc.returncode = run.returncode = os.waitstatus_to_exitcode(status)
    run.user_s, run.sys_s = ru.ru_utime, ru.ru_stime
    run.cpu_s = ru.ru_utime + ru.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    run.other_cpu_s = max(0.0, (busy1 - busy0) / tick - run.cpu_s)
    run.iowait_s = (iowait1 - iowait0) / tick
    run.maxrss_kb = ru.ru_maxrss
    run.in_blocks, run.out_blocks, run.major_faults = ru.ru_inblock, ru.ru_oublock, ru.ru_majflt
    run.status = "did not finish" if killed.is_set() else "ok" if run.returncode == 0 else "failed"
    return run


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def remove_outputs(out_dir: Path, name: str) -> None:
    """DST and anything a killed run left beside it (moequant's hidden partial folder)."""
    for p in [out_dir / name, *out_dir.glob(f".{name}*")]:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()


# ---------------------------------------------------------------------------------------------
# commands


def snapshot(rev: str, out_dir: Path) -> tuple[str, Path]:
    """`git archive REV src` of this repository, extracted under out_dir: moequant as committed,
    unaffected by edits made to the working tree while the benchmark runs."""
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                         capture_output=True, text=True, check=True).stdout.strip()
    root = out_dir / f"moequant-{sha[:12]}"
    if not (root / "src" / "moequant" / "__init__.py").exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", sha, "src"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    return sha, root / "src"


def commands(a: argparse.Namespace, dst: dict[str, Path]) -> dict[str, list[str]]:
    bits, group = a.bits, a.group_size
    moequant_bin = Path(sys.executable).with_name("moequant")
    if a.moequant_src is None and moequant_bin.exists():
        moequant = [str(moequant_bin)]
    else:  # with --moequant-commit, PYTHONPATH puts the snapshot before the installed package
        moequant = [sys.executable, "-m", "moequant"]
    moequant += ["convert", str(a.src), str(dst["moequant"]), "--mode", a.mode, "--bits", str(bits),
                 "--group-size", str(group), "--quiet", *shlex.split(a.moequant_args)]
    mlx_lm = [sys.executable, "-m", "mlx_lm", "convert", "--hf-path", str(a.src), "--mlx-path",
              str(dst["mlx-lm"]), "-q", "--q-bits", str(bits), "--q-group-size", str(group),
              "--q-mode", a.mode, *shlex.split(a.mlx_lm_args)]
    return {"moequant": moequant, "mlx-lm": mlx_lm}


# ---------------------------------------------------------------------------------------------
# output comparison


def _quant_params(config: dict, path: str, tensors: dict):
    """(mode, bits, group_size, global_scale) of a stored module, as mlx-lm's loader reads them: a
    per-path dict in config.json's `quantization` goes to `to_quantized(**entry)`, so a missing
    "mode" there means affine (mlx-lm writes its qwen3_moe gates as {"group_size": 64, "bits": 8}
    whatever --q-mode); other modules take the top-level defaults."""
    q = config.get("quantization") or config.get("quantization_config") or {}
    entry = q.get(path)
    if isinstance(entry, dict):
        mode, bits, group = entry.get("mode", "affine"), entry.get("bits", 4), entry.get("group_size", 64)
    else:
        mode, bits, group = q.get("mode", "affine"), q.get("bits"), q.get("group_size")
    return mode, bits, group, f"{path}.global_scale" in tensors


def _describe(p) -> str:
    return "float" if p is None else f"{p[0]}·{p[1]}·g{p[2]}" + ("+gs" if p[3] else "")


def _pattern(path: str) -> str:
    return re.sub(r"\.layers\.\d+\.", ".layers.{l}.", path)


def compare_outputs(dir_a: Path, dir_b: Path, names=("moequant", "mlx-lm")) -> dict:
    import mlx.core as mx

    def open_dir(d: Path):
        config = json.loads((d / "config.json").read_text())
        index_file = d / "model.safetensors.index.json"
        if index_file.exists():
            files = sorted(set(json.loads(index_file.read_text())["weight_map"].values()))
        else:
            files = [p.name for p in sorted(d.glob("*.safetensors"))]
        tensors = {}
        for f in files:
            tensors.update(mx.load(str(d / f)))  # lazy: data is read when a tensor is evaluated
        return config, tensors

    (ca, ta), (cb, tb) = open_dir(dir_a), open_dir(dir_b)

    def modules(tensors):
        quantized = {k[: -len(".scales")] for k in tensors if k.endswith(".scales")}
        floats = {k[: -len(".weight")] for k in tensors if k.endswith(".weight")} - quantized
        return quantized, floats

    qa, fa = modules(ta)
    qb, fb = modules(tb)
    rows: dict[str, dict] = {}  # pattern -> summary

    def note(path, verdict, a_params, b_params, detail=None):
        key = (_pattern(path), verdict, _describe(a_params), _describe(b_params))
        r = rows.setdefault(key, {"modules": _pattern(path), "verdict": verdict, names[0]: _describe(a_params),
                                  names[1]: _describe(b_params), "count": 0, "max_abs_diff": 0.0})
        r["count"] += 1
        if detail is not None:
            r["max_abs_diff"] = max(r["max_abs_diff"], detail)

    for path in sorted(qa | qb | fa | fb):
        pa = _quant_params(ca, path, ta) if path in qa else None
        pb = _quant_params(cb, path, tb) if path in qb else None
        in_a, in_b = path in qa or path in fa, path in qb or path in fb
        if not (in_a and in_b):
            note(path, f"only in {names[0] if in_a else names[1]}", pa, pb)
            continue
        if pa is None and pb is None:
            wa, wb = ta[f"{path}.weight"], tb[f"{path}.weight"]
            same = wa.shape == wb.shape and wa.dtype == wb.dtype and bool(mx.array_equal(wa, wb).item())
            diff = None if same or wa.shape != wb.shape else mx.abs(wa.astype(mx.float32) - wb.astype(mx.float32)).max().item()
            note(path, "float, equal" if same else "float, DIFFERENT", pa, pb, diff)
            continue
        if pa is None or pb is None or pa != pb:
            note(path, "not compared (different quantization)", pa, pb)
            continue
        mode, bits, group, _ = pa

        def deq(t, p):
            w, s, b = t[f"{p}.weight"], t[f"{p}.scales"], t.get(f"{p}.biases")
            args = dict(group_size=group, bits=bits, mode=mode, dtype=mx.float32)
            if (gs := t.get(f"{p}.global_scale")) is not None:  # one tensor scale per expert
                return mx.stack([mx.dequantize(w[e], s[e], None, global_scale=gs[e], **args)
                                 for e in range(w.shape[0])])
            return mx.dequantize(w, s, b, **args)

        packed_same = all(
            (k in ta) == (k in tb) and (k not in ta or bool(mx.array_equal(ta[k], tb[k]).item()))
            for k in (f"{path}.weight", f"{path}.scales", f"{path}.biases", f"{path}.global_scale")
        )
        da, db = deq(ta, path), deq(tb, path)
        equal = da.shape == db.shape and bool(mx.array_equal(da, db, equal_nan=True).item())
        diff = None
        if not equal and da.shape == db.shape:
            diff = mx.abs(da.astype(mx.float32) - db.astype(mx.float32)).max().item()
        verdict = ("dequantized equal" + (" (packed identical)" if packed_same else " (packed differs)")
                   if equal else "dequantized DIFFERENT")
        note(path, verdict, pa, pb, diff)
        del da, db
        mx.clear_cache()

    # tensors that are not module weights (e.g. biases of layers, global scales) — just list them
    known = (".weight", ".scales", ".biases", ".global_scale")
    extra_a = sorted(k for k in ta if not k.endswith(known))
    extra_b = sorted(k for k in tb if not k.endswith(known))
    summary = list(rows.values())
    bad = [r for r in summary if "DIFFERENT" in r["verdict"]]
    compared = sum(r["count"] for r in summary if r["verdict"].startswith("dequantized"))
    return {"ok": not bad, "quantized_modules_compared": compared, "rows": summary,
            "other_tensors": {names[0]: extra_a, names[1]: extra_b},
            "quantization": {names[0]: ca.get("quantization"), names[1]: cb.get("quantization")}}


# ---------------------------------------------------------------------------------------------
# report


def _median(values):
    return statistics.median(values) if values else None


def summarize(runs: list[Run]) -> dict:
    out = {}
    for tool in TOOLS:
        mine = [r for r in runs if r.tool == tool]
        ok = [r for r in mine if r.status == "ok"]
        out[tool] = {
            "runs": len(mine), "ok": len(ok),
            "did_not_finish": sum(r.status == "did not finish" for r in mine),
            "failed": sum(r.status == "failed" for r in mine),
            "median_wall_s": _median([r.wall_s for r in ok]),
            "median_cpu_s": _median([r.cpu_s for r in ok]),
            "median_peak_rss_kb": _median([r.peak_kb for r in ok]),
            "min_wall_s": min((r.wall_s for r in ok), default=None),
            "max_wall_s": max((r.wall_s for r in ok), default=None),
            "min_peak_rss_kb": min((r.peak_kb for r in ok), default=None),
            "max_peak_rss_kb": max((r.peak_kb for r in ok), default=None),
            "median_output_bytes": _median([r.output_bytes for r in ok]),
            "median_iowait_s": _median([r.iowait_s for r in ok]),
            "max_other_cpu_s": max((r.other_cpu_s for r in mine), default=None),
            "peak_rss_kb_of_unfinished": [r.peak_kb for r in mine if r.status == "did not finish"],
        }
    a, b = out["moequant"], out["mlx-lm"]
    out["ratio_moequant_over_mlx_lm"] = {
        k: (a[k] / b[k] if a[k] and b[k] else None)
        for k in ("median_wall_s", "median_cpu_s", "median_peak_rss_kb", "median_output_bytes")
    }
    return out


def _fmt_s(v):
    return "—" if v is None else f"{v:.1f} s"


def _fmt_kb(v):
    return "—" if v is None else f"{v / 2**20:.2f} GiB"


def _fmt_ratio(v):
    return "—" if v is None else f"{v:.2f}x"


def table(summary: dict, timeout: float) -> str:
    head = ["tool", "ok/runs", "median wall", "median CPU", "median peak RSS", "output", "wall range"]
    lines = []
    for tool in TOOLS:
        s = summary[tool]
        okruns = f"{s['ok']}/{s['runs']}"
        if s["did_not_finish"]:
            peak = max(s["peak_rss_kb_of_unfinished"])
            okruns += (f" ({s['did_not_finish']} did not finish in {timeout:g} s; "
                       f"peak RSS by then {peak / 2**20:.2f} GiB)")
        if s["failed"]:
            okruns += f" ({s['failed']} failed)"
        rng = "—" if s["min_wall_s"] is None else f"{s['min_wall_s']:.1f}–{s['max_wall_s']:.1f} s"
        out = "—" if s["median_output_bytes"] is None else f"{s['median_output_bytes'] / 1e9:.3f} GB"
        lines.append([tool, okruns, _fmt_s(s["median_wall_s"]), _fmt_s(s["median_cpu_s"]),
                      _fmt_kb(s["median_peak_rss_kb"]), out, rng])
    r = summary["ratio_moequant_over_mlx_lm"]
    lines.append(["moequant / mlx-lm", "", _fmt_ratio(r["median_wall_s"]), _fmt_ratio(r["median_cpu_s"]),
                  _fmt_ratio(r["median_peak_rss_kb"]), _fmt_ratio(r["median_output_bytes"]), ""])
    widths = [max(len(str(row[i])) for row in [head, *lines]) for i in range(len(head))]
    fmt = lambda row: "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, lines)])


def environment(src: Path) -> dict:
    import importlib.metadata as md

    def version(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    def git(*args):
        try:
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    config = json.loads((src / "config.json").read_text())
    return {
        "python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
        "mem_total_kb": next((int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")), None),
        "mlx": version("mlx"), "mlx-lm": version("mlx-lm"), "moequant": version("moequant"),
        "moequant_git_head": git("rev-parse", "HEAD"),
        "moequant_git_dirty": [l for l in (git("status", "--porcelain", "--", "src") or "").splitlines()],
        "src": str(src), "src_bytes": folder_bytes(src),
        "src_config": {k: config.get(k) for k in ("model_type", "num_hidden_layers", "num_experts", "hidden_size",
                                                  "moe_intermediate_size", "vocab_size", "torch_dtype")},
    }


def warm_page_cache(src: Path) -> float:
    """Read every file of SRC once so that the first run does not pay for a cold cache alone."""
    start = time.perf_counter()
    for f in sorted(src.iterdir()):
        if f.is_file():
            with open(f, "rb") as fh:
                while fh.read(64 << 20):
                    pass
    return time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("src", type=Path, help="Hugging Face checkpoint folder (e.g. from make_synthetic.py)")
    ap.add_argument("--pairs", type=int, default=3, help="moequant/mlx-lm pairs to run")
    ap.add_argument("--mode", choices=sorted(MODE_DEFAULTS), default="affine")
    ap.add_argument("--bits", type=int, help="bits per weight (default: the mode's: 4, mxfp8 8)")
    ap.add_argument("--group-size", type=int, help="group size (default: the mode's: affine 64, mxfp4 32, nvfp4 16, mxfp8 32)")
    ap.add_argument("--first", choices=TOOLS, default="moequant", help="which tool runs first in each pair")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds before a run is killed")
    ap.add_argument("--sample-interval", type=float, default=0.5, help="seconds between /proc VmHWM samples")
    ap.add_argument("--out-dir", type=Path, default=Path("/work/bench-data/runs"),
                    help="where DSTs and logs go (outside the repo)")
    ap.add_argument("--moequant-commit", metavar="REV",
                    help="benchmark moequant as committed at REV (git archive into --out-dir, run with "
                         "PYTHONPATH), not the working tree that others may be editing")
    ap.add_argument("--moequant-args", default="", help="extra arguments for moequant convert (one string)")
    ap.add_argument("--mlx-lm-args", default="", help="extra arguments for mlx_lm convert (one string)")
    ap.add_argument("--compare-outputs", action="store_true",
                    help="keep the last pair's outputs and compare their dequantized weights")
    ap.add_argument("--keep-outputs", action="store_true", help="with --compare-outputs: do not delete them after")
    ap.add_argument("--no-sync", action="store_true",
                    help="do not flush dirty pages (sync) before each run: by default no run pays for "
                         "the write-back of the previous run's output")
    ap.add_argument("--no-warm", action="store_true", help="do not read SRC once before the first run")
    ap.add_argument("--json", nargs="?", const="-", metavar="PATH",
                    help="write the full record as JSON to PATH (or stdout, the table then goes to stderr)")
    a = ap.parse_args(argv)

    a.src = a.src.resolve()
    if not (a.src / "config.json").exists():
        ap.error(f"{a.src}: no config.json; expected a checkpoint folder")
    d_bits, d_group = MODE_DEFAULTS[a.mode]
    a.bits, a.group_size = a.bits or d_bits, a.group_size or d_group
    if REPO in a.out_dir.resolve().parents or a.out_dir.resolve() == REPO:
        ap.error(f"--out-dir {a.out_dir}: inside the repository; pick a folder outside it")
    a.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = a.out_dir / f"logs-{stamp}"
    logs.mkdir()
    report = sys.stderr if a.json == "-" else sys.stdout

    def say(*args):
        print(*args, file=sys.stderr, flush=True)

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    a.moequant_src = None
    if a.moequant_commit:
        sha, a.moequant_src = snapshot(a.moequant_commit, a.out_dir)
        a.moequant_commit = sha
    envs = {"moequant": env, "mlx-lm": env}
    if a.moequant_src is not None:
        envs["moequant"] = {**env, "PYTHONPATH": os.pathsep.join(
            [str(a.moequant_src), *filter(None, [os.environ.get("PYTHONPATH")])])}
    dst = {t: a.out_dir / f"{t}-out" for t in TOOLS}
    cmds = commands(a, dst)
    for t in TOOLS:
        remove_outputs(a.out_dir, dst[t].name)
    info = environment(a.src)
    say(f"src {a.src}: {info['src_bytes'] / 1e9:.3f} GB; {a.mode} {a.bits}-bit group {a.group_size}; "
        f"{a.pairs} pairs; timeout {a.timeout:g} s; logs in {logs}")
    if a.moequant_src is not None:
        where = subprocess.run([sys.executable, "-c", "import moequant; print(moequant.__file__)"],
                               capture_output=True, text=True, env=envs["moequant"]).stdout.strip()
        if not where.startswith(str(a.moequant_src)):
            say(f"error: with PYTHONPATH={a.moequant_src}, moequant is imported from {where!r}")
            return 2
        say(f"moequant: commit {a.moequant_commit} from {a.moequant_src} (PYTHONPATH)")
        info["moequant_benchmarked"] = f"commit {a.moequant_commit}"
    elif info["moequant_git_dirty"]:
        info["moequant_benchmarked"] = "working tree (uncommitted changes in src/)"
        say(f"note: moequant src/ has uncommitted changes ({len(info['moequant_git_dirty'])} files): "
            "the figures are for the working tree (--moequant-commit HEAD pins a commit)")
    else:
        info["moequant_benchmarked"] = f"working tree = commit {info['moequant_git_head']}"
    for t in TOOLS:
        say(f"  {t}: {shlex.join(cmds[t])}")
    if not a.no_warm:
        say(f"warmed the page cache with SRC in {warm_page_cache(a.src):.1f} s")

    order = [a.first, *(t for t in TOOLS if t != a.first)]
    runs: list[Run] = []
    comparison = None
    for pair in range(1, a.pairs + 1):
        for tool in order:
            if not a.no_sync:
                os.sync()
            run = measure(tool, pair, cmds[tool], logs / f"{pair:02d}-{tool}.log", a.timeout,
                          a.sample_interval, envs[tool])
            run.output_bytes = folder_bytes(dst[tool]) if run.status == "ok" else 0
            runs.append(run)
            line = (f"pair {pair} {tool:8s}: {run.status:14s} wall {run.wall_s:7.1f} s  CPU {run.cpu_s:7.1f} s  "
                    f"peak RSS {run.peak_kb / 2**20:5.2f} GiB (ru_maxrss {run.maxrss_kb / 2**20:.2f}, "
                    f"VmHWM {run.vmhwm_kb / 2**20:.2f})  output {run.output_bytes / 1e9:.3f} GB  "
                    f"[other CPU {run.other_cpu_s:.1f} s, iowait {run.iowait_s:.1f} s]")
            say(line)
            if run.status == "failed":
                how = (f"killed by signal {-run.returncode}" + (" (SIGKILL: out of memory? see dmesg)"
                       if run.returncode == -signal.SIGKILL else "")) if run.returncode < 0 else f"exit status {run.returncode}"
                say(f"    {tool} failed: {how}")
            if run.status != "ok":
                tail = Path(run.log).read_text(errors="replace").splitlines()[-15:]
                say("    " + "\n    ".join(tail))
            keep = a.compare_outputs and pair == a.pairs and run.status == "ok"
            if not keep:
                remove_outputs(a.out_dir, dst[tool].name)
    if a.compare_outputs:
        if all(dst[t].exists() for t in TOOLS):
            say("comparing the last pair's outputs ...")
            start = time.perf_counter()
            comparison = compare_outputs(dst["moequant"], dst["mlx-lm"])
            comparison["seconds"] = round(time.perf_counter() - start, 1)
        else:
            comparison = {"ok": False, "error": "the last pair did not produce both outputs"}
        if not a.keep_outputs:
            for t in TOOLS:
                remove_outputs(a.out_dir, dst[t].name)

    summary = summarize(runs)
    print(table(summary, a.timeout), file=report)
    busy = [r for r in runs if r.other_cpu_s > 0.1 * max(r.cpu_s, 1.0)]
    if busy:
        print(f"warning: other processes used > 10% as much CPU as the run itself during {len(busy)} of "
              f"{len(runs)} runs (up to {max(r.other_cpu_s for r in busy):.1f} s): wall times are skewed",
              file=report)
    if comparison is not None:
        print("", file=report)
        if "rows" in comparison:
            print(f"output comparison ({comparison['quantized_modules_compared']} quantized modules compared): "
                  f"{'OK' if comparison['ok'] else 'DIFFERENCES FOUND'}", file=report)
            for r in comparison["rows"]:
                extra = f"  max |diff| {r['max_abs_diff']:.3g}" if r["max_abs_diff"] else ""
                print(f"  {r['count']:4d} x {r['modules']:45s} moequant {r['moequant']:17s} "
                      f"mlx-lm {r['mlx-lm']:17s} {r['verdict']}{extra}", file=report)
            for t, extra in comparison["other_tensors"].items():
                if extra:
                    print(f"  other tensors only checked for presence in {t}: {len(extra)}", file=report)
        else:
            print(f"output comparison: {comparison['error']}", file=report)
    record = {"environment": info, "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
              "commands": cmds, "summary": summary, "runs": [asdict(r) | {"peak_kb": r.peak_kb} for r in runs],
              "comparison": comparison, "logs": str(logs)}
    if a.json:
        text = json.dumps(record, indent=2, default=str)
        if a.json == "-":
            print(text)
        else:
            Path(a.json).write_text(text + "\n")
            say(f"wrote {a.json}")
    failed = any(r.status != "ok" for r in runs) or (comparison is not None and not comparison.get("ok"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
