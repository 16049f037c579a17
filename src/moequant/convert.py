"""The whole flow: checkpoint -> normalize -> plan -> quantize -> write, one group at a time."""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, ThreadPoolExecutor, wait
from contextlib import closing, nullcontext
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import mlx.core as mx
import mlx.nn as nn

from .checkpoint import DTYPE_TAGS, ITEMSIZE, Checkpoint, Group, Stacked, mlx_quantization, read_checkpoint
from .dequant import MLX, SourceContext, dequantize_packed, source_format
from .errors import CheckpointError, PlanError
from .experts import SPLITTERS, ExpertStack, expert_counts, expert_sources, to_stacked
from .formats import DTYPES, Mode, Quant, Rounding, infer_fp_quant, infer_quant
from .ignored import ignored_notes
from .names import canonical_name, layer_of, renamed
from .registry import SPLITS, TENSOR_RENAMES, family_of
from .plan import Decision, Options, Plan, Role, build_plan, find_roles, plan_from_json, plan_rows
from .stored import Stored, read_stored, stale_notes
from .surgery import natural_order
from .quantize import Quantizer, check_complete, check_weights, parameter_shapes
from .target import absent_as_zeros, build_model, language_config, resolve_config, runner_of
from .card import CARD_FILE, PLAN_FILE, PLOT_FILE, model_card
from .writer import DEFAULT_SHARD_SIZE, Output, check_destination, output_config
from . import heap, procpool

if TYPE_CHECKING:
    from .calibrate import Moments

# allocate, calibrate and gptq (numpy, and a tenth of a second of imports) are imported where
# --target-bpw, --calib or --rounding gptq need them: a plain conversion's main process never
# does (nor does the workers' forkserver: the workers that need them import them, see _workerboot)

log = logging.getLogger(__name__)

_LANGUAGE_MODEL = "language_model."  # where mlx-vlm's Model holds the language model
ALLOCATE_THREADS = 8  # --target-bpw's error measurement: threads at most (each ~60 MB of temporaries)
# --target-bpw --calib: weight samples (allocate.sampled) of at most this many bytes in all are read before the
# calibration pass and their errors measured by a thread while it runs (on the 2-core VM the trained tiny
# MoE's, 28 MB, fill cores the pass leaves idle); more are read and measured after it, a few at a time
SAMPLES_AHEAD = 64 << 20



def _sample_bytes(shape: tuple[int, ...]) -> int:
    """The most bytes allocate.sampled takes of a weight of this shape ([out, in] or [E, out, in])."""
    from .allocate import SAMPLE_ROWS

    return math.prod(shape[:-2]) * min(shape[-2], SAMPLE_ROWS) * shape[-1] * 4


def vocab_size(config: dict) -> int | None:
    """The (resolved) config's vocabulary size: token ids must be below it."""
    for source in (config, language_config(config)):
        if isinstance(value := source.get("vocab_size"), int) and value > 0:
            return value
    return None


def default_dtype(ckpt: Checkpoint) -> str:
    """The checkpoint's declared float dtype if mlx can hold it, else bfloat16."""
    declared = ckpt.config.get("torch_dtype") or ckpt.config.get("dtype")
    return declared if declared in DTYPES else "bfloat16"


def _source_itemsize(ckpt: Checkpoint) -> int:
    sizes = [ITEMSIZE[t.dtype] for t in ckpt.tensors.values() if len(t.shape) >= 2]
    return max(set(sizes), key=sizes.count) if sizes else 2


@dataclass
class Step:
    group: str
    index: int
    total: int
    bytes_read: int


class _Arriving:
    """The input energies of a calibration pass as it measures them, a decoder layer at a time
    (calibrate.measure's on_energy): `get` waits until a path's energy has come or cannot come any
    more (its layer's statistics are taken, or the pass is over), and raises once the pass failed."""

    def __init__(self):
        self.values: dict[str, mx.array] = {}
        self.settled: list[str] = []  # the path prefixes of the layers whose statistics are taken
        self.over = self.failed = False
        self.cond = threading.Condition()

    def add(self, values: dict[str, mx.array], settled: str | None) -> None:
        with self.cond:
            self.values.update(values)
            if settled is None:
                self.over = True
            else:
                self.settled.append(settled)
            self.cond.notify_all()

    def fail(self) -> None:
        with self.cond:
            self.failed = True
            self.cond.notify_all()

    def get(self, path: str) -> mx.array | None:
        with self.cond:
            self.cond.wait_for(lambda: path in self.values or self.over or self.failed
                               or any(path.startswith(p) for p in self.settled))
            if self.failed:
                raise CancelledError("the calibration pass failed")
            return self.values.get(path)


