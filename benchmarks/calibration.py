"""Calibration benchmark (issue 15): `--target-bpw --calib` (with and without `--rounding gptq`) on
the trained tiny Qwen3-MoE, streamed over the decoder layers (this tree) against the whole-model
method it replaced (a BASELINE source tree), and a plain `--bits 4` conversion; side by side in one
run, each conversion a subprocess of the CLI (worker processes, the CLI's default; `--pool threads`
for worker threads):

* wall time and CPU time (user + sys, worker processes included), and their ratios to the plain
  conversion's (on a shared machine the CPU time is the steadier figure);
* peak RSS and peak PSS summed over the conversion's processes (PSS shares the pages they map in
  common among them: the memory the run really holds);
* bits per weight (tensor bytes x 8 / parameters) and KL(float || output) in nats/token on held-out
  text (pycode-dev.bin, the windows of benchmarks/quality.py), with top-1 agreement;
* the phase timings `convert --json` reports (this tree only).

The baseline is the source tree of an earlier commit, e.g.

    git archive 1c7a4a4 src | tar -x -C /tmp/moequant-base
    python benchmarks/calibration.py --baseline /tmp/moequant-base/src

`--synthetic FOLDER …` instead: on each synthetic checkpoint of benchmarks/make_synthetic.py,
`--target-bpw 4 --calib ids.npy --rounding gptq` (ids drawn at random from the vocabulary,
--calib-sequences × --calib-length) with this tree (and the baseline, if given), a plain
`--bits 4`, and mlx-lm's own GPTQ (`mlx_lm.gptq`: mlx_lm.quant.gptq.gptq_quantize at 4 bits, group
64, on the same ids; its command line would download its own calibration text, so it is called as
its main() does, with the ids instead): wall time, CPU time and peak RSS (no KL: the weights are
random). Then, in this process, the rate of GPTQ's matrix work: layer 0's moments measured as the
conversion measures them, each of its modules rounded by moequant's GPTQ on one thread (modules
with the same inputs, an expert stack's gate and up or q/k/v, together, as the conversion rounds
them), its floating point operations over its CPU time, against numpy's float32 matmul rate measured in the
same run on GPTQ's shapes ([n, n] @ [n, R]), on one thread and on every core. The operations
counted are those GPTQ needs and performs: Cholesky n³/3 and triangular inverse n³/3 per H (once
for modules rounded together), the lazy updates R·n² and the check against plain rounding 2·R·n²
per matrix of R rows; and for a gate/up stack, whose H per expert is formed while GPTQ reads it
(calibrate.RoutedMoments, inside the time measured), forming it: per call with tokens routed to
the expert, x_routedᵀ x_routed's one triangle (BLAS syrk: T·n(n+1) for T tokens), the sum of the
calls' triangles (n(n+1)/2 per call after the first) and the mixing with the mean over every
token (3·n²). Not counted: what the implementation does beyond that (the factorizations' products
over whole blocks of their triangles, copies, the element-wise rounding). Needs only mlx, mlx-lm,
numpy, safetensors, typer and rich (no torch):

    python benchmarks/make_synthetic.py /tmp/syn6 --target-gb 6
    python benchmarks/calibration.py --synthetic /tmp/syn6 --mlx-lm-timeout 3600
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from quality import CALIB, CALIB_TEXT, SRC, dev_tokens, float_conversion, forward, parameter_count, \
    safetensors_bytes  # noqa: E402
from scaling import memory, tree as process_tree  # noqa: E402

TREE = HERE.parent / "src"


# mlx-lm's GPTQ as mlx_lm.quant.gptq.main runs it, on token ids from a file instead of its download
MLX_LM_GPTQ = """
import sys
import mlx.core as mx
import numpy as np
from mlx_lm.quant.gptq import gptq_quantize
from mlx_lm.utils import load, save
src, dst, ids, sequences, length = sys.argv[1:6]
model, tokenizer, config = load(src, lazy=True, return_config=True)
data = mx.array(np.load(ids)[: int(sequences) * int(length)].reshape(int(sequences), int(length)))
model, config["quantization"] = gptq_quantize(model, data, 4, 64, 6, 64)
save(dst, src, model, tokenizer, config)
"""


def _run(name: str, command: list[str], tree: Path | None = None, timeout: float | None = None,
         may_fail: bool = False) -> dict:
    """A subprocess: wall, CPU time (user + sys of it and its descendants), the peaks of RSS and PSS
    summed over its process tree (worker processes included; sampled every 0.1 s as scaling.py
    does), and its stdout; or, past `timeout` seconds, the time it was stopped at; or, `may_fail`,
    its error."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [os.environ.get("PYTHONPATH")])])
    before, start = os.times(), time.monotonic()
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks = [0, 0]

    def sample() -> None:
        while child.poll() is None:
            rss, pss = memory(process_tree(child.pid))
            peaks[:] = max(peaks[0], rss), max(peaks[1], pss)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        stdout, stderr = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        return {"wall_s": time.monotonic() - start, "stopped": True}
    wall = time.monotonic() - start
    sampler.join()
    after = os.times()
    if child.returncode and may_fail:
        return {"wall_s": wall, "failed": stderr.strip().splitlines()[-1]}
    if child.returncode:
        raise SystemExit(f"{name}: exit {child.returncode}\n{stderr[-2000:]}")
    cpu = after.children_user - before.children_user + after.children_system - before.children_system
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_gib": peaks[0] / 2**30, "peak_pss_gib": peaks[1] / 2**30,
            "stdout": stdout}


