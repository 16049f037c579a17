"""Quality benchmark: moequant's conversions vs mlx-lm's, on a small trained Qwen3-MoE.

Converts /work/shared/models/tiny-qwen3-moe-pycode (byte-level, vocab 256: token id = byte value)
with

* moequant: uniform 4-/3-bit g64, `--recipe moe` at 4 and 3 bits, `--rounding mse`, and
  `--target-bpw` at several budgets, data-free, with `--calib`, and with `--calib --rounding mse`;
* `mlx_lm.convert`: uniform affine 4-/3-bit g64, mxfp4, nvfp4, `mixed_2_6`, `mixed_3_6`, `mixed_4_6`;
* mlx-lm's `dynamic_quant` (mlx_lm/quant/dynamic_quant.py) at the same budgets, its functions called
  as its `main()` does (main() itself downloads a dataset): sensitivities on the float32 model over
  the same calibration windows moequant's `--calib` uses, a threshold per budget, `quantize_model`,
  `save`;

and scores every output against the float model on held-out text (pycode-dev.bin, never used for
calibration): 32 windows x 512 bytes at fixed, seeded, non-overlapping positions.

Scores, all on the same tokens:
* nats/byte: cross-entropy of predicting byte t+1 from bytes <= t (mean over the 32 x 511
  predicted positions);
* KL(float || quantized) in nats/token, top-1 agreement with the float model (every position);
* router agreement: per MoE layer, the fraction of tokens whose selected top-k expert set equals the
  float model's, averaged over the layers.
* bits/weight: total bytes of the output's *.safetensors files x 8 / parameters of the float model
  (7,228,160), the same for every tool; the tensor bytes alone (without safetensors headers, which
  is what `--target-bpw` and mlx-lm's own bpw count) are also recorded.

Every model is loaded with mlx-lm, dequantized and cast to float32 (moequant.evaluate.load_float32:
on a Linux CPU mlx runs the MoE matmul in float32 only) and run through the real mlx-lm forward.
The float reference's logits and routes are computed once and cached.

mlx-lm cannot read the checkpoint's transformers-5 config (`num_local_experts`, `rope_parameters`),
so mlx-lm's tools get a copy of the folder whose config.json also has the legacy keys
(`num_experts`, `rope_theta`), safetensors symlinked; its float logits are checked to equal those
of moequant's float conversion before anything is measured.

Every model's scores are cached in WORK/scores/<name>.json: rerunning resumes. Needs matplotlib
for the plot (`pip install matplotlib`; not a dependency of moequant).

    /work/venv/bin/python benchmarks/quality.py --work /work/bench-data/quality
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
import numpy as np

SRC = Path("/work/shared/models/tiny-qwen3-moe-pycode")
CALIB_TEXT = Path("/work/shared/data/pycode-calib.bin")
# The model's tokenizer is byte-level (token id = byte value) and the file is Python source that is not
# all UTF-8 (a stray Latin-1 byte): its token ids are its bytes, written once as .npy for --calib
CALIB = Path(tempfile.gettempdir()) / "moequant-quality-pycode-calib.npy"
DEV = Path("/work/shared/data/pycode-dev.bin")
HERE = Path(__file__).resolve().parent
BUDGETS = (3.5, 4.0, 4.25, 4.5, 5.0)
# dynamic_quant (low bits, low group, high bits, high group) -> budgets to aim at. Its bpw lies
# between "everything low" and "everything high"; a budget below that range gets the smallest
# reachable size (estimate_threshold's binary search ends at "all low but the most sensitive").
DYNAMIC = {
    (4, 64, 5, 64): (4.5, 5.0),  # main()'s defaults
    (3, 64, 4, 64): (3.5, 4.0, 4.25),
    (3, 64, 6, 64): BUDGETS,
}
CALIB_WINDOWS, DEV_WINDOWS, WINDOW = 32, 32, 512


def moequant_version() -> str:
    """The moequant source this process runs: commit, and whether src/ had uncommitted changes."""
    import subprocess

    import moequant

    repo = Path(moequant.__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "src"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" + uncommitted changes in src/" if dirty else "")


VERSION: dict[str, str] = {}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- measuring ----------------------------------------------------------------------------------

def safetensors_bytes(folder: Path) -> tuple[int, int]:
    """(total file bytes, tensor bytes without headers) over the folder's *.safetensors."""
    total = payload = 0
    for f in sorted(folder.glob("*.safetensors")):
        size = f.stat().st_size
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
        total += size
        payload += size - 8 - n
    return total, payload