class Conversion:
    """Everything decided from headers (the plan); `run` does the work, one group at a time."""

    build_model = staticmethod(build_model)  # the target model from a config (a worker process sets its own)

    def __init__(self, src: str | Path, quant: Quant | None = None, *, dtype: str | None = None,
                 plan: dict | None = None, plan_where: str = "plan.json", runner: str | None = None, **choices):
        """`choices` are the other fields of plan.Options (gate_bits, recipe, overrides, …);
        `plan` is a saved plan (the JSON of `inspect --json`, read from the file `plan_where`) to
        follow instead; `runner` is "mlx-lm" or "mlx-vlm" (default: target.choose_runner decides
        from the config)."""
        self.src = str(src)
        self.timings: dict[str, float] = {}  # seconds of the calibration and allocation phases, if any
        self.calibrated = None  # calibrate.Moments the --target-bpw pass measured for --rounding gptq (run takes them)
        self.ckpt = read_checkpoint(src)
        # every option checked before any other work (a plan file's, by plan_from_json)
        options = None if plan is not None else Options(quant, dtype=dtype or default_dtype(self.ckpt),
                                                        **choices).validate()
        self.config, notes = resolve_config(self.ckpt.config, runner)  # first: is it a model the runner has
        self.runner = runner_of(self.config)
        # notes that change the result (the CLI prints them after its summary line): where mlx-lm's
        # model differs from transformers', stale config entries, a data-free allocation, nvfp4
        # global scales mlx's CPU kernel refuses
        self.notices = ignored_notes(self.config, self.ckpt.tensors)
        notes += self.notices
        self.family = family_of(self.config)
        self.expert_count = expert_counts(self.family, self.config)
        self.format, qconfig = source_format(self.ckpt.config)
        self.model = build_model(self.config)
        modules = find_roles(self.model)
        self.target_paths = {m.path for m in modules}
        self.context = SourceContext(self.ckpt.tensors, qconfig)
        packed: dict[str, Quant] = {}
        listed: set[str] = set()
        if self.format is MLX:
            rows = read_stored(self.ckpt, modules, qconfig)
            # a listed module without to_quantized is no error here: it is read with its own
            # parameters and written float (what crashed mlx-lm's loader never reaches DST)
            if bad := next((r for r in rows if r.mismatch), None):
                raise CheckpointError(f"config.json: quantization[{bad.path!r}]: {bad.problem}")
            listed = {r.path for r in rows if r.listed and not r.stale}
            stale = stale_notes(rows)
            self.notices += stale
            notes = [*notes, *stale]
        if self.format.packed:
            packed = self._packed_modules({m.path: m.shape[-1] for m in modules})
            modules = [replace(m, source=packed.get(m.path), source_listed=m.path in listed) for m in modules]
        modules = [replace(m, origin=self._origin(m.path, packed)) for m in modules]
        if plan is not None:
            self.plan = plan_from_json(plan, modules, self.ckpt.model_type, _source_itemsize(self.ckpt), notes,
                                       plan_where)
            self.options = self.plan.options
        else:
            self.options = options
            if options.rounding == "gptq":
                notes = [*notes, f"--rounding gptq: affine modules rounded by GPTQ on the inputs' moments measured "
                                 f"on {options.calib}; embeddings and fp-mode modules rounded plainly"]
            allocation, allocated = {}, []
            if options.target_bpw is not None:
                # from the decisions without a budget: which modules are free to take one, what the rest weighs
                rows = plan_rows(modules, options, _source_itemsize(self.ckpt))
                allocation, allocated = self._allocate(rows, modules, packed)
                if not options.calib:
                    self.notices += allocated  # the one "data-free proxy" note
            self.plan = build_plan(modules, self.ckpt.model_type, options, _source_itemsize(self.ckpt),
                                   [*notes, *allocated], allocation)
        if any(r.quant is not None and r.quant.global_scale for r in self.plan.rows):
            note = ("nvfp4 expert stacks carry a per-expert global scale: Apple GPUs run them, mlx's CPU gather_qmm "
                    "refuses them (--no-global-scale for an output that runs on a CPU)")
            self.plan.notes.append(note)
            self.notices.append(note)
        if self.options.calib:  # read now, so a bad file is refused before any work
            self.calibration()
        self.as_stored = frozenset(r.path for r in self.plan.rows if r.as_stored)
        self.context = SourceContext(self.ckpt.tensors, qconfig, packed, self.as_stored)

    def calibration(self) -> mx.array:
        """The --calib token batch, every id checked against the model's vocabulary."""
        from .calibrate import read_calibration

        options = self.options
        return read_calibration(options.calib, self.ckpt.path, options.calib_length, options.calib_sequences,
                                vocab_size(self.config))

    def _origin(self, path: str, packed: dict[str, Quant]) -> str:
        """What SRC holds for a target module, for `inspect`: `BF16`, `F8_E4M3 (fp8) per-expert`,
        `mlx affine·4·g64`, or `derived` when mlx-lm's sanitize builds it from other tensors."""
        if not hasattr(self, "_experts"):
            self._experts = expert_sources(self.family, self.ckpt.tensors)
        layout = ""
        info = self.ckpt.tensors.get(f"{path}.weight")
        if path in self._experts:
            layout, key = self._experts[path]
            info = self.ckpt.tensors[key]
        elif info is not None and path.rpartition(".")[0].endswith(self.family.stacked):
            layout = "stacked"
        if path in packed:
            what = f"{self.format.name} {packed[path]}"
        elif info is None:
            return "derived"
        else:
            what = info.dtype + (f" ({self.format.name})" if self.format.name not in ("float", "mlx") and
                                 not info.is_float else "")
        return f"{what} {layout}".strip()

    def _allocate(self, rows: list[Decision], modules: list,
                  packed: dict[str, Quant]) -> tuple[dict[str, Quant], list[str]]:
        """--target-bpw: measure each free module's error per candidate (reading its weights, one
        group at a time) and pick the least-error candidates that fit the budget. `rows` are the
        decisions without a budget; returns the allocation and its notes. With --calib, the
        calibration pass's timings go to self.timings and, with --rounding gptq, its moments to
        self.calibrated (run quantizes with them: one pass, not two)."""
        from .allocate import allocate, model_errors, relative_errors
        from .calibrate import PROBE, measure

        options = self.options
        free = {r.path for r in rows if r.quantizable and r.free}
        energy, sensitivity, notes, columns, reading, arriving = {}, {}, [], None, None, None
        self.context = SourceContext(self.ckpt.tensors, self.context.qconfig, packed)
        threads = max(1, min(procpool.cores(), ALLOCATE_THREADS))
        with ThreadPoolExecutor(1, thread_name_prefix="moequant-allocate") as ahead, \
                ThreadPoolExecutor(threads, thread_name_prefix="moequant-allocate") as pool:
            if options.calib:
                tokens = self.calibration()
                if sum(_sample_bytes(m.shape) for m in modules if m.path in free) <= SAMPLES_AHEAD:
                    columns = self._column_errors(free, ahead)  # measured while the pass runs
                else:  # read and measured a layer behind the pass, as it measures each layer's energy: in the
                    # reading thread a part at a time while the pass runs (beside its memory), on every thread after it
                    arriving = _Arriving()
                    reading = ahead.submit(self._column_errors, free, pool, waiting=threads, energy=arriving)
                # with --rounding gptq, the moments of every module that may come out affine, in the same pass
                affine = free | {r.path for r in rows if r.quant is not None and r.quant.mode == Mode.AFFINE
                                 and not r.as_stored} if options.rounding == "gptq" else set()
                try:
                    stats = measure(build_model(self.config), self._normalized_groups(), tokens, energy=free,
                                    moments=affine, sensitivity=free, on_energy=arriving and arriving.add)
                except BaseException:
                    if arriving is not None:
                        arriving.fail()  # the reading stops
                    raise
                self.calibrated = stats.moments  # for run: --rounding gptq
                energy, sensitivity = stats.energy, stats.sensitivity
                self.timings["calibration"] = stats.seconds
                notes.append(
                    f"--target-bpw: calibrated on {options.calib} ({tokens.size:,} tokens): input energy of "
                    f"{len(energy)} and output sensitivity (KL with the module alone at {PROBE}, from its decoder "
                    f"layer's output error) of {len(sensitivity)} of {len(free)} modules, the rest data-free")
                if note := stats.thin_note():  # a note that changes the result: printed after the summary too
                    notes.append(note)
                    self.notices.append(note)
            else:
                notes.append("--target-bpw: data-free proxy (relative weight reconstruction error)")
            start = time.monotonic()
            if reading is not None:
                errors = {path: f.result() for path, f in reading.result().items()}
            elif columns is None:  # read now, measured on as many threads as cores, a few samples at a time
                errors = {path: f.result() for path, f in
                          self._column_errors(free, pool, waiting=threads, energy=energy).items()}
            else:
                errors = {path: relative_errors(f.result(), energy.get(path)) for path, f in columns.items()}
        # a module no candidate's groups divide (Jamba's dt_proj, 8 inputs wide) has no choice: kept as decided
        errors = {path: e for path, e in errors.items() if e}
        if sensitivity:
            errors = model_errors(errors, sensitivity, PROBE)
        fixed = sum(r.bytes_after for r in rows if r.path not in errors)
        budget = int(options.target_bpw * sum(r.params for r in rows) / 8)
        chosen = allocate(modules, errors, budget, fixed, options.dtype)
        self.timings["allocation"] = time.monotonic() - start
        return chosen, notes

    def _column_errors(self, free: set[str], pool: ThreadPoolExecutor, waiting: int | None = None,
                       energy: dict | _Arriving | None = None) -> dict:
        """Each free module's allocate.column_errors (a future of `pool`, path -> future): its sample of
        rows read here, one group at a time (an expert stack a part at a time), its errors measured in
        `pool`; with at most `waiting` + 1 samples not yet measured (None: no bound). Given `energy`
        (path -> E[x_j²], maybe none), their relative errors instead (allocate.sample_errors), a few
        floats: a 64-expert stack's column errors are 19 MB (float64 [64, 2048] per candidate), and
        those of all the layers held at once took the allocation's peak RSS 1.72 -> 2.14 GiB (the 6 GB
        layout, 16 cores). `energy` may be an _Arriving: each module is read once its energy has come
        (or cannot come), and while the pass runs, measured here as its parts are read (one part's
        rows in memory beside the pass's)."""
        from .allocate import column_errors, sample_errors, sample_parts, sampled

        futures, normalized = {}, self._normalized_groups(as_parts=True)
        while normalized:
            weights = normalized.pop(0)
            for path in sorted(free & {k[: -len(".weight")] for k in weights if k.endswith(".weight")}):
                channel = None if energy is None else energy.get(path)
                # taken out of the group: an evaluated weight (or part) stays in memory while anything holds it
                weight = weights.pop(f"{path}.weight")
                if isinstance(energy, _Arriving) and not energy.over:  # beside the pass: here, a part at a time
                    futures[path] = Future()
                    futures[path].set_result(sample_errors(sample_parts(weight), channel_energy=channel))
                    continue
                while waiting is not None and sum(not f.done() for f in futures.values()) > waiting:
                    wait([f for f in futures.values() if not f.done()], return_when=FIRST_COMPLETED)
                sample = sampled(weight)
                futures[path] = pool.submit(column_errors, sample) if energy is None else \
                    pool.submit(sample_errors, sample, channel_energy=channel)
            del weights
        return futures

    def _packed_modules(self, n_in: dict[str, int]) -> dict[str, Quant]:
        """Target module path -> how SRC stores it packed, read from the shapes of the unpacked,
        stacked tensors (lazy: no data is read)."""
        packed = {}
        weights, _ = self._sanitized()
        for key, scales in weights.items():
            path = key[: -len(".scales")]
            if key.endswith(".scales") and path in n_in and f"{path}.weight" in weights:
                packed[path] = infer_quant(weights[f"{path}.weight"].shape[-1], scales.shape[-1],
                                           scales.dtype == mx.uint8, n_in[path], f"{path}.global_scale" in weights)
        return packed

    def _target(self) -> nn.Module:
        """A fresh (lazy) target model; modules copied as stored are quantized up front so they
        take the packed tensors as they are."""
        model = self.build_model(self.config)
        if self.as_stored:
            rows = self.plan.by_path
            nn.quantize(model, class_predicate=lambda p, m: p in self.as_stored and rows[p].quant.to_dict())
        return model

    def _unpacked(self, group: Group) -> tuple[dict[str, mx.array], list[ExpertStack]]:
        """One group's tensors (lazy), unpacked from the source format, renamed and stacked (and the
        expert stacks made, see to_stacked); packed modules still packed."""
        weights = self.format.unpack(self.ckpt.load(group.keys), self.context)
        weights = self._renamed({canonical_name(k): v for k, v in weights.items()})
        for name in SPLITS.get(self.config["model_type"], ()):
            weights = SPLITTERS[name](weights, self.config)
        weights, stacks = to_stacked(self.family, weights, self.expert_count)
        if not hasattr(self.model, "sanitize"):
            return weights, stacks
        # Packed fp-mode modules that sanitize reshapes into other modules (DeepSeek's kv_b_proj ->
        # embed_q/unembed_out) are dequantized first: sanitize only knows affine packing.
        stray = {}
        for key, scales in weights.items():
            path = key[: -len(".scales")]
            if key.endswith(".scales") and path not in self.target_paths and scales.dtype == mx.uint8:
                q = infer_fp_quant(weights[f"{path}.weight"].shape[-1], scales.shape[-1], f"{path}.global_scale" in weights)
                if q is not None:
                    stray[path] = q
        if stray:
            weights = dequantize_packed(weights, replace(self.context, stored=stray, as_stored=frozenset()))
        return weights, stacks

    def _renamed(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """`weights` under the row's tensor_renames (names.renamed: only into the target's parameter names)."""
        if rows := TENSOR_RENAMES.get(self.config["model_type"]):
            if not hasattr(self, "_targets"):  # the target's parameter names, once (not per group); a text model's
                # in mlx-vlm also as its sanitize is handed them, before it puts them under language_model.
                targets = set(parameter_shapes(self.model))
                self._targets = frozenset(targets | {k.removeprefix(_LANGUAGE_MODEL) for k in targets})
            weights = {renamed(k, rows, self._targets): v for k, v in weights.items()}
        return weights

    def _sanitized(self) -> tuple[dict[str, mx.array], list[ExpertStack]]:
        """Every tensor (lazy) in the target's names: unpacked, renamed and stacked group by group,
        then through mlx-lm's sanitize at once, as it is written for: several decide what to
        convert from one probe (Qwen3-Next adds 1 to every RMSNorm only if layer 0's experts are
        per-expert, Qwen3.5 if any conv1d is unconverted; Qwen3-VL-MoE rebuilds the language model
        around lm_head), which one layer's tensors cannot answer. No tensor data is read. Also
        returns the expert stacks to_stacked made."""
        weights: dict[str, mx.array] = {}
        stacks: list[ExpertStack] = []
        for group in self.ckpt.groups():
            unpacked, made = self._unpacked(group)
            weights.update(unpacked)
            stacks += made
        if hasattr(self.model, "sanitize"):
            # renamed again: a target whose sanitize prefixes every key (mlx-vlm's language_model.) has the
            # renamed names only after it
            weights = self._renamed(self.model.sanitize(weights))
        for key, shape in absent_as_zeros(self.config, parameter_shapes(self.model)).items():
            weights.setdefault(key, mx.zeros(shape))  # a bias transformers' config says the model has not
        return weights, stacks

    def _normalized_groups(self, as_parts: bool = False) -> list[dict[str, mx.array | Stacked]]:
        """The target's tensors (lazy) for each group of self.ckpt.groups(), in order: float, or
        packed where copied as stored. An output tensor belongs to the group of its decoder layer
        (by name, else by layer index: sanitize may rename the prefix), the rest to "rest". Build
        it in the thread that evaluates it (mlx runs an op only on the thread whose stream made
        it), and drop each group once used: an evaluated group still listed stays in memory.
        `as_parts`: each expert stack that reaches the target as to_stacked made it (neither
        sanitize nor dequantization replaced it; sanitize may rename it) comes as its per-expert
        parts, a Stacked, for the quantizer to take expert by expert."""
        groups = self.ckpt.groups()
        position = {g.name: i for i, g in enumerate(groups)}
        by_index = {}
        for i, g in enumerate(groups):
            by_index.setdefault(g.name.rsplit(".", 1)[-1], i)
        out: list[dict[str, mx.array]] = [{} for _ in groups]
        weights, stacks = self._sanitized()
        parts = {s.stack: s.parts for s in stacks} if as_parts else {}  # mlx arrays hash by identity
        for key, value in dequantize_packed(weights, self.context).items():
            if value in parts:
                value = Stacked(parts[value])
            where = layer_of(key)
            name = f"{where[0]}.{where[1]}" if where else "rest"
            i = position.get(name, by_index.get(str(where[1])) if where else None)
            out[len(groups) - 1 if i is None else i][key] = value
        return out

    def manifest(self) -> list[tuple[str, str, tuple[int, ...]]]:
        """Every output tensor (key, dtype tag, shape) in write order, from a dry run of the whole
        pipeline on lazy tensors: every layout and shape check runs, no tensor data is read."""
        model = self._target()
        expected, seen, quantizer, entries = parameter_shapes(model), set(), Quantizer(model, self.plan, compute=False), []
        with self.ckpt.shards_kept():
            for weights in self._normalized_groups():
                check_weights(weights, expected, seen, self.ckpt.model_type)
                entries += [(k, DTYPE_TAGS[v.dtype], tuple(v.shape)) for k, v in quantizer.run(weights).items()]
        check_complete(expected, seen, self.ckpt.model_type)
        return entries

    def card(self, name: str | None = None, command: str | None = None, quality: dict | None = None,
             picture: str | None = None) -> str:
        """DST's model card (README.md): see card.model_card."""
        return model_card(self.plan, src=self.src, src_folder=self.ckpt.path, runner=self.runner, command=command,
                          name=name, quality=quality, picture=picture)

    def update_card(self, dst: Path, command: str | None = None, quality: dict | None = None) -> None:
        """Rewrite DST's model card, e.g. with `verify`'s figures (`quality`) once measured."""
        dst = Path(dst)
        picture = PLOT_FILE if (dst / PLOT_FILE).is_file() else None
        (dst / CARD_FILE).write_text(self.card(dst.name, command, quality, picture))

    def run(self, dst: Path, force: bool = False, shard_size: int = DEFAULT_SHARD_SIZE,
            workers: int | None = None, pool: str | procpool.Workers = "threads", command: str | None = None,
            plot: bool = False) -> Iterator[Step]:
        """Convert into DST, yielding a Step per finished group. `workers` each take the next
        decoder layer, so reading, stacking, quantizing and writing run on every core while at
        most `workers` layers are in memory. `pool="processes"` (the CLI's default) runs them as
        worker processes (procpool); the default here is threads of this process, since worker
        processes re-import the caller's __main__ module (a script without an
        `if __name__ == "__main__":` guard would run again in each); `pool` may also be worker
        processes forked ahead (procpool.Workers: the CLI forks them before it reads SRC), which run
        takes over and stops however it ends. DST gets a model card (naming `command`, the command
        line, if given) and the plan; with `plot`, the plan's picture too (plot.plan_png, embedded in
        the card)."""
        dst = Path(dst)
        check_destination(dst, force, self.ckpt.path)
        if shard_size <= 0:
            raise PlanError(f"shard_size {shard_size}: expected a size above 0 bytes")
        groups = self.ckpt.groups()
        gptq = self.plan.options.rounding == Rounding.GPTQ
        processes = pool == "processes" or isinstance(pool, procpool.Workers)
        bounded = workers is None and gptq and processes  # by the calibration pass's memory, once it is over
        if workers is None:  # as many as the cores and the memory available allow (GPTQ's processes share
            # each layer, procpool.units: as many as the cores, whatever the groups)
            workers = procpool.default_workers(procpool.cores() if gptq and processes else len(groups),
                                               max(t.nbytes for t in self.ckpt.tensors.values()))
        workers = max(1, workers)
        started = pool if isinstance(pool, procpool.Workers) else None
        if started is not None and started.count < workers:  # too few forked ahead
            started.close()
            started = None
        elif started is not None:
            started.limit(workers)  # no more forked than needed
        if "calibration" in self.timings:  # what the pass and the allocation freed handed back before the workers
            mx.clear_cache()  # take their memory (16 plain workers after a 12 GB pass: 2.02 GiB tree RSS)
            heap.trim()
        if started is None and processes and not gptq:
            # forked while the manifest is made (with GPTQ, once its calibration pass is over:
            # convert_groups forks them then)
            started = procpool.Workers(workers)
        with started or nullcontext():
            if started is not None and not gptq:  # they set up while the manifest is made
                procpool.send_spec(self, groups, workers, started)
            manifest = self.manifest()
            with Output(dst, force, shard_size, self.ckpt.path) as out:
                out.allocate(manifest)  # refuses a DST without room for it before any slow work
                convert = partial(procpool.convert_groups, started=started) if processes else Conversion._convert_groups
                # the moments' files are removed, and before that the workers stopped and threads joined
                # (closing), before Output cleans up, however this generator ends
                with self._moments() if gptq else nullcontext() as moments:
                    if bounded:
                        workers = self._gptq_workers(workers, moments)
                    with closing(convert(self, out, groups, workers, moments)) as done:
                        yield from self._steps(done, out, groups, dst, command, plot)
                out.finish(self.plan)

    def _steps(self, done: Iterator[int], out: Output, groups: list[Group], dst: Path, command: str | None,
               plot: bool) -> Iterator[Step]:
        """A Step per group written (`done`: their indices); the index, config, card and plan
        written after the first, while the other groups convert."""
        for n, i in enumerate(done):
            if n == 0:
                out.write_files(output_config(self.config, self.plan), self.ckpt.path, self.plan,
                                self._files(dst, command, plot))
            group = groups[i]
            yield Step(group.name, i + 1, len(groups), sum(self.ckpt.tensors[k].nbytes for k in group.keys))

    def _gptq_workers(self, limit: int, moments: Moments) -> int:
        """The default number of GPTQ's worker processes, the calibration pass over: its memory
        released, as many as fit in what it held (procpool.gptq_workers, for the widest input of
        `moments`), at most `limit`."""
        mx.clear_cache()
        heap.trim()
        workers = procpool.gptq_workers(limit, max((moments[p].shape[-1] for p in moments), default=0))
        if workers < limit:
            log.info("--rounding gptq: %d worker processes, in the memory the calibration pass held (--workers for "
                     "more, taking more memory)", workers)
        return workers

    def _files(self, dst: Path, command: str | None, plot: bool) -> dict[str, str | bytes]:
        """DST's model card and plan (and with `plot`, the plan's picture)."""
        files = {CARD_FILE: self.card(dst.name, command, picture=PLOT_FILE if plot else None),
                 PLAN_FILE: json.dumps(self.plan.to_json(), indent=2) + "\n"}
        if plot:
            from .plot import plan_png

            files[PLOT_FILE] = plan_png(self.plan)
        return files

    def _moments(self) -> Moments:
        """--rounding gptq: E[x xᵀ] of the inputs of each affine module, on the calibration text
        (in files, read by the workers a module at a time; see calibrate.Moments): measured with
        --target-bpw's statistics (taken: a second run measures again), else now, in one pass
        streamed over the decoder layers of the float model (packed sources dequantized). A module
        whose input moments the pass did not measure is rounded plainly, and a note says which."""
        from .calibrate import measure

        paths = {r.path for r in self.plan.rows if r.quant is not None and r.quant.mode == Mode.AFFINE and not r.as_stored}
        if self.calibrated is not None:  # measured with --target-bpw's statistics; a second run measures again
            moments, self.calibrated = self.calibrated, None
            moments = moments.only(paths)
        else:
            context, self.context = self.context, replace(self.context, as_stored=frozenset())
            try:
                groups = self._normalized_groups()
            finally:
                self.context = context
            stats = measure(build_model(self.config), groups, self.calibration(), moments=paths)
            self.timings["calibration"] = stats.seconds
            if note := stats.thin_note():
                self.plan.notes.append(note)
                self.notices.append(note)
            moments = stats.moments
        embeddings = {r.path for r in self.plan.rows if r.role == Role.EMBEDDING}
        if unreached := sorted(paths - set(moments) - embeddings, key=natural_order):
            note = (f"--rounding gptq: {len(unreached)} affine modules rounded plainly, no moments of their inputs "
                    f"measured (modules the text never reaches; MLA's per-head embed_q): "
                    f"{', '.join(unreached[:4])}{', …' if len(unreached) > 4 else ''}")
            self.plan.notes.append(note)
            self.notices.append(note)
        return moments

    def _convert_groups(self, out: Output, groups: list[Group], workers: int,
                        moments: Moments | None = None) -> Iterator[int]:
        """Indices of groups as they are written, by `workers` threads."""
        todo = iter(range(len(groups)))
        lock, stop = threading.Lock(), threading.Event()
        done: queue.Queue = queue.Queue()

        def convert() -> None:
            quantizer = Quantizer(self._target(), self.plan, moments=moments)
            with mx.stream(mx.new_stream(mx.cpu)):  # mlx streams belong to their thread
                normalized = dict(enumerate(self._normalized_groups(as_parts=True)))  # this thread's lazy graph
                while not stop.is_set():
                    with lock:
                        i = next(todo, None)
                    if i is None:
                        break
                    # no name may hold a group's inputs while its outputs are written: each
                    # evaluated input would stay in memory until the whole group is done
                    out.add(quantizer.run(normalized.pop(i)))
                    mx.clear_cache()
                    done.put(i)

        def work() -> None:
            try:
                convert()  # returns with none of this thread's arrays alive
            except BaseException as e:  # handed to the main thread, which raises it
                done.put(e)
            finally:
                # Release this thread's mlx streams (and their scheduler threads) before the thread
                # ends: left to thread-exit and process-exit destructors they abort the process now
                # and then ("terminate called without an active exception", exit 134).
                mx.clear_streams()
                done.put(None)

        # not daemons: the interpreter never exits while one is inside mlx
        threads = [threading.Thread(target=work, name=f"moequant-{n}") for n in range(workers)]
        # GPTQ's products on one BLAS thread, held around all the threads (see gptq.one_blas_thread)
        blas = nullcontext()
        if self.plan.options.rounding == Rounding.GPTQ:
            from .gptq import one_blas_thread

            blas = one_blas_thread()
        with blas:
            for t in threads:
                t.start()
            running = workers
            try:
                while running:
                    item = done.get()
                    if item is None:
                        running -= 1
                    elif isinstance(item, BaseException):
                        raise item
                    else:
                        yield item
            finally:
                stop.set()
                for t in threads:  # each finishes the group it is on; Output cleans up after
                    t.join()


@dataclass
class Inspection:
    """What `inspect` shows of SRC: the plan and the notes that change the result, or, for an
    MLX-quantized SRC, what it stores per module against what its config.json says."""

    plan: Plan | None = None
    notices: list[str] = field(default_factory=list)
    stored: list[Stored] | None = None


def inspect_checkpoint(src: str | Path, quant: Quant | None = None, *, as_source: bool = False,
                       runner: str | None = None, **choices) -> Inspection:
    """`moequant inspect` (headers only, nothing converted): the plan Conversion(src, quant,
    runner=runner, **choices) would follow, after every layout and shape check of a dry run; for
    an MLX-quantized SRC, unless `as_source`, what it stores instead."""
    ckpt = read_checkpoint(src)
    if (quantization := mlx_quantization(ckpt.config)) is not None and not as_source:
        modules = find_roles(build_model(resolve_config(ckpt.config)[0]))
        return Inspection(stored=read_stored(ckpt, modules, quantization))
    conversion = Conversion(src, quant, runner=runner, **choices)
    conversion.manifest()
    return Inspection(conversion.plan, conversion.notices)