def convert(tree: Path, dst: Path, options: list[str], src: Path = SRC, pool: str = "processes") -> dict:
    """One `moequant convert src DST options` in a subprocess running `tree`'s moequant."""
    result = _run(dst.name, [sys.executable, "-m", "moequant", "convert", str(src), str(dst), *options, "--json",
                             "--pool", pool, "--force"], tree)
    result["seconds"] = json.loads(result.pop("stdout")).get("seconds", {})
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", type=Path, help="src folder of the earlier moequant to compare with")
    p.add_argument("--work", type=Path, default=Path("/tmp/moequant-calibration-bench"))
    p.add_argument("--windows", type=int, default=32, help="dev windows of 512 tokens scored")
    p.add_argument("--target-bpw", default="4")
    p.add_argument("--skip", action="append", default=[],
                   help="leave out the runs whose name contains this (`rate`: GPTQ's matmul rate)")
    p.add_argument("--synthetic", type=Path, nargs="+", help="make_synthetic.py checkpoints to measure instead")
    p.add_argument("--calib-sequences", type=int, default=8)
    p.add_argument("--calib-length", type=int, default=512)
    p.add_argument("--mlx-lm-timeout", type=float, default=3600, help="seconds mlx_lm.gptq may run (then stopped)")
    p.add_argument("--pool", choices=["processes", "threads"], default="processes",
                   help="moequant's workers: processes (the CLI's default) or threads")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.synthetic:
        return synthetic(args)
    if not CALIB.is_file():
        np.save(CALIB, np.frombuffer(CALIB_TEXT.read_bytes(), np.uint8).astype(np.int32))
    target = ["--target-bpw", args.target_bpw, "--calib", str(CALIB)]
    runs = [("plain --bits 4", TREE, ["--bits", "4"]),
            ("streamed --calib --rounding gptq", TREE, [*target, "--rounding", "gptq"]),
            ("streamed --calib", TREE, target)]
    if args.baseline:
        runs += [("whole-model --calib --rounding gptq", args.baseline, [*target, "--rounding", "gptq"]),
                 ("whole-model --calib", args.baseline, target)]
    runs = [r for r in runs if r[0] == "plain --bits 4" or not any(s in r[0] for s in args.skip)]
    from moequant.evaluate import compare_logits

    tokens = dev_tokens(0, args.windows)
    reference, _ = forward(float_conversion(args.work), tokens)
    params = parameter_count(SRC)
    rows = []
    for name, tree, options in runs:
        dst = args.work / name.replace(" ", "_").replace("-", "")
        result = convert(tree, dst, options, pool=args.pool)
        logits, _ = forward(dst, tokens)
        closeness = compare_logits(reference, logits)
        result.update(name=name, bpw=safetensors_bytes(dst)[1] * 8 / params, kl=closeness.kl, top1=closeness.top1)
        rows.append(result)
        print(json.dumps(result), flush=True)
    wall, cpu = rows[0]["wall_s"], rows[0]["cpu_s"]
    print("\n| run | wall s | × plain | CPU s | × plain | peak RSS GiB | peak PSS GiB | bits/weight | KL nats/token "
          "| top-1 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['name']} | {r['wall_s']:.1f} | {r['wall_s'] / wall:.1f} | {r['cpu_s']:.1f} | {r['cpu_s'] / cpu:.1f} | "
              f"{r['peak_rss_gib']:.2f} | {r['peak_pss_gib']:.2f} | {r['bpw']:.3f} | {r['kl']:.5f} | {r['top1']:.4f} |")
    for r in rows:
        if r["seconds"]:
            print(f"{r['name']}: " + ", ".join(f"{k} {v:.1f} s" for k, v in r["seconds"].items()))