def parameter_count(folder: Path) -> int:
    """Elements of every tensor of an unquantized checkpoint (from the safetensors headers)."""
    count = 0
    for f in sorted(folder.glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        count += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return count


def dev_tokens(seed: int = 0, windows: int = DEV_WINDOWS) -> mx.array:
    """`windows` x WINDOW bytes of the dev text at seeded, non-overlapping window positions."""
    data = np.frombuffer(DEV.read_bytes(), np.uint8)
    chunks = np.sort(np.random.default_rng(seed).choice(len(data) // WINDOW, windows, replace=False))
    return mx.array(np.stack([data[c * WINDOW:(c + 1) * WINDOW] for c in chunks]).astype(np.int32))


@dataclass
class Reference:
    tokens: mx.array
    logits: mx.array
    routes: dict[str, mx.array]


def forward(folder: Path, tokens: mx.array):
    from moequant.evaluate import load_float32
    from moequant.verify import _run

    model = load_float32(folder)
    logits, routes = _run(model, tokens)
    del model
    mx.clear_cache()
    return logits, routes


def nats_per_byte(logits: mx.array, tokens: mx.array) -> float:
    return nn.losses.cross_entropy(logits[:, :-1].astype(mx.float32), tokens[:, 1:]).mean().item()


def score(folder: Path, ref: Reference) -> dict:
    from moequant.evaluate import compare_logits
    from moequant.verify import router_agreement

    logits, routes = forward(folder, ref.tokens)
    if routes.keys() != ref.routes.keys():
        raise RuntimeError(f"{folder}: MoE blocks {sorted(routes)}; expected {sorted(ref.routes)}")
    closeness = compare_logits(ref.logits, logits)
    agreement = {b: router_agreement(ref.routes[b], routes[b]) for b in ref.routes}
    return {"nats_per_byte": nats_per_byte(logits, ref.tokens), "kl": closeness.kl, "top1": closeness.top1,
            "router_agreement": sum(agreement.values()) / len(agreement), "router_per_layer": agreement,
            "closeness": closeness.to_dict()}


def verify_check(folder: Path, ref: Reference, windows: int = 2) -> dict:
    """The scores of this script (cached reference, moequant.verify's pieces) against
    `moequant.verify.verify` itself, on the first `windows` dev windows of one model."""
    from moequant.evaluate import compare_logits
    from moequant.verify import router_agreement, verify

    log(f"checking against moequant.verify.verify on {windows} windows of {folder.name}")
    tokens = ref.tokens[:windows]
    report = verify(folder, SRC, tokens=tokens)
    logits, routes = forward(folder, tokens)
    rows = windows * tokens.shape[1]
    c = compare_logits(ref.logits[:windows], logits)
    mine = sum(router_agreement(ref.routes[b][:rows], routes[b]) for b in routes) / len(routes)
    out = {"model": folder.name, "windows": windows, "verify": [report.closeness.kl, report.closeness.top1,
                                                                 report.mean_router_agreement],
           "this_script": [c.kl, c.top1, mine]}
    log(f"verify(): KL, top-1, router = {out['verify']}; this script: {out['this_script']}")
    return out


# --- the folders every tool starts from ---------------------------------------------------------

def legacy_copy(work: Path) -> Path:
    """SRC with a config.json mlx-lm reads (legacy keys added), everything else symlinked."""
    dst = work / "legacy"
    if (dst / "config.json").is_file():
        return dst
    tmp = work / ".legacy-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = json.loads((SRC / "config.json").read_text())
    config["num_experts"] = config["num_local_experts"]
    config["rope_theta"] = config["rope_parameters"]["rope_theta"]
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    for f in SRC.iterdir():
        if f.name != "config.json":
            os.symlink(f, tmp / f.name)
    tmp.rename(dst)
    return dst


def float_conversion(work: Path) -> Path:
    from moequant.convert import Conversion

    dst = work / "float32"
    if not dst.is_dir():
        for _ in Conversion(SRC, dtype="float32").run(dst):
            pass
    return dst


def reference(work: Path, seed: int, windows: int, meta: dict) -> Reference:
    """The float model's logits and routes on the dev tokens (cached), after checking that mlx-lm's
    view of the legacy copy computes exactly the same."""
    tokens = dev_tokens(seed, windows)
    cache = work / f"reference-seed{seed}-{windows}x{WINDOW}.npz"
    if cache.is_file():
        z = np.load(cache)
        if np.array_equal(z["tokens"], np.array(tokens)):
            return Reference(tokens, mx.array(z["logits"]),
                             {k[len("route:"):]: mx.array(z[k]) for k in z.files if k.startswith("route:")})
    t = time.time()
    log("reference: moequant float32 conversion of SRC, forward on the dev windows")
    logits, routes = forward(float_conversion(work), tokens)
    meta["reference_seconds"] = time.time() - t
    t = time.time()
    log("reference: the same through mlx-lm's load of the legacy-config copy")
    legacy_logits, legacy_routes = forward(legacy_copy(work), tokens)
    from moequant.evaluate import compare_logits
    from moequant.verify import router_agreement

    c = compare_logits(logits, legacy_logits)
    agree = {b: router_agreement(routes[b], legacy_routes[b]) for b in routes}
    meta["legacy_check"] = {"max_abs_logit_difference": c.max_abs, "kl": c.kl, "top1": c.top1,
                            "router_agreement": agree, "seconds": time.time() - t}
    log(f"legacy copy vs moequant float: max |logit diff| {c.max_abs:.3g}, KL {c.kl:.3g}, top-1 {c.top1}, "
        f"routes {min(agree.values())}")
    if c.max_abs > 1e-4 or min(agree.values()) < 1.0:
        raise SystemExit("the legacy-config copy does not compute what moequant's float conversion computes; "
                         "mlx-lm's numbers would not be comparable")
    np.savez(cache, tokens=np.array(tokens), logits=np.array(logits),
             **{f"route:{b}": np.array(r) for b, r in routes.items()})
    return Reference(tokens, logits, routes)


# --- the configurations -------------------------------------------------------------------------

@dataclass
class Config:
    name: str  # file-safe key
    tool: str
    label: str  # what the table shows
    command: str
    build: Callable[[Path], dict]
    family: str  # curve in the plot
    target: float | None = None
    prepare: Callable[[], None] | None = None  # shared work done before the timed conversion


def moequant_configs() -> list[Config]:
    from moequant.convert import Conversion
    from moequant.formats import Quant

    def make(bits=4, recipe="uniform", rounding="plain", target=None, calib=None):
        def build(dst: Path) -> dict:
            conv = Conversion(SRC, Quant.make("affine", bits), recipe=recipe, rounding=rounding,
                              target_bpw=target, calib=str(calib) if calib else None)
            for _ in conv.run(dst):
                pass
            return {"plan_bpw": conv.plan.bits_per_weight, "plan_bytes_after": conv.plan.bytes_after,
                    "decisions": conv.plan.counts()}
        return build

    out = []

    def add(name, family, bits=4, recipe="uniform", rounding="plain", target=None, calib=None):
        flags = []
        if target is None or bits != 4:
            flags.append(f"--bits {bits}")
        if recipe != "uniform":
            flags.append(f"--recipe {recipe}")
        if target is not None:
            flags.append(f"--target-bpw {target:g}")
        if calib:
            flags.append(f"--calib {calib.name}")
        if rounding != "plain":
            flags.append(f"--rounding {rounding}")
        label = " ".join(flags)
        command = f"moequant convert SRC DST {label} --quiet"
        if calib:
            command = command.replace(f"--calib {calib.name}", f"--calib {calib}")
        out.append(Config(name, "moequant", label, command, make(bits, recipe, rounding, target, calib), family, target))

    add("mq-u4", "moequant fixed", 4)
    add("mq-u3", "moequant fixed", 3)
    add("mq-moe4", "moequant fixed", 4, recipe="moe")
    add("mq-moe3", "moequant fixed", 3, recipe="moe")
    add("mq-u4-mse", "moequant fixed", 4, rounding="mse")
    add("mq-u3-mse", "moequant fixed", 3, rounding="mse")
    add("mq-moe4-mse", "moequant fixed", 4, recipe="moe", rounding="mse")
    add("mq-u4-gptq", "moequant fixed", 4, rounding="gptq", calib=CALIB)
    add("mq-u3-gptq", "moequant fixed", 3, rounding="gptq", calib=CALIB)
    for b in BUDGETS:
        add(f"mq-t{b:g}", "moequant --target-bpw (data-free)", target=b)
        add(f"mq-t{b:g}-calib", "moequant --target-bpw --calib", target=b, calib=CALIB)
        add(f"mq-t{b:g}-calib-gptq", "moequant --target-bpw --calib --rounding gptq", target=b, calib=CALIB,
            rounding="gptq")
    return out


def mlx_convert_configs(legacy: Path) -> list[Config]:
    def make(**kw):
        def build(dst: Path) -> dict:
            from mlx_lm.convert import convert

            convert(str(legacy), str(dst), quantize=True, **kw)
            return {}
        return build

    rows = [
        ("mlx-affine4", "affine 4-bit g64", "--q-bits 4 --q-group-size 64", dict(q_bits=4, q_group_size=64)),
        ("mlx-affine3", "affine 3-bit g64", "--q-bits 3 --q-group-size 64", dict(q_bits=3, q_group_size=64)),
        ("mlx-mxfp4", "mxfp4 (g32)", "--q-mode mxfp4", dict(q_mode="mxfp4")),
        ("mlx-nvfp4", "nvfp4 (g16)", "--q-mode nvfp4", dict(q_mode="nvfp4")),
        ("mlx-mixed_2_6", "mixed_2_6", "--quant-predicate mixed_2_6 --q-group-size 64",
         dict(quant_predicate="mixed_2_6", q_group_size=64)),
        ("mlx-mixed_3_6", "mixed_3_6", "--quant-predicate mixed_3_6 --q-group-size 64",
         dict(quant_predicate="mixed_3_6", q_group_size=64)),
        ("mlx-mixed_4_6", "mixed_4_6", "--quant-predicate mixed_4_6 --q-group-size 64",
         dict(quant_predicate="mixed_4_6", q_group_size=64)),
    ]
    return [Config(name, "mlx_lm.convert", label, f"mlx_lm.convert --hf-path LEGACY --mlx-path DST -q {flags}",
                   make(**kw), "mlx_lm.convert") for name, label, flags, kw in rows]


class Dynamic:
    """mlx-lm's dynamic_quant, step by step as its main() does, sensitivities cached per setting."""

    def __init__(self, work: Path, legacy: Path):
        self.work, self.legacy = work / "dynamic", legacy
        self.work.mkdir(parents=True, exist_ok=True)
        self._sens: dict[tuple, dict] = {}

    def sensitivities(self, setting: tuple[int, int, int, int]) -> dict[str, float]:
        if setting in self._sens:
            return self._sens[setting]
        lb, lg, hb, hg = setting
        cache = self.work / f"sensitivities-L{lb}g{lg}-H{hb}g{hg}.json"
        if not cache.is_file():
            from mlx.utils import tree_map
            from mlx_lm.quant.dynamic_quant import estimate_sensitivities
            from mlx_lm.utils import load
            from moequant.calibrate import read_calibration

            log(f"dynamic_quant: sensitivities low {lb}/g{lg}, high {hb}/g{hg} "
                f"({CALIB_WINDOWS}x{WINDOW} calibration bytes, float32 model)")
            t = time.time()
            model, _ = load(str(self.legacy))
            # mlx on a Linux CPU runs gather_mm (the MoE matmul) in float32 only
            model.update(tree_map(lambda a: a.astype(mx.float32) if mx.issubdtype(a.dtype, mx.floating) else a,
                                  model.parameters()))
            data = read_calibration(CALIB, None, WINDOW, CALIB_WINDOWS)  # the windows moequant's --calib uses
            mx.random.seed(123)  # main()'s default seed
            sens = estimate_sensitivities(model, data, lb, lg, hb, hg)
            del model
            mx.clear_cache()
            cache.write_text(json.dumps({"sensitivities": sens, "seconds": time.time() - t}, indent=1))
        self._sens[setting] = dict(json.loads(cache.read_text())["sensitivities"])
        return self._sens[setting]

    def configs(self) -> list[Config]:
        """Per setting and budget, two outputs: the threshold main() uses (`estimate_threshold`'s
        bisection, which may end above or below the budget), and "matched": the same rule (high bits
        for the modules whose sensitivity exceeds a threshold) with the threshold that gives the
        largest output within the budget — the same size constraint `--target-bpw` works under."""
        out = []
        for setting, targets in DYNAMIC.items():
            lb, lg, hb, hg = setting
            for target in targets:
                for how in ("estimate", "matched"):
                    name = f"dyn-L{lb}g{lg}-H{hb}g{hg}-t{target:g}" + ("-matched" if how == "matched" else "")
                    label = (f"low {lb}/g{lg} high {hb}/g{hg}, " +
                             (f"estimate_threshold {target:g}" if how == "estimate" else f"largest ≤ {target:g}"))
                    command = (f"dynamic_quant --low-bits {lb} --low-group-size {lg} --high-bits {hb} "
                               f"--high-group-size {hg} --target-bpw {target:g} (functions called directly, "
                               f"calibration: {CALIB.name}" +
                               (")" if how == "estimate" else "; threshold: largest size within the budget)"))
                    family = f"dynamic_quant low {lb} / high {hb}" + (" (estimate_threshold)" if how == "estimate"
                                                                       else " (largest ≤ budget)")
                    out.append(Config(name, "mlx-lm dynamic_quant", label, command, self._builder(setting, target, how),
                                      family, target, prepare=lambda setting=setting: self.sensitivities(setting)))
        return out

    @staticmethod
    def _bpw(model, sens, threshold, setting) -> float:
        """mlx-lm's bits per weight of `model` quantized with dynamic_quant's rule at `threshold`."""
        from mlx_lm.utils import compute_bits_per_weight

        lb, lg, hb, hg = setting
        q = copy.deepcopy(model)
        nn.quantize(q, group_size=lg, bits=lb, class_predicate=lambda p, m: hasattr(m, "to_quantized") and (
            {"bits": hb, "group_size": hg} if sens[p] > threshold else True))
        return compute_bits_per_weight(q)

    def matched_threshold(self, model, sens, target, setting) -> float:
        """The threshold giving the largest output whose bits per weight (mlx-lm's count: tensor
        bytes) is at most `target`; everything low if even that is larger."""
        values = sorted(set(sens.values()), reverse=True)
        best = values[0]  # nothing above it: all low
        for i, v in enumerate(values[:-1]):  # threshold between v and the next: every module >= v high
            threshold = (v + values[i + 1]) / 2
            if self._bpw(model, sens, threshold, setting) > target:
                break
            best = threshold
        return best

    def _builder(self, setting, target, how):
        def build(dst: Path) -> dict:
            from mlx_lm.quant.dynamic_quant import estimate_threshold
            from mlx_lm.utils import compute_bits_per_weight, load, quantize_model, save

            lb, lg, hb, hg = setting
            sens = self.sensitivities(setting)
            model, tokenizer, config = load(str(self.legacy), return_config=True)
            if how == "estimate":
                threshold = estimate_threshold(model, sens, target, lb, lg, hb, hg)
            else:
                threshold = self.matched_threshold(model, sens, target, setting)

            def quant_predicate(p, m):
                if not hasattr(m, "to_quantized"):
                    return False
                if sens[p] > threshold:
                    return {"bits": hb, "group_size": hg}
                return True

            model, config = quantize_model(model, config, group_size=lg, bits=lb, quant_predicate=quant_predicate)
            bpw = compute_bits_per_weight(model)
            high = sorted(p for p, s in sens.items() if s > threshold)
            save(str(dst), str(self.legacy), model, tokenizer, config)
            return {"threshold": threshold, "mlx_bpw": bpw, "high_modules": high}
        return build


# --- running ------------------------------------------------------------------------------------

def run_one(cfg: Config, work: Path, ref: Reference, params: int) -> dict:
    cache = work / "scores" / f"{cfg.name}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    dst = work / "models" / cfg.name
    tmp = work / "models" / f".{cfg.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    record = {"name": cfg.name, "tool": cfg.tool, "config": cfg.label, "command": cfg.command,
              "family": cfg.family, "target": cfg.target, **VERSION}
    try:
        t = time.time()
        if not dst.is_dir():
            if cfg.prepare is not None:
                cfg.prepare()
                t = time.time()
            log(f"{cfg.name}: converting ({cfg.command})")
            record.update(cfg.build(tmp))
            tmp.rename(dst)
            record["convert_seconds"] = time.time() - t
        total, payload = safetensors_bytes(dst)
        record.update(file_bytes=total, tensor_bytes=payload, bpw=total * 8 / params, tensor_bpw=payload * 8 / params)
        t = time.time()
        log(f"{cfg.name}: {record['bpw']:.4f} bits/weight; scoring")
        record.update(score(dst, ref))
        record["eval_seconds"] = time.time() - t
    except Exception as e:  # noqa: BLE001 - a failure is a result to report, not the end of the run
        import traceback

        record["error"] = f"{type(e).__name__}: {e}"
        record["traceback"] = traceback.format_exc()
        log(f"{cfg.name}: FAILED {record['error']}")
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(record, indent=1))
    if "error" not in record:
        log(f"{cfg.name}: nats/byte {record['nats_per_byte']:.4f}, KL {record['kl']:.5f}, "
            f"top-1 {record['top1']:.4f}, router {record['router_agreement']:.4f}")
    return record


# --- reporting ----------------------------------------------------------------------------------

def plot(results: list[dict], out: Path, base_kl: float | None, windows: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6.5))
    styles = {
        "moequant fixed": dict(marker="o", color="tab:blue", linestyle="none"),
        "moequant --target-bpw (data-free)": dict(marker="s", color="tab:cyan", linestyle="-"),
        "moequant --target-bpw --calib": dict(marker="D", color="tab:blue", linestyle="-"),
        "moequant --target-bpw --calib --rounding gptq": dict(marker="*", color="navy", linestyle="-", markersize=10),
        "mlx_lm.convert": dict(marker="^", color="tab:red", linestyle="none", markersize=8),
    }
    dyn_colors: dict[str, str] = {}
    palette = iter(["tab:orange", "tab:brown", "tab:olive", "tab:pink", "tab:purple"])
    families = []
    for r in results:
        if r["family"] not in families and r.get("kl") is not None and r["tool"] != "float":
            families.append(r["family"])
    for fam in families:
        rows = sorted((r for r in results if r["family"] == fam and r.get("kl") is not None), key=lambda r: r["bpw"])
        style = styles.get(fam)
        if style is None:  # dynamic_quant: one colour per setting; hollow markers for estimate_threshold
            setting = fam.split(" (")[0]
            if setting not in dyn_colors:
                dyn_colors[setting] = next(palette)
            color = dyn_colors[setting]
            style = (dict(marker="v", color=color, linestyle="--") if "largest" in fam else
                     dict(marker="v", color=color, linestyle="none", markerfacecolor="none", markersize=9))
        ax.plot([r["bpw"] for r in rows], [max(r["kl"], 1e-6) for r in rows], label=fam, **style)
        if fam in ("mlx_lm.convert", "moequant fixed"):
            for r in rows:
                text = r["config"]
                for flag in ("--bits ", "--recipe ", "--rounding "):
                    text = text.replace(flag, "")
                offset = (4, 3) if fam == "mlx_lm.convert" else (4, -9)
                ax.annotate(text, (r["bpw"], r["kl"]), fontsize=7, xytext=offset, textcoords="offset points",
                            color=style["color"])
    if base_kl:
        ax.axhline(base_kl, color="tab:red", linewidth=0.7, linestyle=":", label="mlx_lm.convert 4-bit g64 KL")
        ax.axhline(base_kl / 2, color="tab:green", linewidth=0.7, linestyle=":", label="½ × that (target a)")
    for x in (4.0, 4.55):
        ax.axvline(x, color="grey", linewidth=0.6, linestyle="--")
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (safetensors bytes × 8 / 7,228,160 parameters)")
    ax.set_ylabel("KL(float ‖ quantized), nats/token (log)")
    ax.set_title(f"tiny-qwen3-moe-pycode: size vs KL on pycode-dev ({windows} × {WINDOW} bytes)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(out, dpi=130)
    plt.close(fig)


def targets_section(results: list[dict]) -> list[str]:
    ok = [r for r in results if r.get("kl") is not None]
    mq = [r for r in ok if r["tool"] == "moequant"]
    dyn = [r for r in ok if r["tool"] == "mlx-lm dynamic_quant"]
    base = next((r for r in ok if r["name"] == "mlx-affine4"), None)
    lines = ["## Against the issue's targets", ""]
    if base is None:
        return lines + ["mlx_lm.convert's uniform 4-bit g64 did not run: no baseline.", ""]
    b = base["kl"]
    lines += [f"Baseline: mlx_lm.convert uniform 4-bit g64 at {base['bpw']:.3f} bits/weight "
              f"({base['tensor_bpw']:.3f} in tensor bytes), KL {b:.5f}.", ""]

    def desc(r):
        return (f"`{r['config']}` ({r['bpw']:.3f} bits/weight, {r['tensor_bpw']:.3f} in tensor bytes): "
                f"KL {r['kl']:.5f} = {r['kl'] / b:.2f} × baseline")

    for tag, limit, goal, want in (("a", 4.55, 0.5 * b, f"≤ 0.5 × {b:.5f} = {0.5 * b:.5f}"),
                                   ("b", 4.0, b, f"< {b:.5f}")):
        def meets(r):
            return r["kl"] <= goal if tag == "a" else r["kl"] < goal

        lines.append(f"**({tag}) at ≤ {limit} bits/weight, KL {want}:**")
        lines.append("")
        for key, what in (("bpw", "file bytes"), ("tensor_bpw", "tensor bytes")):
            within = [r for r in mq if r[key] <= limit + 1e-9]
            if not within:
                lines.append(f"* counting {what}: no moequant output at ≤ {limit} — **missed**.")
                continue
            best = min(within, key=lambda r: r["kl"])
            good = sorted((r for r in within if meets(r)), key=lambda r: r[key])
            lines.append(f"* counting {what}: **{'met' if meets(best) else 'missed'}** — best of {len(within)} "
                         f"moequant outputs: {desc(best)}; {len(good)} meet it"
                         + (f" (the smallest: `{good[0]['config']}`, {good[0][key]:.3f})." if good else "."))
        lines.append("")

    lines += ["**(c) at every budget, KL below mlx-lm dynamic_quant at the same bits/weight.** Each "
              "`--target-bpw` output against every dynamic_quant output aimed at the same budget. A pair "
              "counts when the dynamic_quant output is no larger (tensor bytes, +0.005 slack); when it is "
              "larger and still loses, moequant wins a fortiori; when it is larger and wins, the pair is "
              "not at the same size and does not count (marked n/a).", "",
              "Summary per budget — the best moequant `--target-bpw` output against the best dynamic_quant "
              "output that is no larger (or, if none is that small, its smallest):", "",
              "| budget | moequant (best) | b/w | KL | dynamic_quant (best no larger) | b/w | KL | KL ratio | met |",
              "| ---: | --- | ---: | ---: | --- | ---: | ---: | ---: | :---: |"]
    for t in BUDGETS:
        ms = [m for m in mq if m["target"] == t]
        ds = [d for d in dyn if d["target"] == t]
        if not ms or not ds:
            continue
        m = min(ms, key=lambda r: r["kl"])
        fit = [d for d in ds if d["tensor_bpw"] <= m["tensor_bpw"] + 0.005]
        d = min(fit, key=lambda r: r["kl"]) if fit else min(ds, key=lambda r: (r["tensor_bpw"], r["kl"]))
        win = m["kl"] < d["kl"]
        mark = "yes" if win else ("**no**" if fit else "n/a (dyn. larger)")
        lines.append(f"| {t:g} | `{m['config']}` | {m['tensor_bpw']:.3f} | {m['kl']:.5f} | {d['config']}"
                     f"{'' if fit else ' (smallest reachable)'} | {d['tensor_bpw']:.3f} | {d['kl']:.5f} | "
                     f"{m['kl'] / d['kl']:.2f} | {mark} |")
    lines += ["", "<details><summary>every pair</summary>", "",
              "| budget | moequant | b/w | KL | dynamic_quant | b/w | KL | moequant lower? |",
              "| ---: | --- | ---: | ---: | --- | ---: | ---: | :---: |"]
    verdict: dict[str, list[bool]] = {}
    for t in BUDGETS:
        ds = sorted((d for d in dyn if d["target"] == t), key=lambda d: d["name"])
        for m in sorted((m for m in mq if m["target"] == t), key=lambda m: m["name"]):
            for d in ds:
                win = m["kl"] < d["kl"]
                same = d["tensor_bpw"] <= m["tensor_bpw"] + 0.005
                mark = ("yes" if same else "yes (dyn. larger)") if win else ("**no**" if same else "n/a (dyn. larger)")
                if win or same:
                    verdict.setdefault(m["family"], []).append(win)
                lines.append(f"| {t:g} | `{m['config']}` | {m['tensor_bpw']:.3f} | {m['kl']:.5f} | {d['config']} "
                             f"| {d['tensor_bpw']:.3f} | {d['kl']:.5f} | {mark} |")
    lines += ["", "</details>", ""]
    if not verdict:
        return lines + ["(c): no dynamic_quant results.", ""]
    lines.append("Per moequant variant, over every counted pair:")
    lines.append("")
    for fam, wins in verdict.items():
        lines.append(f"* {fam}: **{'met' if all(wins) else 'missed'}** — lower KL in {sum(wins)} of {len(wins)} "
                     "counted pairs.")
    lines.append("")
    return lines


def report(results: list[dict], meta: dict, args, params: int, out_md: Path, out_png: Path) -> None:
    ok = sorted((r for r in results if r.get("kl") is not None), key=lambda r: (r["bpw"], r["kl"]))
    failed = [r for r in results if r.get("error")]
    base = next((r for r in ok if r["name"] == "mlx-affine4"), None)
    lines = [
        "# Quality: moequant vs mlx-lm on a trained MoE",
        "",
        "Generated by `benchmarks/quality.py` (do not edit by hand). Command:",
        "",
        "```bash",
        "/work/venv/bin/pip install matplotlib   # for the plot; not a moequant dependency",
        f"/work/venv/bin/python benchmarks/quality.py --work {args.work}",
        "```",
        "",
        f"Model: `{SRC}` (Qwen3-MoE, 4 layers, 16 experts top-4, byte-level, {params:,} parameters, bf16). "
        f"Scored on `{DEV}` (never used for calibration): {args.windows} windows × {WINDOW} bytes at "
        f"non-overlapping positions drawn with seed {args.seed}. Calibration (moequant `--calib`, "
        f"dynamic_quant's sensitivities): `{CALIB_TEXT}` (as byte ids), the {CALIB_WINDOWS} × {WINDOW}-byte windows "
        "`moequant.calibrate.read_calibration` takes.",
        "",
        "* **bits/weight**: total bytes of the output's `*.safetensors` × 8 / the float model's parameter "
        f"count ({params:,}), the same for every tool (safetensors headers included, ≈ 0.013–0.017 "
        "bits/weight here). *tensor b/w* counts tensor bytes only — what `--target-bpw` budgets and "
        "mlx-lm's `compute_bits_per_weight` reports.",
        "* **nats/byte**: cross-entropy of byte t+1 given bytes ≤ t, mean over the "
        f"{args.windows} × {WINDOW - 1} predicted positions. The level depends a lot on which windows are "
        "drawn (pycode-dev.bin is heterogeneous: the float model scores ≈ 0.69 on its first 32 windows, ≈ 0.73 "
        "on 32 evenly spaced ones); compare rows with each other, not with figures measured elsewhere.",
        "* **KL**: KL(float ‖ quantized) in nats/token, **top-1**: argmax agreement with the float model, "
        f"both over all {args.windows * WINDOW:,} positions.",
        "* **router**: per MoE layer, the fraction of tokens whose top-4 expert set equals the float "
        "model's; mean of the 4 layers.",
        "",
        "Every model is loaded by mlx-lm, dequantized and cast to float32 (`moequant.evaluate.load_float32`; "
        "mlx's CPU MoE matmul runs in float32 only) and run through mlx-lm's forward. The float reference is "
        "moequant's unquantized float32 conversion. mlx-lm cannot read the checkpoint's transformers-5 "
        "config, so its tools were given a copy whose config.json adds `num_experts` and `rope_theta` "
        "(safetensors symlinked); that copy's float logits were checked against the reference: ",
    ]
    chk = meta.get("legacy_check")
    if chk:
        lines[-1] += (f"max |logit difference| {chk['max_abs_logit_difference']:.3g}, KL {chk['kl']:.3g}, "
                      f"top-1 {chk['top1']:.4f}, router agreement {min(chk['router_agreement'].values()):.4f} "
                      "in every layer.")
    else:
        lines[-1] += "(checked in an earlier run; the reference cache exists only if it passed)."
    vc = meta.get("verify_check")
    if vc:
        same = all(abs(a - b) <= 1e-6 for a, b in zip(vc["verify"], vc["this_script"]))
        lines[-1] += (f" The reuse of the cached reference was checked against `moequant.verify.verify` on the first "
                      f"{vc['windows']} windows of `{vc['model']}`: KL, top-1, router agreement "
                      f"{', '.join(f'{x:.6g}' for x in vc['verify'])} from verify(), "
                      f"{', '.join(f'{x:.6g}' for x in vc['this_script'])} here"
                      + (" (identical)." if same else " — **they differ**."))
    versions = sorted({(r.get("moequant", "?"), r.get("mlx", "?"), r.get("mlx_lm", "?")) for r in results})
    lines += [
        "",
        "Versions: " + "; ".join(f"moequant {a}, mlx {b}, mlx-lm {c}" for a, b, c in versions)
        + (" (results from more than one version: rerun with a fresh --work)" if len(versions) > 1 else "") + ".",
        "",
        "mlx-lm `dynamic_quant`: its `main()` downloads a dataset, so its functions are called as main() "
        "calls them: `estimate_sensitivities` on the model cast to float32 (gather_mm needs it on this CPU) "
        "with the calibration windows above, `estimate_threshold` per budget on the bf16 model, "
        "`quantize_model` with its predicate, `save`. Its sizes lie between \"all low\" and \"all high\"; "
        "a budget below that gives its smallest output.",
        "",
        "## Results (sorted by bits/weight)",
        "",
        "| tool | config | bits/weight | tensor b/w | nats/byte | KL | top-1 | router |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| float | bf16 source (reference) | {meta.get('float_bpw', 16):.3f} | 16.000 | "
        f"{meta['float_nats_per_byte']:.4f} | 0 | 1 | 1 |",
    ]
    for r in ok:
        lines.append(f"| {r['tool']} | `{r['config']}` | {r['bpw']:.3f} | {r['tensor_bpw']:.3f} | {r['nats_per_byte']:.4f} | "
                     f"{r['kl']:.5f} | {r['top1']:.4f} | {r['router_agreement']:.4f} |")
    lines.append("")
    if failed:
        lines += ["Failed:", ""] + [f"* {r['tool']} `{r['config']}`: {r['error']}" for r in failed] + [""]
    lines += ["![size vs KL](quality.png)", ""]
    lines += targets_section(results)

    # size accuracy of --target-bpw and plan vs file
    lines += ["## `--target-bpw`: budget vs size", "",
              "| config | budget | plan bits/weight | tensor b/w written | file b/w (with headers) |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for r in sorted((r for r in ok if r["tool"] == "moequant" and r["target"]), key=lambda r: (r["target"], r["name"])):
        lines.append(f"| `{r['config']}` | {r['target']:g} | {r.get('plan_bpw', float('nan')):.4f} | "
                     f"{r['tensor_bpw']:.4f} | {r['bpw']:.4f} |")
    lines.append("")
    dyn = [r for r in ok if r["tool"] == "mlx-lm dynamic_quant"]
    if dyn:
        lines += ["dynamic_quant sizes reached: " + ", ".join(
            f"{r['config']} → {r['tensor_bpw']:.3f} (tensor b/w)" for r in sorted(dyn, key=lambda r: r["name"])) + ".", ""]

    total = meta.get("reference_seconds", 0) + sum(r.get("convert_seconds", 0) + r.get("eval_seconds", 0)
                                                   for r in results) + meta.get("sensitivity_seconds", 0)
    lines += ["## Runtime", "",
              f"{len(ok)} models scored. Summed stage times: {total / 60:.1f} min "
              f"(conversions {sum(r.get('convert_seconds', 0) for r in results) / 60:.1f} min, "
              f"scoring {sum(r.get('eval_seconds', 0) for r in results) / 60:.1f} min, "
              f"dynamic_quant sensitivities {meta.get('sensitivity_seconds', 0) / 60:.1f} min, "
              f"reference {meta.get('reference_seconds', 0) / 60:.1f} min) on a shared 2-core CPU "
              "(timings are noisy; the quality figures are deterministic).", ""]
    out_md.write_text("\n".join(lines))
    if base is not None or ok:
        plot(results, out_png, base["kl"] if base else None, args.windows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/work/bench-data/quality"),
                   help="scratch: converted models, reference logits, score cache (resumable)")
    p.add_argument("--seed", type=int, default=0, help="seed of the dev window positions")
    p.add_argument("--windows", type=int, default=DEV_WINDOWS, help="dev windows scored (fewer: a quick check)")
    p.add_argument("--only", default=None, help="run only configs whose name contains this (the report "
                   "then covers only those)")
    p.add_argument("--no-dynamic", action="store_true", help="skip mlx-lm dynamic_quant")
    p.add_argument("--out", type=Path, default=HERE, help="folder for QUALITY.md and quality.png")
    args = p.parse_args()
    args.work = args.work.resolve()
    if not CALIB.is_file():
        np.save(CALIB, np.frombuffer(CALIB_TEXT.read_bytes(), np.uint8).astype(np.int32))
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    import mlx_lm

    # imported once here, so later edits to the (editable) source do not reach this run
    import moequant.calibrate, moequant.convert, moequant.evaluate, moequant.verify  # noqa: E401,F401

    VERSION.update(moequant=moequant_version(), mlx=mx.__version__, mlx_lm=mlx_lm.__version__)
    log(f"moequant {VERSION['moequant']}, mlx {VERSION['mlx']}, mlx-lm {VERSION['mlx_lm']}")

    meta_file = args.work / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    legacy = legacy_copy(args.work)
    ref = reference(args.work, args.seed, args.windows, meta)
    params = parameter_count(float_conversion(args.work))
    meta["params"] = params
    meta["float_nats_per_byte"] = nats_per_byte(ref.logits, ref.tokens)
    meta["float_bpw"] = safetensors_bytes(SRC)[0] * 8 / params
    meta_file.write_text(json.dumps(meta, indent=1))
    log(f"float model: {params:,} parameters, {meta['float_nats_per_byte']:.4f} nats/byte on the dev windows")

    dynamic = Dynamic(args.work, legacy)
    configs = mlx_convert_configs(legacy) + moequant_configs() + ([] if args.no_dynamic else dynamic.configs())
    if args.only:
        configs = [c for c in configs if args.only in c.name]
    results = []
    for i, cfg in enumerate(configs):
        log(f"({i + 1}/{len(configs)}) {cfg.name}")
        results.append(run_one(cfg, args.work, ref, params))
    check = args.work / "models" / "mlx-affine4"
    if "verify_check" not in meta and check.is_dir():
        meta["verify_check"] = verify_check(check, ref)
    meta["sensitivity_seconds"] = sum(json.loads(f.read_text()).get("seconds", 0)
                                      for f in (args.work / "dynamic").glob("sensitivities-*.json"))
    meta_file.write_text(json.dumps(meta, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    report(results, meta, args, params, args.out / "QUALITY.md", args.out / "quality.png")
    log(f"wrote {args.out / 'QUALITY.md'} and {args.out / 'quality.png'}")
    log(f"done in {(time.time() - started) / 60:.1f} min (this invocation)")


if __name__ == "__main__":
    sys.exit(main())
