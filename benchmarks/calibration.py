"""Calibration benchmark (issue 15): `--target-bpw --calib` (with and without `--rounding gptq`) on
the trained tiny Qwen3-MoE, streamed over the decoder layers (this tree) against the whole-model
method it replaced (a BASELINE source tree), and a plain `--bits 4` conversion; side by side in one
run, each conversion a subprocess of the CLI (`--pool threads`):

* wall time and CPU time (user + sys), and their ratios to the plain conversion's (on a shared
  machine the CPU time is the steadier figure);
* peak RSS of the conversion process;
* bits per weight (tensor bytes x 8 / parameters) and KL(float || output) in nats/token on held-out
  text (pycode-dev.bin, the windows of benchmarks/quality.py), with top-1 agreement;
* the phase timings `convert --json` reports (this tree only).

The baseline is the source tree of an earlier commit, e.g.

    git archive 1c7a4a4 src | tar -x -C /tmp/moequant-base
    python benchmarks/calibration.py --baseline /tmp/moequant-base/src

`--synthetic FOLDER …` instead: on each synthetic checkpoint of benchmarks/make_synthetic.py,
`--target-bpw 4 --calib ids.npy --rounding gptq` (ids drawn at random from the vocabulary,
--calib-sequences × --calib-length) with this tree and the baseline, and a plain `--bits 4`:
wall time, CPU time and peak RSS (no KL: the weights are random).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from quality import CALIB, CALIB_TEXT, SRC, dev_tokens, float_conversion, forward, parameter_count, \
    safetensors_bytes  # noqa: E402

TREE = HERE.parent / "src"
# runs the CLI in a subprocess and writes its peak RSS (KiB) and CPU seconds next to DST
WRAPPER = """
import resource, sys
from moequant.cli import app
try:
    app(sys.argv[2:], prog_name="moequant")
except SystemExit as e:
    code = e.code
usage = resource.getrusage(resource.RUSAGE_SELF)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, from the (larger) parent
peak = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
open(sys.argv[1], "w").write(f"{peak} {usage.ru_utime + usage.ru_stime}")
sys.exit(code)
"""


def convert(tree: Path, dst: Path, options: list[str], src: Path = SRC) -> dict:
    """One `moequant convert src DST options` in a subprocess running `tree`'s moequant."""
    rss = dst.parent / f"{dst.name}.maxrss"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), *filter(None, [os.environ.get("PYTHONPATH")])])}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", WRAPPER, str(rss), "convert", str(src), str(dst), *options, "--json",
                           "--pool", "threads", "--force"], env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    if done.returncode:
        raise SystemExit(f"{dst.name}: exit {done.returncode}\n{done.stderr[-2000:]}")
    report = json.loads(done.stdout)
    rss_kib, cpu = rss.read_text().split()
    return {"wall_s": wall, "cpu_s": float(cpu), "peak_rss_gib": int(rss_kib) / 2**20, "seconds": report.get("seconds", {})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", type=Path, help="src folder of the earlier moequant to compare with")
    p.add_argument("--work", type=Path, default=Path("/tmp/moequant-calibration-bench"))
    p.add_argument("--windows", type=int, default=32, help="dev windows of 512 tokens scored")
    p.add_argument("--target-bpw", default="4")
    p.add_argument("--skip", action="append", default=[], help="leave out the runs whose name contains this")
    p.add_argument("--synthetic", type=Path, nargs="+", help="make_synthetic.py checkpoints to measure instead")
    p.add_argument("--calib-sequences", type=int, default=8)
    p.add_argument("--calib-length", type=int, default=512)
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
        result = convert(tree, dst, options)
        logits, _ = forward(dst, tokens)
        closeness = compare_logits(reference, logits)
        result.update(name=name, bpw=safetensors_bytes(dst)[1] * 8 / params, kl=closeness.kl, top1=closeness.top1)
        rows.append(result)
        print(json.dumps(result), flush=True)
    wall, cpu = rows[0]["wall_s"], rows[0]["cpu_s"]
    print("\n| run | wall s | × plain | CPU s | × plain | peak RSS GiB | bits/weight | KL nats/token | top-1 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['name']} | {r['wall_s']:.1f} | {r['wall_s'] / wall:.1f} | {r['cpu_s']:.1f} | {r['cpu_s'] / cpu:.1f} | "
              f"{r['peak_rss_gib']:.2f} | {r['bpw']:.3f} | {r['kl']:.5f} | {r['top1']:.4f} |")
    for r in rows:
        if r["seconds"]:
            print(f"{r['name']}: " + ", ".join(f"{k} {v:.1f} s" for k, v in r["seconds"].items()))


def synthetic(args: argparse.Namespace) -> None:
    """Peak RSS, wall and CPU time of --rounding gptq on synthetic checkpoints, this tree against
    the baseline, side by side with a plain conversion."""
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
        for name, tree, options in runs:
            if name != "plain --bits 4" and any(s in name for s in args.skip):
                continue
            result = convert(tree, args.work / "synthetic-out", options, src)
            result.update(name=name, src=f"{src.name} ({config['num_hidden_layers']} layers, {size:.2f} GB)")
            rows.append(result)
            print(json.dumps(result), flush=True)
    print("\n| checkpoint | run | wall s | CPU s | peak RSS GiB | phases |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for r in rows:
        phases = ", ".join(f"{k} {v:.0f} s" for k, v in r["seconds"].items())
        print(f"| {r['src']} | {r['name']} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | {r['peak_rss_gib']:.2f} | {phases} |")


if __name__ == "__main__":
    main()