def synthetic(args: argparse.Namespace) -> None:
    """Peak RSS, wall and CPU time of --rounding gptq on synthetic checkpoints, side by side with a
    plain conversion and mlx_lm.gptq (and the baseline tree, if given); then GPTQ's matmul rate."""
    rows = []
    for src in args.synthetic:
        config = json.loads((src / "config.json").read_text())
        calib = args.work / f"{src.name}-ids.npy"
        n = args.calib_sequences * args.calib_length
        np.save(calib, np.random.default_rng(0).integers(0, config["vocab_size"], n).astype(np.int32))
        gptq = ["--target-bpw", args.target_bpw, "--calib", str(calib), "--rounding", "gptq",
                "--calib-sequences", str(args.calib_sequences), "--calib-length", str(args.calib_length)]
        runs = [("plain --bits 4", TREE, ["--bits", "4"]), ("gptq, this tree", TREE, gptq)]
        runs += [("gptq, baseline", args.baseline, gptq)] if args.baseline else []
        size = sum(f.stat().st_size for f in src.glob("*.safetensors")) / 1e9
        where = f"{src.name} ({config['num_hidden_layers']} layers, {size:.2f} GB)"
        for name, tree, options in runs:
            if name != "plain --bits 4" and any(s in name for s in args.skip):
                continue
            result = convert(tree, args.work / "synthetic-out", options, src, args.pool)
            result.update(name=name, src=where)
            rows.append(result)
            print(json.dumps(result), flush=True)
        if not any(s in "mlx_lm.gptq" for s in args.skip):
            dst = args.work / "mlx-lm-gptq-out"
            subprocess.run(["rm", "-rf", str(dst)], check=True)
            result = _run("mlx_lm.gptq", [sys.executable, "-c", MLX_LM_GPTQ, str(src), str(dst), str(calib),
                                          str(args.calib_sequences), str(args.calib_length)],
                          timeout=args.mlx_lm_timeout, may_fail=True)
            result.pop("stdout", None)
            result.update(name="mlx_lm.gptq (4 bits, group 64)", src=where, seconds={})
            rows.append(result)
            print(json.dumps(result), flush=True)
    print("\n| checkpoint | run | wall s | CPU s | peak RSS GiB | peak PSS GiB | phases |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        if r.get("stopped") or r.get("failed"):
            what = f"failed: {r['failed']}" if r.get("failed") else "stopped"
            print(f"| {r['src']} | {r['name']} | {what} after {r['wall_s']:.0f} s | | | | |")
            continue
        phases = ", ".join(f"{k} {v:.0f} s" for k, v in r["seconds"].items())
        print(f"| {r['src']} | {r['name']} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | {r['peak_rss_gib']:.2f} | "
              f"{r['peak_pss_gib']:.2f} | {phases} |")
    if "rate" not in args.skip:
        gptq_rate(args.synthetic[0], args)


def _matmul_rate(n: int, rows: int, one_thread: bool) -> float:
    """numpy's float32 GFLOP/s on [8, n, n] @ [8, n, rows] (the shapes of GPTQ's products), the best of 3."""
    from moequant.gptq import one_blas_thread

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((8, n, n), dtype=np.float32), rng.standard_normal((8, n, rows), dtype=np.float32)
    best = float("inf")
    with one_blas_thread() if one_thread else contextlib.nullcontext():
        for _ in range(3):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
    return 2 * 8 * n * n * rows / best / 1e9


def _routed_flops(h) -> float:
    """Floating point operations of forming a RoutedMoments' H, every expert (see the docstring):
    per expert routed at least MIN_ROUTED tokens, per call with tokens routed to it T·n(n+1) (syrk's
    triangle), n(n+1)/2 per call after the first (summing the triangles) and 3·n² (the mixing)."""
    from moequant.calibrate import MIN_ROUTED

    routed = h._load("routed")
    routing = [np.load(f) for c in range(h.calls) if (f := h.folder / f"{h.name}.chosen{c}.npy").is_file()]
    n, flops = h.shape[-1], 0.0
    for e in range(h.first, h.first + h.shape[0]):
        if routed[e] < MIN_ROUTED:
            continue
        tokens = [int((chosen == e).any(-1).sum()) for chosen in routing]
        calls = sum(t > 0 for t in tokens)
        flops += sum(tokens) * n * (n + 1) + max(calls - 1, 0) * n * (n + 1) / 2 + 3 * n * n
    return flops


def gptq_rate(src: Path, args: argparse.Namespace) -> None:
    """GPTQ's achieved GFLOP/s on one thread, module by module of layer 0 (modules with the same
    inputs together), against numpy's matmul rate."""
    import mlx.core as mx

    from moequant.calibrate import RoutedMoments, measure, read_calibration
    from moequant.convert import Conversion, vocab_size
    from moequant.formats import Quant
    from moequant.gptq import quantize_gptq_together
    from moequant.target import build_model

    q = Quant.make("affine", 4, 64)
    conversion = Conversion(src, q)
    paths = {r.path for r in conversion.plan.rows if r.quant is not None and ".layers.0." in r.path}
    tokens = read_calibration(args.work / f"{src.name}-ids.npy", None, args.calib_length, args.calib_sequences,
                              vocab_size(conversion.config))
    stats = measure(build_model(conversion.config), conversion._normalized_groups(), tokens, moments=paths)
    weights = {}
    for group in conversion._normalized_groups():
        weights.update((k, v) for k, v in group.items() if k.removesuffix(".weight") in paths)
    together: dict = {}  # modules with the same inputs (their moments compare equal), as quantize.Quantizer groups them
    for path in sorted(paths):
        together.setdefault(stats.moments[path], []).append(path)
    print("\n| modules | shape | GPTQ CPU s | GFLOP | GFLOP/s | numpy 1 thread | share |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    total_flops = total_cpu = 0.0
    rates = {}
    for unit in together.values():
        ws = [weights[f"{path}.weight"] for path in unit]
        mx.eval(ws)
        experts, rows, n = (1, *ws[0].shape) if ws[0].ndim == 2 else ws[0].shape
        h = stats.moments[unit[0]]
        forming = _routed_flops(h) if isinstance(h, RoutedMoments) else 0.0
        flops = experts * (2 * n**3 / 3 + 3 * n * n * sum(w.shape[-2] for w in ws)) + forming
        start = time.process_time()
        mx.eval(quantize_gptq_together([(w, q) for w in ws], h))
        cpu = time.process_time() - start
        rates.setdefault((n, rows), _matmul_rate(n, rows, one_thread=True))
        total_flops, total_cpu = total_flops + flops, total_cpu + cpu
        names = " + ".join(path.split(".layers.0.")[-1] for path in unit)
        names += f" (forming H: {forming / 1e9:.0f} GFLOP)" if forming else ""
        print(f"| {names} | {tuple(ws[0].shape)} | {cpu:.1f} | {flops / 1e9:.0f} | {flops / cpu / 1e9:.1f} | "
              f"{rates[n, rows]:.1f} | {flops / cpu / 1e9 / rates[n, rows]:.0%} |", flush=True)
    peak_one = max(rates.values())
    n, rows = max(rates)
    every = _matmul_rate(n, rows, one_thread=False)
    print(f"\nGPTQ, layer 0: {total_flops / 1e9:.0f} GFLOP in {total_cpu:.1f} CPU s = {total_flops / total_cpu / 1e9:.1f} "
          f"GFLOP/s per core; numpy float32 matmul on GPTQ's shapes: {peak_one:.1f} GFLOP/s on one thread "
          f"({total_flops / total_cpu / 1e9 / peak_one:.0%}), {every:.1f} GFLOP/s on all {os.cpu_count()} cores "
          f"(each conversion worker process runs GPTQ on one thread, on its share of each layer's experts)")


if __name__ == "__main__":
    main()
