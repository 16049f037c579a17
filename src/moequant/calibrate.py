"""Calibration for `--target-bpw --calib FILE` and `--rounding gptq`: the calibration tokens
(`read_calibration`, through the checkpoint's own tokenizer) and what the float model does with
them, measured with the model's own mlx-lm code (its matrix products computed by numpy's BLAS:
_InNumpy) in one pass streamed over the decoder layers (`measure`: one layer's weights in memory at
a time):

* per module, the energy E[x_j²] of each input channel, and the moments E[x xᵀ] GPTQ weighs
  rounding errors by. Expert stacks: every calibration token is
  sent through every expert (not only the ones its router picked), so an expert the router rarely
  or never selects is measured all the same; each expert's statistics are then weighted by half
  uniform, half its observed routing frequency.
* per module, its output sensitivity: the KL divergence of the model's next-token distribution
  when that module alone is quantized at a probe setting (the rest float), estimated from the
  error it adds to its decoder layer's output (see `measure`). This is what turns
  each module's relative error into the model's: modules differ by orders of magnitude here (on
  the trained tiny Qwen3-MoE, one attention projection costs as much KL as a whole expert stack).
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
import numpy as np

from . import heap
from .errors import CheckpointError, OutputError, PlanError, os_reason, size_text
from .evaluate import free_memory, text_logits
from .names import layer_of
from .formats import Mode, Quant
from .gptq import dequantized_affine, gram_upper, mirror_upper, one_blas_thread
from .surgery import (Handed, LayerStandIn, StopForward, expert_containers, expert_stack_types, module_at,
                      recording, skeleton, standing_in)
from .target import quiet_transformers

log = logging.getLogger(__name__)

PROBE = Quant.make(Mode.AFFINE, 3, 64)  # the setting each module's output sensitivity is measured at
CHUNK = 2  # sequences per call of a decoder layer
# output sensitivity's tokens: the first PROBE_LENGTH of each sequence of the first chunk (None: all).
# On the trained tiny MoE, 2 x 256 of 2 x 512 gives the same allocation at --target-bpw 4 and 5, KL
# as low or lower at 3.5 and 4.5, the probes and carried states at half the CPU time (the pass 3.2 -> 2.6 s);
# 1 x 512 and 2 x 128 move more modules
PROBE_SEQUENCES, PROBE_LENGTH = CHUNK, 256
MIN_ROUTED = 32  # an expert routed fewer tokens has its input moments from every token alone
SPILL_SHARE = 0.25  # hidden states beyond this share of the memory available are kept on disk
SCRATCH_MARGIN = 1 << 26  # bytes the temporary folder must have free beyond the moments' estimate
# decoder layers whose perturbed states the sensitivity carries to the model's output, at most (see measure): the
# first and the last of the probed layers and others evenly between; each other layer's are carried only to the
# next of them. Carried states cost one layer call each per later layer: all L of them to the output took
# 1 + 2 + … + L calls (on the 6 GB layout's 18 layers, 10 -> 15 s a layer from the first to the last, 16 cores)
PERTURBED_LAYERS = 8
TAIL_BLOCK = 1 << 24  # logits (float32 elements) the KL of the sensitivity takes at once
# a decoder layer of at most this many bytes of weights has its statistics taken and its probes run, each in a
# thread of its own, while the next layer's chunks run (its weights held until then: at most this many bytes
# more); a larger one's one after the other, before the next layer's. On the 2-core VM,
# the trained tiny MoE's pass 4.6 -> 3.9 s beside its probes (the same CPU time); a 64-expert layer of
# the 6 GB layout's at once took the pass's peak RSS 1.22 -> 1.41 GiB (their temporaries and the probes')
BESIDE_PROBES = 1 << 27
# threads that carry a small layer's perturbed states and probe half of its modules beside its other probes, where
# the pass has more than this many cores plus one (on 2, the trained tiny MoE's pass took more CPU and no less time)
ASIDE = 2


CALIB_SEQUENCES, CALIB_LENGTH = 8, 512  # defaults: sequences of tokens read from a calibration file


def _tokenizer(path: Path | None, where: str):
    """The checkpoint's own tokenizer (mlx-lm's load_tokenizer), or a one-line error."""
    from mlx_lm.utils import load_tokenizer

    if path is None:
        raise CheckpointError(f"{where}: text needs the checkpoint's tokenizer; expected SRC with tokenizer files, "
                              "or token ids as .npy")
    files = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
    try:
        if not any((Path(path) / f).is_file() for f in files):
            raise FileNotFoundError(" / ".join(files))
        return load_tokenizer(Path(path))
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a missing tokenizer
        raise CheckpointError(f"{where}: SRC {path} has no tokenizer mlx-lm can load ({type(e).__name__}); expected "
                              "tokenizer.json or tokenizer.model in SRC, or token ids as .npy") from None


def _jsonl_texts(path: Path, where: str, tokenizer) -> list[str]:
    """Each line's `text`, or its chat `messages` rendered with the model's chat template."""
    import json

    texts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise CheckpointError(f"{where}: line {n} is not JSON; expected one object per line") from None
        if isinstance(record, dict) and isinstance(record.get("text"), str):
            texts.append(record["text"])
        elif isinstance(record, dict) and isinstance(record.get("messages"), list):
            if not getattr(tokenizer, "chat_template", None):
                raise CheckpointError(f"{where}: line {n} has chat messages and SRC's tokenizer has no chat template; "
                                      "expected {\"text\": …} lines")
            texts.append(tokenizer.apply_chat_template(record["messages"], tokenize=False))
        else:
            raise CheckpointError(f"{where}: line {n} has neither a text string nor a messages list; expected "
                                  '{"text": …} or {"messages": [{"role": …, "content": …}, …]}')
    return texts


def read_calibration(file: str | Path, tokenizer: str | Path | None = None, length: int = CALIB_LENGTH,
                     sequences: int = CALIB_SEQUENCES, vocab_size: int | None = None) -> mx.array:
    """Token batch [n ≤ sequences, length] from a calibration file, spread evenly over it:
    `.npy` integer token ids (read without pickle); `.jsonl` lines of {"text": …} or chat
    {"messages": […]} (rendered with the model's chat template); any other file as UTF-8 text.
    Text is tokenized by the checkpoint's own tokenizer (the folder `tokenizer`, mlx-lm's
    load_tokenizer): a real model's ids are its BPE vocabulary's, never bytes. Every id must lie
    in [0, vocab_size): mlx's embedding does not check, and an id past the end reads outside the
    table (a segmentation fault, not an error)."""
    path = Path(file)
    where = f"--calib {file}"
    if length < 1 or sequences < 1:
        raise CheckpointError(f"{where}: {sequences} sequences of {length} tokens; expected at least one of one")
    try:
        if path.suffix == ".npy":
            ids = np.load(path, allow_pickle=False)
        else:
            tok = _tokenizer(tokenizer, where)
            texts = _jsonl_texts(path, where, tok) if path.suffix == ".jsonl" else [path.read_text(encoding="utf-8")]
            with quiet_transformers():  # "longer than the maximum sequence length": it is cut into sequences below
                ids = np.array([i for text in texts for i in tok.encode(text)], dtype=np.int64)
    except OSError as e:
        raise CheckpointError(f"{where}: {os_reason(e)}; expected a readable text, .jsonl or .npy file") from None
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{where}: not UTF-8 text (byte {e.start}); expected text, .jsonl or .npy token ids") \
            from None
    except (ValueError, EOFError) as e:  # pickled, object, truncated or not .npy at all
        reason = str(e).split(". ")[0].rstrip(".") or type(e).__name__
        raise CheckpointError(f"{where}: not a .npy array numpy reads without pickle ({reason}); expected integer "
                              "token ids saved with numpy.save") from None
    if ids.dtype == bool or not np.issubdtype(ids.dtype, np.integer):
        raise CheckpointError(f"{where}: {ids.dtype} values; expected integer token ids")
    ids = ids.reshape(-1)
    if ids.size and (low := int(ids.min())) < 0:
        raise CheckpointError(f"{where}: token id {low} at position {int(ids.argmin())}; expected ids from 0")
    if vocab_size is not None and ids.size and (outside := ids >= vocab_size).any():
        first = int(outside.argmax())
        raise CheckpointError(f"{where}: token id {int(ids[first])} at position {first} ({int(outside.sum())} in "
                              f"all, the largest {int(ids.max())}); expected ids below the model's vocab_size {vocab_size}")
    n = min(len(ids) // length, sequences)
    if n == 0:
        raise CheckpointError(f"{where}: {len(ids)} tokens; expected at least {length} (--calib-length)")
    if n < sequences:
        log.warning("%s: %d tokens give %d of %d sequences of %d", where, len(ids), n, sequences, length)
    starts = np.linspace(0, len(ids) - length, n).astype(int)
    return mx.array(np.stack([ids[s:s + length] for s in starts]).astype(np.int32))


# --- the streamed pass ------------------------------------------------------------------------

class _Outputs(Exception):
    """The model's forward unpacks `count` values from each decoder layer (a stand-in returned one)."""

    def __init__(self, count: int):
        super().__init__(count)
        self.count = count


_UNPACKED = re.compile(r"not enough values to unpack \(expected (\d+), got 1\)")


def _hidden(out) -> mx.array:
    """A decoder layer's hidden states, of what it returns (a tuple's first: see surgery.Handed)."""
    return out[0] if isinstance(out, tuple) else out


def _handed_on(value) -> bool:
    """Whether a Handed mark is among a layer's arguments (in tuples, lists and dicts)."""
    if isinstance(value, Handed):
        return True
    if isinstance(value, (tuple, list)):
        return any(_handed_on(v) for v in value)
    return isinstance(value, dict) and any(_handed_on(v) for v in value.values())


class _States:
    """The carried hidden states of `sequences` sequences, set and read in chunks of CHUNK: in
    memory, or in an np.memmap file once they would take more than SPILL_SHARE of the memory
    available."""

    def __init__(self, sequences: int):
        self.sequences = sequences
        self._blocks: dict[int, mx.array] = {}
        self._file = self._folder = None

    def __setitem__(self, c: int, h: mx.array) -> None:
        h = h.astype(mx.float32)
        if not self._blocks and self._file is None:  # the first block decides
            total = h.nbytes // h.shape[0] * self.sequences
            if (free := free_memory()) is not None and total > SPILL_SHARE * free:
                self._folder = tempfile.TemporaryDirectory(prefix="moequant-calibration-")
                file = Path(self._folder.name) / "states"
                try:
                    with _writing(file, "the calibration's hidden states") as f:  # zeros: a full disk says so now,
                        zeros = memoryview(bytes(min(total, 1 << 24)))  # not as a SIGBUS when a mapped page is written
                        for start in range(0, total, len(zeros)):
                            f.write(zeros[: total - start])
                except OutputError:
                    self._folder.cleanup()
                    raise
                self._file = np.memmap(file, np.float32, "r+", shape=(self.sequences, *h.shape[1:]))
                log.info("calibration: the hidden states (%.1f GB) are kept on disk", total / 1e9)
        if self._file is None:
            self._blocks[c] = h
        else:
            self._file[c * CHUNK: c * CHUNK + h.shape[0]] = np.array(h)

    def __getitem__(self, c: int) -> mx.array:
        if self._file is None:
            return self._blocks[c]
        return mx.array(self._file[c * CHUNK: min((c + 1) * CHUNK, self.sequences)])


# --- the pass's matrix products in numpy ---------------------------------------------------------
# mlx's Linux CPU wheel multiplies matrices with the reference BLAS (mlx_cpu.libs/libblas): measured
# on 2 cores, [1024, 1024] @ [1024, 32768] runs at 2.2 GFLOP/s in mlx against 48 in numpy's
# OpenBLAS, 20x more CPU time. The pass therefore runs the model's own code with the products of its
# float Linear modules, expert stacks and embeddings computed by numpy (_InNumpy), each product on
# one BLAS thread and independent ones (experts, heads, row blocks) on a pool of threads (_threads).

_BLOCK = 1 << 22  # weight elements widened (or put at PROBE) at once
CAUSAL_BLOCK = 128  # queries a causal attention takes at once (see _attention_in_numpy)
THREADED_FLOPS = 1 << 28  # products of fewer floating point operations run whole, on one thread
_pool: ThreadPoolExecutor | None = None  # the pass's threads while `measure` runs (see _threads)
_pool_size = 1
_task = threading.local()  # .running: this thread runs one of _in_pool's items
TASK_MEMORY = 1 << 27  # bytes of temporaries _in_pool's items may hold at once (widened weights, scores)


@contextmanager
def _threads():
    """While the pass runs: numpy's BLAS on one thread (one_blas_thread, held for the whole pass:
    this OpenBLAS's setting is the process's, not the calling thread's, so threads that set and
    restore it by turns would run each other's products on a thread count that changes with their
    timing, and their results with it), and a pool of as many threads as cores for independent
    products (`_in_pool`, `_mm`): each expert's, each attention head's, row blocks of large ones,
    sharing a few malloc arenas (heap.few_arenas)."""
    global _pool, _pool_size
    # the cores this process may run on (macOS has no affinity: all of them)
    size = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    heap.few_arenas()
    with one_blas_thread(), ThreadPoolExecutor(size, thread_name_prefix="moequant-calibrate") as pool:
        _pool, _pool_size = pool, size
        try:
            yield
        finally:
            _pool, _pool_size = None, 1


def _run_task(fn, item):
    """fn(item) as an item of _in_pool (see _pooled)."""
    _task.running = True
    try:
        return fn(item)
    finally:
        _task.running = False


def _pooled() -> bool:
    """Whether _in_pool spreads items over threads: inside the pass, but not from one of its items
    (a thread of the pool never waits on the pool)."""
    return _pool is not None and not getattr(_task, "running", False)


def _in_pool(fn, items, item_bytes: int = 0, flops: int | None = None) -> list:
    """[fn(item) for item in items], spread over the pass's threads where _pooled, else in this
    thread; at most TASK_MEMORY / `item_bytes` (each item's temporaries) at once: measured on
    one 64-expert layer, a pool of 16 threads unbounded took the pass's peak RSS from 1.63 to 2.01 GB.
    Where the pass has at most ASIDE + 1 cores, items of fewer than THREADED_FLOPS `flops` in all run
    in this thread too: there, handed to the pool's few threads, a probe's experts and attention heads
    (the trained tiny MoE's, ~0.1-0.5 ms each) queued behind the layer calls' products, and the
    probes, which set the pass's length, waited (on the 2-core VM, its pass 1.98 -> 1.74 s, medians
    of 16 interleaved runs). With more cores the pool has threads to spare (not measured there)."""
    if not _pooled() or (flops is not None and flops < THREADED_FLOPS and _pool_size <= ASIDE + 1):
        return [fn(item) for item in items]
    room = threading.BoundedSemaphore(max(1, TASK_MEMORY // item_bytes)) if item_bytes else nullcontext()

    def bounded(item):
        with room:
            return fn(item)

    return list(_pool.map(partial(_run_task, bounded), items))


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b (2-D; `a` may be bfloat16's stored_bits), on one BLAS thread (inside the pass, all of
    them are: see _threads). Below THREADED_FLOPS whole: OpenBLAS threads small products too, and
    its threads' hand-offs cost more than the product (the trained tiny MoE's pass on the loaded
    2-core VM: 8.4 s of CPU with one thread, 27-34 s with two). Above, in blocks of a's rows spread
    over the pass's threads where _pooled: OpenBLAS's own threads wait on each other, on a loaded
    machine on the slowest (measured on the 2-core VM: [128, 2048] @ [2048, 768] at 6 GFLOP/s with
    its two threads, 49 on one); outside the pass, on OpenBLAS's threads."""
    rows = a.shape[0]
    if 2 * rows * a.shape[1] * b.shape[1] < THREADED_FLOPS:
        with one_blas_thread():
            return _wide(a) @ b
    if not _pooled():
        return _wide(a) @ b
    out = np.empty((rows, b.shape[1]), np.result_type(np.float32 if a.dtype == np.uint16 else a, b))
    step = -(-rows // (16 * _pool_size)) * 16  # a multiple of 16 rows (the kernels' tiles)
    _in_pool(lambda r: np.matmul(_wide(a[r:r + step]), b, out=out[r:r + step]), range(0, rows, step))
    return out


def _wide(a: np.ndarray) -> np.ndarray:
    """_mm's left operand: stored_bits of bfloat16 widened (in the task that multiplies its rows: on
    16 cores, the pass's widening of expert stacks in its main thread kept the other threads idle),
    any other array as it is."""
    return widened_bits(a) if a.dtype == np.uint16 else a


def stored_bits(a: mx.array) -> np.ndarray:
    """numpy's view of an mlx array's memory (no copy; bfloat16 as its uint16 bits), for as_float32.
    A contiguous bfloat16 array is read through its buffer as bytes: mlx's `view` is an op of its
    own, scheduled and evaluated per call (in the pass, 0.6 ms for a 16-expert stack that is
    already in memory, ~0.3 s of the trained tiny MoE's pass)."""
    if a.dtype != mx.bfloat16:
        return np.asarray(a)
    buffer = memoryview(a)  # evaluates `a`, as np.asarray does
    if buffer.c_contiguous and a.size and a.ndim:
        return np.frombuffer(buffer.cast("B"), np.uint16).reshape(a.shape)
    return np.asarray(a.view(mx.uint16))


def widened_bits(a: np.ndarray) -> np.ndarray:
    """float32 of a stored_bits array: bfloat16's bits widened exactly, another float converted."""
    if a.dtype == np.uint16:
        wide = a.astype(np.uint32)
        wide <<= 16  # in place: one array made, not two (0.74 -> 0.40 ms for 768 x 2048)
        return wide.view(np.float32)
    return a.astype(np.float32, copy=False)


def as_float32(a: mx.array) -> np.ndarray:
    """float32 numpy of an mlx array (bfloat16 widened exactly, without mlx's CPU cast)."""
    return widened_bits(stored_bits(a))


class _Reuse(threading.local):
    """While a decoder layer's probes run (see `measure`; each thread's its own, or, in a thread probing beside
    the one that made the layer's reference call, that one's `kept`, only read): the results of the pass's stand-ins
    (_InNumpy's products, _attention_in_numpy's attention) on the layer's reference call, which a
    probe's call of the layer takes where a stand-in is called with the same inputs at the same
    setting (what comes before the probed module, and what does not depend on it: with an expert
    stack at the probe, the layer's attention) instead of computing them again. A result is known
    by its stand-in (the module it stands in for, or mlx's attention) and the how-manieth call of
    that stand-in in the layer call it is; inputs are compared by value."""

    def __init__(self):
        self.kept: dict = {}
        self.keeping = self.on = False
        self._calls: dict[int, int] = {}

    @contextmanager
    def call(self, keep: bool):
        """Around one call of a layer: its reference call (`keep` its results, those kept before
        dropped) or one of its probes' (take them)."""
        if keep:
            self.kept = {}
        self.on, self.keeping, self._calls = True, keep, {}
        try:
            yield
        finally:
            self.on = self.keeping = False

    def clear(self) -> None:
        self.kept = {}

    def __call__(self, owner, inputs: tuple, compute):
        """compute(), or the result kept for `owner`'s call with these `inputs` (mlx arrays and plain values)."""
        if not self.on:
            return compute()
        n = self._calls[id(owner)] = self._calls.get(id(owner), -1) + 1
        key = (id(owner), n)
        if self.keeping:
            self.kept[key] = (owner, inputs, out := compute())
            return out
        kept = self.kept.get(key)
        if kept is not None and kept[0] is owner and len(kept[1]) == len(inputs) and \
                all(_same(a, b) for a, b in zip(kept[1], inputs)):
            return kept[2]
        return compute()


def _same(a, b) -> bool:
    """Whether two inputs of a stand-in are the same: mlx arrays by value (NaN never equal), the rest by ==."""
    if isinstance(a, mx.array) or isinstance(b, mx.array):
        if not (isinstance(a, mx.array) and isinstance(b, mx.array)) or a.shape != b.shape or a.dtype != b.dtype:
            return False
        return a is b or bool(np.array_equal(stored_bits(a), stored_bits(b)))
    return type(a) is type(b) and a == b


_reuse = _Reuse()


class _InNumpy(nn.Module):
    """Stands in for a float Linear, expert stack or Embedding (`inner`) during the pass: the same
    products, by numpy, on inner's weight or, while `probe` is set, on that weight quantized at
    PROBE and dequantized. The weight is widened to float32 (and put at PROBE) a block of rows or an
    expert at a time, never whole: mlx's dequantize takes 5x its output's memory. An expert stack's
    product is mx.gather_mm's: each row of x by the expert its index names."""

    def __init__(self, inner: nn.Module, stack: bool):
        super().__init__()
        self.inner = inner
        self.stack = stack

    probe = property(lambda self: _at_probe_here(self))

    @staticmethod
    def _weight(stored: np.ndarray, probe: bool) -> np.ndarray:
        """float32 of `stored`, rows of stored_bits(weight) (numpy's slice: mlx's would copy it
        first), at PROBE if `probe`."""
        w = widened_bits(stored)
        return dequantized_affine(w, PROBE.bits, PROBE.group_size, overwrite=w is not stored) if probe else w

    def __call__(self, x: mx.array, *args, **kwargs) -> mx.array:
        if isinstance(self.inner, nn.Embedding):  # its rows, widened: the table stays as stored
            if getattr(self.inner, "_dropped", False):  # rows nothing reads (see _drop_embeddings)
                return mx.zeros((*x.shape, self.inner.weight.shape[-1]), mx.float32)
            rows = widened_bits(stored_bits(self.inner.weight)[np.asarray(x)])
            return mx.array(dequantized_affine(rows, PROBE.bits, PROBE.group_size, overwrite=True) if self.probe
                            else rows)
        if self.stack:
            indices = args[0] if args else kwargs["indices"]
            return _reuse(self.inner, (self.probe, x, indices), lambda: self._gather(x, indices))
        return _reuse(self.inner, (self.probe, x), lambda: self._linear(x))

    def _linear(self, x: mx.array) -> mx.array:
        y = self._product(x)
        if "bias" in self.inner:
            y += as_float32(self.inner.bias)
        return mx.array(y)

    def as_linear(self, x: mx.array) -> mx.array:
        return mx.array(self._product(x))

    @property
    def weight(self) -> mx.array:  # for model code that reads it (a dtype, a tied head)
        return self.inner.weight

    def _product(self, x: mx.array) -> np.ndarray:
        """x Wᵀ, a block of W's rows at a time: inside the pass, a large product's blocks (at least one
        per thread) each widened (and put at PROBE) and multiplied in a task of its own (on 16 cores,
        the pass's main thread widening them in turn kept the other threads idle)."""
        xn = as_float32(x)
        out, n = self.inner.weight.shape
        y = np.empty((*xn.shape[:-1], out), np.float32)
        x2, y2 = xn.reshape(-1, n), y.reshape(-1, out)
        step, stored, probe = max(1, _BLOCK // n), stored_bits(self.inner.weight), self.probe
        if _pooled() and 2 * x2.shape[0] * n * out >= THREADED_FLOPS:
            step = min(step, max(16, -(-out // (16 * _pool_size)) * 16))

            def block(r: int) -> None:
                y2[:, r:r + step] = x2 @ self._weight(stored[r:r + step], probe).T

            # a task's temporaries: its rows widened (at PROBE, dequantized in place), its product
            _in_pool(block, range(0, out, step), 4 * step * n + 4 * x2.shape[0] * step)
            return y
        for r in range(0, out, step):
            y2[:, r:r + step] = _mm(x2, self._weight(stored[r:r + step], probe).T)
        return y

    def _gather(self, x: mx.array, indices: mx.array) -> mx.array:
        experts, out_dims = self.inner.weight.shape[:2]  # [E, out, in]
        xn, idx = as_float32(x), np.asarray(indices)
        rows_of, m = xn.shape[:-2], xn.shape[-2]  # x [..., M, in] broadcast against indices [...]
        batch = np.broadcast_shapes(rows_of, idx.shape)
        source = np.broadcast_to(np.arange(math.prod(rows_of)).reshape(rows_of), batch).reshape(-1)
        flat = np.broadcast_to(idx, batch).reshape(-1)
        xs = xn.reshape(-1, m, xn.shape[-1])
        out = np.empty((flat.size, m, out_dims), np.float32)
        order = np.argsort(flat, kind="stable")
        bounds = np.searchsorted(flat[order], np.arange(experts + 1))
        # rows already grouped by expert (mlx-lm's SwitchGLU sorts them): each expert's a slice
        grouped = np.array_equal(order, np.arange(order.size)) and np.array_equal(source, order)
        stored = stored_bits(self.inner.weight)  # here: mlx runs an op only in the thread that made it
        probe = self.probe  # this thread's setting, for the pool's threads

        def product(e: int) -> None:
            """Expert e's rows by its weight: one matrix product (a batch of [M, in] products would run
            as M-row ones)."""
            w = self._weight(stored[e], probe).T
            if grouped:
                part = slice(bounds[e], bounds[e + 1])
                np.matmul(np.ascontiguousarray(xs[part]).reshape(-1, xs.shape[-1]), w,
                          out=out[part].reshape(-1, out_dims))
            else:
                picked = order[bounds[e]:bounds[e + 1]]
                out[picked] = (xs[source[picked]].reshape(-1, xs.shape[-1]) @ w).reshape(-1, m, out_dims)

        # an item's temporaries: its weight widened (at PROBE, dequantized in place: at the 16 bytes an element
        # that dequantized_affine's three arrays of its size took, a 64 x 768 x 2048 stack's products ran 5 at a
        # time on 16 threads)
        _in_pool(product, [int(e) for e in np.nonzero(np.diff(bounds))[0]],
                 4 * out_dims * xs.shape[-1], 2 * flat.size * m * xs.shape[-1] * out_dims)
        if "bias" in self.inner:
            out += as_float32(self.inner.bias)[flat][:, None]
        return mx.array(out.reshape(*batch, m, out_dims))


def _products(root: nn.Module) -> list[tuple[str, nn.Module, bool]]:
    """(path, module, is an expert stack) of each module under `root` that _in_numpy stands in for:
    Linear, Embedding and expert stacks (mlx-lm's and mlx-vlm's SwitchLinear), not subclasses
    that compute something else."""
    kinds = [(k, False) for k in (nn.Linear, nn.Embedding)]
    kinds += [(t, True) for t in expert_stack_types(root) if t.__name__ == "SwitchLinear"]
    return [(path, m, stack) for path, m in root.named_modules() for kind, stack in kinds
            if path and isinstance(m, kind) and type(m).__call__ is kind.__call__]


@contextmanager
def _attention_in_numpy():
    """Inside the block, mx.fast.scaled_dot_product_attention (which mlx-lm's and mlx-vlm's models
    call) computes by numpy, in float32, one sequence and key/value head at a time (spread over
    the pass's threads, `_in_pool`): mlx's CPU product runs its [2, 32, 512, 128] causal attention
    in ~1.5 s, numpy in ~0.15 s. Attention sinks and any other mask than None, "causal" or an array
    go to mlx's own."""
    own = mx.fast.scaled_dot_product_attention

    def attention(q, k, v, *, scale, mask=None, sinks=None, **kwargs):
        if sinks is not None or kwargs or q.ndim != 4 or not (mask is None or isinstance(mask, mx.array)
                                                               or mask == "causal"):
            return own(q, k, v, scale=scale, mask=mask, sinks=sinks, **kwargs)
        return _reuse(own, (q, k, v, scale, mask), partial(numpy_attention, q, k, v, scale, mask))

    def numpy_attention(q, k, v, scale, mask):
        (b, h, length, _), (kv_heads, keys) = q.shape, k.shape[1:3]
        qn, kn, vn = (as_float32(a) for a in (q, k, v))
        # the mask as added to the scores: a boolean one as 0 where it keeps, -inf where it masks
        if mask is None or isinstance(mask, str):
            masks = None if mask is None else np.where(np.triu(np.ones((length, keys), bool), keys - length + 1),
                                                       np.float32(-np.inf), np.float32(0))
        elif mask.dtype == mx.bool_:
            masks = np.where(np.asarray(mask), np.float32(0), np.float32(-np.inf))
        else:
            masks = as_float32(mask)
        masks = None if masks is None else np.broadcast_to(masks, (b, h, length, keys))
        group = h // kv_heads  # query heads per key/value head, in order (mlx's grouped attention)
        out = np.empty((b, h, length, vn.shape[-1]), np.float32)
        # a causal mask's queries in blocks, each with the keys it leaves them (about half the scores)
        step = CAUSAL_BLOCK if isinstance(mask, str) and keys >= length else length

        def one(where: tuple[int, int]) -> None:
            """Sequence i's attention by key/value head j (its group of query heads)."""
            i, j = where
            heads = slice(j * group, (j + 1) * group)
            for first in range(0, length, step):
                rows = slice(first, min(first + step, length))
                seen = keys if step == length else rows.stop + keys - length  # the keys these rows may see
                scores = ((qn[i, heads, rows] * np.float32(scale)).reshape(-1, qn.shape[-1]) @ kn[i, j, :seen].T)
                scores = scores.reshape(group, -1, seen)
                if masks is not None:
                    scores += masks[i, heads, rows, :seen]
                scores -= scores.max(-1, keepdims=True)
                np.exp(scores, out=scores)
                scores /= scores.sum(-1, keepdims=True)
                out[i, heads, rows] = (scores.reshape(-1, seen) @ vn[i, j, :seen]).reshape(group, -1, vn.shape[-1])

        _in_pool(one, [(i, j) for i in range(b) for j in range(kv_heads)], 8 * group * length * keys,  # scores, twice
                 4 * b * h * length * keys * vn.shape[-1])
        return mx.array(out).astype(q.dtype)

    mx.fast.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        mx.fast.scaled_dot_product_attention = own


def _in_numpy(root: nn.Module):
    """Inside the block, the modules of `_products(root)` are stood in for by _InNumpy (module_at
    finds those), mlx-lm's and mlx-vlm's SwiGLU activations by _SwiGLU and MLA's MultiLinear by
    _MultiLinear; put back on exit."""
    stand_ins = {path: (lambda m, s=stack: _InNumpy(m, s)) for path, _, stack in _products(root)}
    stand_ins.update((path, _SwiGLU) for path, m in root.named_modules() if path and _is_swiglu(m))
    stand_ins.update((path, _MultiLinear) for path, m in root.named_modules() if path and _is_multilinear(m))
    return standing_in(root, stand_ins)


def _is_multilinear(module: nn.Module) -> bool:
    """Whether `module` is mlx-lm's or mlx-vlm's MultiLinear (MLA's per-head embed_q / unembed_out)."""
    return type(module).__name__ == "MultiLinear" and type(module).__module__.endswith(".mla")


class _MultiLinear(nn.Module):
    """Stands in for MLA's MultiLinear (per-head weights [heads, out, in], applied to x or, in
    prefill, transposed to the latent) during the pass: its products as mlx-lm computes them, on its
    weight or, while `probe` is set, on that weight quantized at PROBE and dequantized (as
    to_quantized quantizes it: along `in`), so that its sensitivity is measured like a Linear's.
    While `recorder` is set (see _recording), its calls on inputs of its weight's `in` are recorded:
    unembed_out's (the latent, in prefill), not embed_q's on the latent in mlx-lm's prefill
    (transpose=False: its `in`, the queries, are never seen; see convert's note on --rounding gptq)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.recorder = inner, None

    probe = property(lambda self: _at_probe_here(self))

    @property
    def weight(self) -> mx.array:
        return self.inner.weight

    def __call__(self, x: mx.array, transpose: bool = True) -> mx.array:
        if transpose and self.recorder is not None:
            self.recorder(x)
        w = self.inner.weight
        if self.probe:
            w = mx.array(dequantized_affine(as_float32(w), PROBE.bits, PROBE.group_size))
        return x @ (w.swapaxes(-1, -2) if transpose else w)


def _is_swiglu(module: nn.Module) -> bool:
    """Whether `module` is mlx-lm's or mlx-vlm's SwiGLU (an expert container's activation)."""
    return type(module).__name__ == "SwiGLU" and type(module).__module__.endswith(".switch_layers")


class _SwiGLU(nn.Module):
    """Stands in for an expert container's SwiGLU during the pass: silu(gate)·x by numpy (see _activation)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def __call__(self, x: mx.array, gate: mx.array) -> mx.array:
        return mx.array(_activation(self.inner, as_float32(x), as_float32(gate)))


def _float32(weights: dict[str, mx.array], keep=frozenset()) -> dict[str, mx.array]:
    """The floating point weights as float32, but those in `keep` (numpy's products widen those)."""
    return {k: v.astype(mx.float32) if mx.issubdtype(v.dtype, mx.floating) and k not in keep else v
            for k, v in weights.items()}


def _drop_embeddings(model: nn.Module, prefix: str) -> None:
    """Once the tokens are embedded: the tables of the embeddings outside the decoder layers
    (`prefix`), unless the model has no `lm_head` Linear (its head may be tied to one), are
    released for lazy stand-ins never evaluated, their rows zeros from then on: the tail's forward
    embeds what the decoder layers' stand-ins never read. One vocabulary's table less in memory
    while the layers run (151936 x 2048 in bfloat16, 0.6 GB, for Qwen3's)."""
    if not any(path.rpartition(".")[2] == "lm_head" and isinstance(m, nn.Linear) for path, m in model.named_modules()):
        return
    for path, module, _ in _products(model):
        if isinstance(module, nn.Embedding) and not path.startswith(prefix + "."):
            module.weight = mx.zeros(module.weight.shape, module.weight.dtype)
            object.__setattr__(module, "_dropped", True)


def _widened(root: nn.Module) -> set[str]:
    """The names of the weights under `root` that only numpy reads (widened there): those of its
    Linear modules, expert stacks and embeddings (a float32 copy of a 151k-token table of 2048 is
    1.2 GB)."""
    return {f"{path}.{name}" for path, _, _ in _products(root) for name in ("weight", "bias")}


def _model_module(model: nn.Module) -> str:
    """The mlx-lm or mlx-vlm module whose model `model` is (a vision-language target names it: target.py)."""
    cls = type(model)
    return cls.__name__.rsplit(".", 1)[0] if cls.__module__ == __package__ + ".target" else cls.__module__


def _decoder_layers(model: nn.Module, keys) -> str:
    """The path of the decoder layer list (`model.layers`, `language_model.model.layers`): the one
    holding the expert containers, else the one most tensor names fall in."""
    found = [layer_of(p + ".") for p in expert_containers(model).values()] or [layer_of(k) for k in keys]
    prefixes = [f[0] for f in found if f]
    if not prefixes:
        raise PlanError(f"--calib: {_model_module(model)}'s model has no decoder layers "
                        "(`….layers.N.…`); expected a decoder model")
    return max(set(prefixes), key=prefixes.count)


_probing = threading.local()  # .modules: ids of the stand-ins at PROBE in this thread (see _at_probe)


@contextmanager
def _at_probe(module: _InNumpy | _MultiLinear):
    """The stand-in computing with its weight quantized at PROBE, dequantized, in this thread only
    (its `probe`): the layer's other threads (see measure's carried states) call it as it is."""
    here = _probing.__dict__.setdefault("modules", set())
    here.add(id(module))
    try:
        yield
    finally:
        here.discard(id(module))


def _at_probe_here(module: nn.Module) -> bool:
    return id(module) in getattr(_probing, "modules", ())


def _probed(model: nn.Module, paths) -> list[tuple[str, _InNumpy | _MultiLinear]]:
    """(path, stand-in) of each path whose module is stood in for (inside `_in_numpy`) with a
    weight the probe can quantize."""
    out = []
    for path in sorted(paths):
        module = module_at(model, path)
        if isinstance(module, (_InNumpy, _MultiLinear)) and module.inner.weight.shape[-1] % PROBE.group_size == 0:
            out.append((path, module))
    return out


class _Seen:
    """The inputs of a decoder layer's recorded modules as numpy float32 [N, in], converted (and
    their sums taken) once per distinct input: q/k/v, or the router and its experts, share one.
    Each distinct input is numbered (its sums' "input")."""

    def __init__(self):
        self._last: tuple = (None, None, {})
        self._count = 0

    def __call__(self, x: mx.array) -> tuple[np.ndarray, dict]:
        if self._last[0] is not x:
            self._count += 1
            self._last = (x, np.array(x.reshape(-1, x.shape[-1]).astype(mx.float32)), {"input": self._count})
        return self._last[1], self._last[2]


class _Linear:
    """A Linear module's inputs, summed chunk by chunk: Σx_j² and Σx xᵀ (numpy's BLAS: on a CPU
    several times faster than mlx's matmul)."""

    def __init__(self, moments: bool, seen: _Seen | None = None):
        self.n, self.squares, self.products, self.moments, self.seen = 0, 0.0, 0.0, moments, seen or _Seen()
        self.inputs: list = []  # the number _Seen gave each input (None: an input of its own)

    def __call__(self, x: mx.array, indices=None) -> np.ndarray:
        xn, sums = self.seen(x)
        self.add(xn, sums)
        return xn

    def add(self, xn: np.ndarray, sums: dict | None = None) -> None:
        sums = {} if sums is None else sums
        if "squares" not in sums:
            sums["squares"] = np.einsum("ij,ij->j", xn, xn, dtype=np.float64)
        if self.moments and "products" not in sums:
            sums["products"] = _mm(xn.T, xn)
        self.n += xn.shape[0]
        self.inputs.append(sums.get("input"))
        self.squares = self.squares + sums["squares"]
        if self.moments and isinstance(self.products, float):  # its own array (recorders of one input share sums)
            self.products = self.products + sums["products"]
        elif self.moments:  # in place: a new sum beside the old and the chunk's product took 3 H at the peak
            np.add(self.products, sums["products"], out=self.products)

    def mean_squares(self) -> np.ndarray:
        return self.squares / self.n

    def mean_products(self) -> np.ndarray:
        return self.products / self.n

    def same_inputs(self) -> tuple | None:
        """What identifies the inputs it summed: recorders with the same summed the same products,
        in the same order (their sums shared, see _Seen), so hold the same moments; None if unknown."""
        return tuple(self.inputs) if self.inputs and None not in self.inputs else None


# an expert container's stacks by mlx-lm's and mlx-vlm's containers: those whose input is the container's
# (hidden states) and the one whose input is their activation: SwitchGLU's activation(up, gate), SwitchMLP's
# activation(fc1) (Nemotron-H's, relu²)
_GLU = (("up_proj", "gate_proj"), "down_proj")
_MLP = (("fc1",), "fc2")


def _expert_layout(glu: nn.Module) -> tuple[tuple[str, ...], str | None]:
    """(the stacks whose input is the container's, the stack whose input is their activation) of an
    expert container, as its call uses them: GLU's (up_proj, gate_proj) and down_proj, MLP's (fc1,)
    and fc2; ((), None) for another layout (no statistics are taken of it)."""
    for inputs, output in (_GLU, _MLP):
        if all(hasattr(glu, n) for n in (*inputs, output)) and hasattr(glu, "activation"):
            return inputs, output
    return (), None


class _Experts:
    """An expert container's inputs. Every token goes through every expert: Σx² and Σx xᵀ of the
    hidden states (the input of gate/up, or fc1, the same for every expert), summed chunk by chunk;
    per expert Σh² and Σh hᵀ of its own activation h (down_proj's or fc2's input, with the input
    stacks' biases) on every token, and its Σh hᵀ over the tokens routed to it, taken once the
    layer's chunks are all recorded, a block of experts at a time (`_activations`: one block's sums
    in memory, not every expert's). Of the hidden states routed to each expert no sum is kept (E of
    them would be [E, in, in]): the states and the routing are kept instead, tokens × in, for
    RoutedMoments to sum one expert at a time."""

    def __init__(self, glu: nn.Module, moments: bool, seen: _Seen | None = None):
        self.moments = moments
        # its activation as the recorder is made: the statistics may be taken while _in_numpy stands in for it
        self.activation = getattr(glu, "activation", None)
        self.experts = _expert_count(glu)
        self.input_names, self.output_name = _expert_layout(glu)
        self.stacks = {n: glu[n] for n in self.input_names}  # _in_numpy stands in for glu's
        self.slots = np.zeros(self.experts, dtype=np.int64)  # (token, choice) slots per expert
        self.routed = np.zeros(self.experts, dtype=np.int64)  # tokens routed to each expert
        self.hidden = _Linear(moments, seen)
        self.inputs: list[tuple[np.ndarray, np.ndarray | None]] = []  # per call (x, chosen)
        self.act_squares: np.ndarray | None = None  # [E, inner] E[h²], once _activations has run
        self.seen_indices = False
        self.zero: np.ndarray | None = None  # the slots of the next call that chose a zero expert (_ZeroExperts)

    def __call__(self, x: mx.array, indices: mx.array | None) -> None:
        xn = self.hidden(x)
        chosen = None
        if indices is not None:
            self.seen_indices = True
            chosen = np.array(indices).reshape(xn.shape[0], -1)
            if self.zero is not None:  # slots that chose a zero expert: no expert's (-1)
                chosen = np.where(self.zero.reshape(chosen.shape), -1, chosen.astype(np.int32))
                self.zero = None
            self.slots += np.bincount(chosen[chosen >= 0], minlength=self.experts)[: self.experts]
            self.routed += [np.count_nonzero((chosen == e).any(-1)) for e in range(self.experts)]
        self.inputs.append((xn, chosen))

    def _activations(self, products: bool):
        """Each expert's activation statistics over every recorded call, yielded expert by expert in
        order: its E[h hᵀ] (see _mixed) if `products`, else None; self.act_squares filled on the way.
        The sums are taken chunk by chunk, in the order the calls came, as when they were taken per call."""
        inner = self.stacks[self.input_names[0]].weight.shape[1]
        # experts at once: ~16 MB of activations, but one per thread of the pass where that stays within 64 MB
        # (each expert's sums are one task: 5 experts of 768 x 1,024 tokens kept 11 of 16 threads idle)
        each = max(self.inputs[0][0].shape[0] * inner, 1)
        block = max(1, (1 << 22) // each, min(_pool_size, (1 << 24) // each))
        self.act_squares = np.empty((self.experts, inner))
        for first in range(0, self.experts, block):
            part = slice(first, min(first + block, self.experts))
            act = [_Linear(products) for _ in range(part.start, part.stop)]
            routed = [0.0] * len(act)
            for xn, chosen in self.inputs:
                # [experts, inner, tokens]: each expert's activations contiguous (the input stacks' own order)
                ins = [self._stack_product(n, part, xn, inner) for n in self.input_names]
                # SwiGLU's in numpy, each expert's in its task; another activation by mlx
                h_all = None if _is_swiglu(self.activation) else _activation(self.activation, *ins)

                def add(j: int) -> None:
                    """Expert part.start + j's sums of this call, from its activations [inner, tokens]."""
                    h = (_activation(self.activation, *(a[j] for a in ins)) if h_all is None else h_all[j]).T
                    act[j].add(h)  # h: [tokens, inner]
                    if products and chosen is not None and \
                            (picked := np.nonzero((chosen == part.start + j).any(-1))[0]).size:
                        hr = h[picked]
                        routed[j] = routed[j] + _mm(hr.T, hr)

                _in_pool(add, range(part.stop - part.start))
                ins = h_all = None
            for j, e in enumerate(range(part.start, part.stop)):
                self.act_squares[e] = act[j].mean_squares()
                yield _mixed(act[j].mean_products(), routed[j], int(self.routed[e])) if products else None
                act[j] = routed[j] = None

    def _stack_product(self, name: str, part: slice, xn: np.ndarray, inner: int) -> np.ndarray:
        """The experts `part` of input stack `name` on every token: [experts, inner, tokens], with its bias."""
        stack = self.stacks[name]
        out = _mm(stored_bits(stack.weight)[part].reshape(-1, xn.shape[1]), xn.T).reshape(-1, inner, xn.shape[0])
        if "bias" in stack:
            out += as_float32(stack.bias)[part][:, :, None]
        return out

    @property
    def n(self) -> int:
        return self.hidden.n

    def thin(self) -> list[int]:
        """Experts routed fewer than MIN_ROUTED tokens (all of them, for a container never routed)."""
        return [e for e in range(self.experts) if self.routed[e] < MIN_ROUTED]

    def energy(self, container: str) -> dict[str, mx.array]:
        """Per expert E[x²] of each projection's input on every token, weighted half uniformly, half
        by the expert's routing frequency (weights average 1)."""
        freq = self.slots / max(self.slots.sum(), 1) if self.seen_indices else np.full(self.experts, 1 / self.experts)
        weight = (0.5 + 0.5 * self.experts * freq)[:, None]
        out = {f"{container}.{name}": weight * self.hidden.mean_squares()[None] for name in self.input_names}
        if self.output_name is not None:
            if self.act_squares is None:
                for _ in self._activations(products=False):
                    pass
            out[f"{container}.{self.output_name}"] = weight * self.act_squares
        return {p: mx.array(v, dtype=mx.float32) for p, v in out.items()}

    def input_moments(self, container: str, store: "Moments", wanted: set[str]) -> None:
        """Per expert E[x xᵀ] of the projections in `wanted` into `store`: the mean of that over
        every token and that over the tokens routed to it (see _mixed); the input stacks' as
        RoutedMoments, formed when read."""
        if names := [p for p in (f"{container}.{n}" for n in self.input_names) if p in wanted]:
            store.put_routed(names, self.hidden.mean_products(), self.inputs, self.routed)
        if self.output_name is not None and (path := f"{container}.{self.output_name}") in wanted:
            sweep = self._activations(products=True)  # expert by expert, in order: as put_stack asks
            store.put_stack(path, self.experts, lambda e: next(sweep))


class _ZeroExperts(nn.Module):
    """Stands in for the router of an MoE block with zero experts (LongCat-Flash's: its top-k is
    taken over the experts and `zero_expert_num` identity experts, and the block hands its expert
    stack a zero expert's slot as expert 0 at weight 0): tells the stack's recorder which slots of
    the call to come chose a zero expert, so that they count as no expert's (else expert 0's routed
    tokens and routing frequency took in every token with a zero expert among its choices)."""

    def __init__(self, inner: nn.Module, recorder: _Experts):
        super().__init__()
        self.inner = inner
        object.__setattr__(self, "_recorder", recorder)  # a plain attribute, not part of the module tree

    def __call__(self, x: mx.array):
        indices, weights = self.inner(x)
        self._recorder.zero = np.array(indices) >= self._recorder.experts
        return indices, weights


def _zero_experts(model: nn.Module, recorders: dict):
    """Inside the block, the routers of the recorded expert containers' MoE blocks that have zero
    experts are stood in for by _ZeroExperts."""
    routers = {}
    for path, recorder in recorders.items():
        block = path.rpartition(".")[0]
        if isinstance(recorder, _Experts) and block and getattr(module_at(model, block), "zero_expert_num", 0) \
                and "router" in module_at(model, block):
            routers[f"{block}.router"] = lambda m, r=recorder: _ZeroExperts(m, r)
    return standing_in(model, routers)


def _expert_count(glu: nn.Module) -> int:
    """A container's experts: the leading dimension of its stacked weights (up_proj's, or fc1's where
    it has no up_proj, as Nemotron-H's)."""
    for child in glu.children().values():
        weight = getattr(child, "weight", None)
        if isinstance(weight, mx.array) and weight.ndim == 3:
            return weight.shape[0]
    return 0


def _activation(activation: nn.Module, *inputs: np.ndarray) -> np.ndarray:
    """An expert container's activation of its input stacks' products (numpy float32; see
    _expert_layout): mlx-lm's and mlx-vlm's SwiGLU of (up, gate), silu(gate)·up, in numpy (mlx's CPU
    takes ~35 ns an element for a sigmoid); any other by mlx."""
    if _is_swiglu(activation):
        up, gate = inputs
        with np.errstate(over="ignore"):  # exp(-gate) overflows to inf where silu is -0
            h = np.negative(gate)  # gate / (1 + exp(-gate)) * up, in one array (the same values)
            np.exp(h, out=h)
            np.add(h, 1, out=h)
            np.divide(gate, h, out=h)
            np.multiply(h, up, out=h)
            return h
    return as_float32(activation(*(mx.array(a) for a in inputs)))


def _mixed(everyone: np.ndarray, routed, count: int) -> np.ndarray:
    """An expert's E[x xᵀ]: the mean of that over every token and `routed` / `count`, that over the
    `count` tokens routed to it; over every token alone if fewer than MIN_ROUTED were."""
    return everyone if count < MIN_ROUTED else (everyone + routed / count) / 2


def _routed_products(inputs: list[tuple[np.ndarray, np.ndarray | None]], e: int, out: np.ndarray,
                     part: np.ndarray) -> np.ndarray:
    """Σ x xᵀ over the tokens routed to expert `e` into `out` [in, in], call by call (`inputs`: each
    call's states and chosen experts), each call's product into `part` (finite): as `total = 0.0;
    total = total + xr.T @ xr` per call gives it bit for bit (the same products, added in the same
    order), but with only the upper triangles' sum kept and copied into the lower one once
    (gram_upper)."""
    out[...] = 0
    for xn, chosen in inputs:
        if chosen is not None and (picked := np.nonzero((chosen == e).any(-1))[0]).size:
            np.add(out, gram_upper(np.ascontiguousarray(xn[picked]), part), out=out)
    return mirror_upper(out)


class RoutedMoments:
    """E[x xᵀ] per expert ([E, in, in]) of projections whose input is an expert container's hidden
    states (gate/up), formed when sliced, one expert at a time (see _mixed), from what Moments
    stored: the mean over every token, each expert's routed token count, and each call's states and
    routing. Indexing gives numpy float32; so does np.asarray (all experts at once). Equal for the
    projections of one record (an expert stack's gate and up): quantize rounds those together."""

    def __init__(self, folder: Path, name: str, experts: int, calls: int, n_in: int, first: int = 0):
        self.folder, self.name, self.calls, self.first = folder, name, calls, first
        self.shape, self.ndim = (experts, n_in, n_in), 3

    def part(self, experts: range) -> "RoutedMoments":
        """Those of `experts` only (a worker's share of the stack, see procpool.units), indexed from 0."""
        which = range(self.shape[0])[experts.start:experts.stop]
        return RoutedMoments(self.folder, self.name, len(which), self.calls, self.shape[-1], self.first + which.start)

    def _key(self) -> tuple:
        return self.folder, self.name, self.first, self.shape[0]

    def __eq__(self, other) -> bool:
        return isinstance(other, RoutedMoments) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _load(self, what: str) -> np.ndarray:
        return np.load(self.folder / f"{self.name}.{what}.npy", mmap_mode="r", allow_pickle=False)

    def __getitem__(self, key) -> np.ndarray:
        # the record is read on every call, not kept between them: the mean over every token is
        # in·in floats and the states' pages stay mapped while their files are open (kept, they
        # would add to the peak of the GPTQ that follows), and reading them from the page cache
        # takes ~7 ms of the ~100 ms a chunk of two experts' H takes (in = 2048, 4 calls: under 1%
        # of the stack's GPTQ; the 2-core VM)
        which = range(self.first, self.first + self.shape[0])[key]
        everyone, routed = np.array(self._load("shared")), self._load("routed")
        inputs = []
        for c in range(self.calls):
            chosen = self.folder / f"{self.name}.chosen{c}.npy"
            inputs.append((self._load(f"x{c}"), np.load(chosen) if chosen.is_file() else None))
        experts = [which] if isinstance(which, int) else which
        out = np.empty((len(experts), *self.shape[1:]), np.float32)
        part = np.zeros(self.shape[1:], np.float32)  # each call's product
        for i, e in enumerate(experts):
            count = int(routed[e])
            if count < MIN_ROUTED:
                out[i] = everyone
                continue
            # _mixed's (everyone + routed / count) / 2 in place, the same float32 operations
            mixed = _routed_products(inputs, e, out[i], part)
            np.divide(mixed, count, out=mixed)
            np.add(everyone, mixed, out=mixed)
            np.divide(mixed, 2, out=mixed)
        return out[0] if isinstance(which, int) else out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self[:] if dtype is None else self[:].astype(dtype)


# --- the temporary folder (TMPDIR): the moments wait there until the layers are rounded ----------

MOMENTS = "--rounding gptq's input moments"


@contextmanager
def _writing(file: Path, what: str):
    """`file` open for writing; an OSError (a full disk) as one line that names what it was for."""
    try:
        with open(file, "wb") as f:
            yield f
    except OSError as e:
        raise OutputError(f"{file}: {os_reason(e)}; expected room for {what} in the temporary folder (TMPDIR "
                          "chooses it)") from e


def _saved(file: Path, array: np.ndarray) -> None:
    """np.save(file, array) of Moments, a full disk one line (see _writing): numpy's own write of the data
    raises an OSError without its errno, and one through np.memmap dies of SIGBUS."""
    array = np.ascontiguousarray(array)
    with _writing(file, MOMENTS) as f:
        np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(array))
        f.write(memoryview(array).cast("B"))


def moments_bytes(model: nn.Module, moments: set[str], containers: set[str], tokens: int) -> int:
    """About the bytes Moments takes for `moments` (paths) over `tokens` tokens, as _recorders and
    _Experts.input_moments record them: an [in, in] upper triangle (float32) per Linear (or
    MultiLinear) module; per expert container, for its input stacks (gate/up, fc1) the mean over
    every token [in, in] and each call's states (tokens × in), for its output stack (down_proj, fc2)
    E upper triangles [inner, inner]. The routing choices (tokens × top-k indices) are left out;
    Linear modules with the same input (q/k/v), whose moments are one record, are counted each, and
    so is embed_q, whose inputs are never seen."""
    total = 0
    for container in containers:
        glu = module_at(model, container)
        inputs, output = _expert_layout(glu)
        if not inputs:
            continue
        experts, inner, n_in = glu[inputs[0]].weight.shape
        if {f"{container}.{n}" for n in inputs} & moments:
            total += 4 * n_in * (n_in + tokens) + 8 * experts
        if f"{container}.{output}" in moments:
            total += 4 * experts * inner * (inner + 1) // 2
    for path in moments:
        if not any(path.startswith(c + ".") for c in containers) and \
                (isinstance(m := module_at(model, path), nn.Linear) or _is_multilinear(m)):
            total += 4 * m.weight.shape[-1] * (m.weight.shape[-1] + 1) // 2
    return total


def _room_for_moments(need: int) -> None:
    """Refuses a temporary folder without room for `need` bytes of moments before the pass, not hours into it."""
    folder = tempfile.gettempdir()
    free = shutil.disk_usage(folder).free
    log.info("calibration: %s, about %s, kept in %s until the layers are rounded", MOMENTS, size_text(need), folder)
    if free < need + SCRATCH_MARGIN:
        raise OutputError(f"{folder}: {size_text(free)} free; expected at least {size_text(need + SCRATCH_MARGIN)} "
                          f"for {MOMENTS}, kept there until the layers are rounded (TMPDIR chooses the folder)")


def _upper_header(f, shape: tuple[int, ...]) -> None:
    """The .npy header of float32 upper triangles of [n, n] matrices, `shape` [..., n, n]."""
    n = shape[-1]
    np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                             "shape": (*shape[:-2], n * (n + 1) // 2)})


def _write_upper(f, m: np.ndarray) -> None:
    """The upper triangle of [n, n] `m`, diagonal included, as float32: each row from its diagonal on
    (row by row: a mask of an n = 4096 matrix's triangle is 16 MB, and unpacks 6x slower)."""
    m = np.ascontiguousarray(m, np.float32)
    for i in range(m.shape[-1]):
        f.write(memoryview(m[i, i:]).cast("B"))


def _whole(packed: np.ndarray, n: int, out: np.ndarray | None = None) -> np.ndarray:
    """The symmetric [n, n] float32 matrix of an upper triangle as _write_upper writes it."""
    out = np.empty((n, n), np.float32) if out is None else out
    start = 0
    for i in range(n):
        out[i, i:] = packed[start:start + n - i]
        start += n - i
    return mirror_upper(out)


class Symmetric:
    """E[x xᵀ] of a module ([in, in]) or one per expert ([E, in, in]) as Moments stores it: each
    matrix's upper triangle, diagonal included (the moments of the 6 GB layout's 9 layers at --bits 4:
    2.89 -> 1.67 GB), made whole when read: indexing gives numpy float32 (a stack's a few experts at a
    time, as GPTQ reads them), and so does np.asarray (all of it). A matrix the pass summed in
    blocks of rows on several threads may differ from its transpose in the last bit: the upper
    triangle is the one kept."""

    def __init__(self, file: Path, shape: tuple[int, ...], first: int = 0):
        self.file, self.shape, self.ndim, self.first = file, tuple(shape), len(shape), first

    def part(self, experts: range) -> "Symmetric":
        """Those of `experts` only (a worker's share of the stack, see procpool.units), indexed from 0."""
        which = range(self.shape[0])[experts.start:experts.stop]
        return Symmetric(self.file, (len(which), *self.shape[1:]), self.first + which.start)

    def _key(self) -> tuple:
        return self.file, self.shape, self.first

    def __eq__(self, other) -> bool:  # the same record: modules with the same inputs (see Moments.alias)
        return isinstance(other, Symmetric) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __getitem__(self, key) -> np.ndarray:
        packed, n = np.load(self.file, mmap_mode="r", allow_pickle=False), self.shape[-1]
        if self.ndim == 2:
            return _whole(packed, n)[key]
        which = range(self.first, self.first + self.shape[0])[key]
        if isinstance(which, int):
            return _whole(packed[which], n)
        out = np.empty((len(which), n, n), np.float32)
        for i, e in enumerate(which):
            _whole(packed[e], n, out[i])
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[...] if self.ndim == 2 else self[:]
        return whole if dtype is None or whole.dtype == dtype else whole.astype(dtype)


class Moments(Mapping):
    """Module path -> E[x xᵀ] of its inputs (a Symmetric or RoutedMoments: numpy float32 when indexed,
    read from disk then): each decoder layer's written to files of a temporary folder as the streamed
    pass leaves the layer (its room checked before the pass: moments_bytes), so
    that memory holds one layer's at a time, and read by whichever thread or worker process
    quantizes the module (pickled, a Moments names the folder; the folder is its creator's, removed
    by `close`, by leaving its `with` block, or at exit)."""

    def __init__(self):
        self._folder: tempfile.TemporaryDirectory | None = None
        self.root: Path | None = None
        self._index: dict[str, tuple] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_folder": None}  # a copy elsewhere never removes the folder

    def _file(self) -> str:
        """A new file name in the folder (made on first use)."""
        if self.root is None:
            self._folder = tempfile.TemporaryDirectory(prefix="moequant-moments-")
            self.root = Path(self._folder.name)
        return str(len(self._index))

    def put(self, path: str, value: np.ndarray) -> None:
        """A module's E[x xᵀ] [in, in], its upper triangle (see Symmetric)."""
        name = self._file()
        with _writing(self.root / f"{name}.npy", MOMENTS) as f:
            _upper_header(f, value.shape)
            _write_upper(f, value)
        self._index[path] = ("symmetric", name, value.shape)

    def put_stack(self, path: str, experts: int, expert) -> None:
        """An [E, in, in] stack written expert by expert (expert(e) -> E[x xᵀ] of expert e), each its
        upper triangle (see Symmetric)."""
        name = self._file()
        first = expert(0)
        shape = (experts, *first.shape)
        with _writing(self.root / f"{name}.npy", MOMENTS) as f:  # written in order, not mapped (see _saved)
            _upper_header(f, shape)
            _write_upper(f, first)
            first = None
            for e in range(1, experts):
                _write_upper(f, expert(e))
        self._index[path] = ("symmetric", name, shape)

    def put_routed(self, paths: list[str], everyone: np.ndarray, inputs: list, routed: np.ndarray) -> None:
        """The RoutedMoments of `paths` (projections of the same input), one record for all."""
        name = self._file()
        _saved(self.root / f"{name}.shared.npy", np.asarray(everyone, np.float32))
        _saved(self.root / f"{name}.routed.npy", routed)
        for c, (xn, chosen) in enumerate(inputs):
            _saved(self.root / f"{name}.x{c}.npy", xn)
            if chosen is not None:
                _saved(self.root / f"{name}.chosen{c}.npy", chosen)
        for path in paths:
            self._index[path] = ("routed", name, len(routed), len(inputs), everyone.shape[-1])

    def alias(self, path: str, other: str) -> None:
        """`path`'s moments are `other`'s (the same inputs): one record for both."""
        self._index[path] = self._index[other]

    def __getitem__(self, path: str):
        kind, name, *shape = self._index[path]
        if kind == "routed":
            return RoutedMoments(self.root, name, *shape)
        return Symmetric(self.root / f"{name}.npy", *shape)

    def __iter__(self):
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def only(self, paths) -> "Moments":
        """These paths' moments, in the same folder (closing either removes it)."""
        view = Moments.__new__(Moments)
        view.__dict__.update(self.__dict__, _index={p: v for p, v in self._index.items() if p in paths})
        return view

    def close(self) -> None:
        if self._folder is not None:
            self._folder.cleanup()

    def __enter__(self) -> "Moments":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class Statistics:
    """What one streamed calibration pass measured (see `measure`)."""

    energy: dict[str, mx.array] = field(default_factory=dict)  # path -> E[x_j²] ([in], [E, in] for stacks)
    moments: Moments = field(default_factory=Moments)  # path -> E[x xᵀ] ([in, in], [E, in, in])
    sensitivity: dict[str, float] = field(default_factory=dict)  # path -> KL (nats/token) at PROBE
    thin: dict[str, list[int]] = field(default_factory=dict)  # expert container -> experts routed < MIN_ROUTED
    tokens: int = 0
    seconds: float = 0.0

    def thin_note(self) -> str | None:
        """The plan note naming the experts routed fewer than MIN_ROUTED tokens, if any."""
        if not self.thin:
            return None
        listed = "; ".join(f"{c} {', '.join(map(str, e))}" for c, e in self.thin.items())
        return (f"--calib: experts routed fewer than {MIN_ROUTED} of {self.tokens:,} tokens: {listed}; their input "
                "moments are taken over every token alone (no routed share), their input energy weighted by "
                "their routing frequency as every expert's")


@_threads()
@_attention_in_numpy()
def measure(model: nn.Module, weights: list[dict[str, mx.array]], tokens: mx.array, *, energy=frozenset(),
            moments=frozenset(), sensitivity=frozenset(), on_energy=None) -> Statistics:
    """Calibration statistics in one streamed pass over the decoder layers of `model` (a target
    model as target.build_model makes it, its weights lazy; the pass consumes it).

    `weights` are the model's float tensors (lazy, in the model's names, e.g. the conversion's
    normalized groups; the list is emptied): each is read when its layer comes. The tokens are
    embedded once (the model's own forward, its decoder layers replaced by stand-ins that keep the
    arguments each is called with) and the hidden states carried from layer to layer in chunks of
    CHUNK sequences; one layer's weights are in memory at a time (two small layers', see
    BESIDE_PROBES: one's statistics and probes run while the next one's chunks do). The states
    carried are the float model's (see BENCHMARKS.md, issue 15, for the quantized alternative).

    `energy` / `moments`: paths of the Linear modules (and expert stacks) whose input energy E[x_j²]
    / moments E[x xᵀ] to measure. `sensitivity`: paths whose output sensitivity to estimate: the
    KL of the model's next-token distribution with that module alone quantized at PROBE, on the
    probe's tokens (PROBE_SEQUENCES x PROBE_LENGTH of the first chunk). A module of decoder layer i
    gets KL_i · ε_m / ε_i, ε the squared error of layer i's output with the module alone at PROBE
    (ε_m) or all of the layer's at once (ε_i, whose states are carried through the rest of the float
    model to give KL_i); a module outside the decoder layers that the text forward reaches
    (embeddings, lm_head) gets its KL exactly. The states of at most PERTURBED_LAYERS layers are
    carried to the output (`_carried`: the first and last probed layers and others evenly between);
    another layer i's only to the next of them, j, where their squared error from j's float output
    times KL_j / ε_j gives KL_i (the assumption each module's figure already rests on: that KL
    follows the squared error at a layer's output). That is one layer call per module (each taking
    what its module leaves unchanged from the layer's reference call: _Reuse) and, for the perturbed
    states, at most PERTURBED_LAYERS + L / PERTURBED_LAYERS layer calls per layer (that many states
    held), on the probe's tokens, whatever the number of modules and layers.

    `on_energy(energies, settled)`, if given, is called (from one of the pass's threads) as each
    decoder layer's statistics are taken, with the energies measured there (path -> E[x_j²]) and
    `settled`, that layer's path prefix (`model.layers.3.`): no other energy of a path under it comes;
    at the end, with those of the modules outside the decoder layers and None: none other comes."""
    stats = Statistics(tokens=tokens.size)
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="moequant-collect") as background, \
                ThreadPoolExecutor(1, thread_name_prefix="moequant-probe") as prober, \
                (ThreadPoolExecutor(ASIDE, thread_name_prefix="moequant-aside") if _pool_size > ASIDE + 1
                 else nullcontext()) as aside:
            return _measure(model, weights, tokens, stats, background, prober, aside, energy=energy,
                            moments=moments, sensitivity=sensitivity, on_energy=on_energy)
    except BaseException:
        stats.moments.close()  # a pass that failed or was interrupted leaves no moments on disk
        raise
    finally:
        _reuse.clear()  # a pass that raised mid-layer holds no layer's results


def _measure(model: nn.Module, weights: list[dict[str, mx.array]], tokens: mx.array, stats: Statistics,
             background: ThreadPoolExecutor, prober: ThreadPoolExecutor, aside: ThreadPoolExecutor | None, *,
             energy, moments, sensitivity, on_energy) -> Statistics:
    """`measure` into `stats`, taking each layer's statistics in the thread of `background` and a small
    layer's probes in that of `prober`, while the next layer's chunks run; the perturbed states carried
    through a layer, and half of its modules' probes, in the threads of `aside` (if any), beside its
    other probes."""
    start = time.monotonic()

    def collect(recorders: dict, settled: str | None) -> None:
        added = _collect(stats, recorders, energy, moments)
        if on_energy is not None:
            on_energy(added, settled)

    tokens = tokens[None] if tokens.ndim == 1 else tokens
    energy, moments, sensitivity = set(energy), set(moments), set(sensitivity)
    wanted = energy | moments
    tensors = {}
    while weights:
        tensors.update(weights.pop(0))
    prefix = _decoder_layers(model, tensors)
    layers = module_at(model, prefix)
    real, by_layer, outside = list(layers), [{} for _ in layers], {}
    for key in sorted(tensors):
        where = layer_of(key)
        inside = where is not None and where[0] == prefix and where[1] < len(layers)
        (by_layer[where[1]] if inside else outside)[key] = tensors.pop(key)
    model.load_weights(list(_float32(outside, _widened(model)).items()), strict=False)
    del outside
    chunks = [tokens[i:i + CHUNK] for i in range(0, tokens.shape[0], CHUNK)]
    containers = {c for c in expert_containers(model).values() if c.startswith(prefix + ".")}
    outside_paths = {p for p in wanted | sensitivity if not p.startswith(prefix + ".")}
    if moments:
        _room_for_moments(moments_bytes(model, moments, containers, tokens.size))
    skeletons = [skeleton(layer) for layer in real]
    for i in range(len(layers)):  # a layer is in the model while the pass is at it
        layers[i] = LayerStandIn(skeletons[i])

    def embedded(chunk: mx.array) -> tuple[mx.array, list]:
        """(layer 0's input, each layer's other arguments) for a chunk: the model's own forward
        up to its decoder layers."""
        calls = [[] for _ in layers]
        for i in range(len(layers)):
            layers[i] = LayerStandIn(skeletons[i], calls[i], last=i == len(layers) - 1, outputs=outputs)
        try:
            text_logits(model, chunk)
        except StopForward:
            pass
        except (ValueError, TypeError) as e:  # the model's own forward, with each layer's return in its hands
            if outputs == 1 and (unpacked := _UNPACKED.search(str(e))):
                raise _Outputs(int(unpacked[1])) from None
            if outputs == 1:
                raise
            raise PlanError(f"--calib: {_model_module(model)}'s model does not run with its decoder layers "
                            f"stood in for ({type(e).__name__}: {e}); its layers hand more than hidden states to the "
                            "next: expected a model whose decoder layers take hidden states alone") from None
        arguments = [(args, kwargs) for _, args, kwargs in (c[0] for c in calls)]
        h = calls[0][0][0].astype(mx.float32)
        # evaluated here: an array left lazy on this thread's stream cannot be evaluated by the probes' thread
        # ("There is no Stream(cpu, 0) in current thread": Gemma 4's sliding-window masks, bailing_moe_v3's states)
        mx.eval(h, [a for _, a in tree_flatten(arguments) if isinstance(a, mx.array)])
        if outputs > 1 and _handed_on(arguments):
            raise PlanError(f"--calib: {_model_module(model)}'s model hands what a decoder layer returns "
                            "beside its hidden states to a later layer; expected decoder layers that take hidden "
                            "states alone (the calibration carries those only)")
        return h, arguments

    outputs = 1  # values each decoder layer returns: a one-sequence forward (batch 1) unpacks them if more
    try:
        embedded(chunks[0][:1])
    except _Outputs as e:
        outputs = e.count

    states, arguments = _States(tokens.shape[0]), []
    with _in_numpy(model):  # the embeddings' rows widened as stored
        for c, chunk in enumerate(chunks):
            states[c], args = embedded(chunk)
            mx.eval(states[c])
            arguments.append(args)
    # sensitivity, on the probe's tokens (PROBE_SEQUENCES x PROBE_LENGTH of the first chunk: that
    # chunk's states, else their own, carried beside them): their states carried with a module
    # outside the layers (an embedding) at PROBE, and with all of layer i's at PROBE (with ε_i and
    # each module's ε_m)
    probe_chunk = chunks[0][:PROBE_SEQUENCES, :PROBE_LENGTH]
    shared = probe_chunk.shape == chunks[0].shape
    probe_state, probe_arguments = (None, arguments[0]) if shared or not sensitivity else embedded(probe_chunk)

    def probe_states() -> mx.array:
        """The float states of the probe's tokens where the pass is: chunk 0's, or their own."""
        return states[0] if probe_state is None else probe_state

    perturbed_inputs = {}
    with _in_numpy(model):
        outside_probed = [path for path, _ in _probed(model, outside_paths & sensitivity)]
        for path in outside_probed:
            with _at_probe(module_at(model, path)):
                h, _ = embedded(probe_chunk)
            if not mx.array_equal(h, probe_states()).item():
                perturbed_inputs[path] = h
    _drop_embeddings(model, prefix)
    perturbed_layers: dict[int, tuple[float, dict[str, float]]] = {}
    # a layer's perturbed states carried only to the next carried layer (`chained`), then their error there
    chained: dict[int, mx.array] = {}
    chained_errors: dict[int, tuple[int, float]] = {}
    carried = _carried([i for i in range(len(real)) if any(p.startswith(f"{prefix}.{i}.") for p in sensitivity)])

    log.info("calibration: %d decoder layers, %s tokens in %d chunks", len(layers), f"{tokens.size:,}", len(chunks))
    collecting = None  # the statistics being taken in `background`, of the last small layer
    probing_ahead = None  # the probes running in `prober`, of the last small layer

    def carry(layer: nn.Module, args: tuple, kwargs: dict) -> None:
        """The perturbed states through the float layer `layer` (inside its _in_numpy)."""
        for states in (perturbed_inputs, chained):
            for name, h in states.items():
                states[name] = _hidden(layer(h, *args, **kwargs))
                mx.eval(states[name])

    def probe_errors(layer: nn.Module, probed: list, x0, reference, args: tuple, kwargs: dict,
                     kept: dict | None = None) -> dict[str, float]:
        """ε_m of each (path, module) of `probed`: the squared error of the layer's output on `x0` with that
        module alone at PROBE, each call taking what it leaves unchanged from the reference call (`kept`: that
        call's results, where another thread made it)."""
        if kept is not None:
            _reuse.kept = kept
        try:
            errors = {}
            for path, module in probed:
                with _at_probe(module), _reuse.call(keep=False):
                    errors[path] = ((_hidden(layer(x0, *args, **kwargs)) - reference) ** 2).sum().item()
            return errors
        finally:
            if kept is not None:
                _reuse.clear()

    def probe_layer(i: int, layer: nn.Module, rels: dict[str, str], probing: bool, x0, reference, small: bool) -> None:
        """Layer i's probes: the probe's own tokens through the float layer (their reference: else chunk 0's
        `x0` and `reference`), then each module of `rels` (paths in the layer -> in the model) alone at PROBE
        and all of them at once. Meanwhile, for a `small` layer (see BESIDE_PROBES), in `aside`'s threads, the
        perturbed states are carried through the float layer, and half of the modules are probed (a module is at
        PROBE in the thread probing it only: `_at_probe`): the same figures as one after the other, which they
        are without `aside` and for a large layer (three of its calls at once: on the 6 GB layout's first 3
        layers, the pool forced to 16 threads on the 2-core VM, the pass's peak RSS 1.33 -> 1.53 GB)."""
        nonlocal probe_state
        beside = aside if small else None
        with _in_numpy(layer):
            args, kwargs = probe_arguments[i]
            helpers = []
            if (perturbed_inputs or chained) and beside is None:
                carry(layer, args, kwargs)
            elif perturbed_inputs or chained:
                helpers.append(beside.submit(_on_own_stream, carry, layer, args, kwargs))
            try:
                if probe_state is not None:  # the probe's own tokens, through the float layer
                    x0 = probe_state
                    with _reuse.call(keep=True) if probing else nullcontext():
                        reference = probe_state = _hidden(layer(x0, *args, **kwargs))
                        mx.eval(reference)
                if probed := [(rels[rel], module) for rel, module in _probed(layer, rels)]:
                    half = len(probed) // 2 if beside is not None else 0
                    if half:
                        helpers.append(probing_aside := beside.submit(
                            _on_own_stream, probe_errors, layer, probed[half:], x0, reference, args, kwargs, _reuse.kept))
                    errors = probe_errors(layer, probed[:half] if half else probed, x0, reference, args, kwargs)
                    with ExitStack() as stack:
                        for _, module in probed:
                            stack.enter_context(_at_probe(module))
                        h = _hidden(layer(x0, *args, **kwargs))
                        mx.eval(h)
                    if half:
                        errors.update(probing_aside.result())
                    perturbed_layers[i] = (((h - reference) ** 2).sum().item(), errors)
            finally:
                for helper in helpers:
                    helper.result()
            if probed:
                if i in carried:
                    for j in list(chained):  # the chained states of the layers before: their error here
                        chained_errors[j] = (i, ((chained.pop(j) - reference) ** 2).sum().item())
                    perturbed_inputs[i] = h
                else:
                    chained[i] = h
        _reuse.clear()

    for i in range(len(real)):  # not enumerate(real): its last (i, layer) pair would hold the layer to the next
        layer_start = time.monotonic()
        layers[i] = layer = real[i]
        weights = {k[len(f"{prefix}.{i}."):]: v for k, v in by_layer[i].items()}
        small = sum(v.nbytes for v in weights.values()) <= BESIDE_PROBES
        layer.load_weights(list(_float32(weights, _widened(layer)).items()), strict=False)
        by_layer[i] = real[i] = None
        del weights
        for _, parameter in tree_flatten(layer.parameters()):  # one at a time: an expert stack made of its
            mx.eval(parameter)  # experts' tensors holds both until evaluated (2x a layer's weights at once)
        own = {p for p in wanted | sensitivity if p.startswith(f"{prefix}.{i}.")}
        recorders = _recorders(model, own & wanted, moments, {c for c in containers if c.startswith(f"{prefix}.{i}.")})
        probing = bool(own & sensitivity)
        with _in_numpy(layer), _recording(model, recorders), _zero_experts(model, recorders):
            for c in range(len(chunks)):
                x, (args, kwargs) = states[c], arguments[c][i]
                with _reuse.call(keep=True) if c == 0 and shared and probing else nullcontext():  # for the probes
                    out = _hidden(layer(x, *args, **kwargs))
                    mx.eval(out)
                if c == 0:
                    x0, reference = x, out
                states[c] = out
        # a small layer's statistics taken in a thread of their own while its probes and the next layer's
        # chunks run (see BESIDE_PROBES; one layer's at a time); a large one's before its probes
        if collecting is not None:
            collecting.result()
        settled = f"{prefix}.{i}."
        collecting = background.submit(_collect_in_thread, collect, recorders, settled) if small else None
        if collecting is None:
            collect(recorders, settled)
        # a small layer's probes (on the probe's own tokens) in a thread of their own while the next layer's
        # chunks run, one layer's at a time (two layers' weights at once); a large one's, or those that take
        # chunk 0's results, here
        rels = {p[len(f"{prefix}.{i}."):]: p for p in own & sensitivity}
        if probing_ahead is not None:
            probing_ahead.result()
        if small and probe_state is not None:
            probing_ahead = prober.submit(_on_own_stream, probe_layer, i, layer, rels, probing, None, None, small)
        else:
            probing_ahead = None
            probe_layer(i, layer, rels, probing, x0, reference, small)
        layers[i] = LayerStandIn(skeletons[i], outputs=outputs)
        # the recorders and probed modules hold the layer's modules, and so its weights: dropped
        # before the next layer's are read (else two layers' weights at once: 1.38 -> 1.99 GiB from
        # the first to the second 64-expert layer of the 6 GB layout)
        del layer, x0, reference, recorders
        parameter = None  # so does this loop's last value (a weight)
        mx.clear_cache()
        heap.trim()
        elapsed = time.monotonic() - start
        log.info("calibration: layer %d/%d, %s tokens (%.1f s; ETA %.0f s)", i + 1, len(real), f"{tokens.size:,}",
                 time.monotonic() - layer_start, elapsed / (i + 1) * (len(real) - i - 1))

    if collecting is not None:
        collecting.result()
    if probing_ahead is not None:
        probing_ahead.result()
    # the tail (final norm, lm_head) on the float states: its modules' inputs (the logits are not
    # needed, hence never evaluated), then the KL of each perturbation of the probe's tokens
    reached: set[str] = set()
    recorders = _recorders(model, outside_paths & wanted, moments, set())
    with recording(model, {p: _reaching(reached, p, recorders.get(p)) for p in recorders.keys() | outside_paths}):
        for c in range(len(chunks)):
            _tail(model, layers, chunks[c], states[c])
    collect(recorders, None)
    perturbed = {path: (perturbed_inputs.get(path, probe_states()), path)
                 for path in outside_probed
                 if path in perturbed_inputs or path in reached}
    # (a chained state with no carried layer after it went all the way: its KL is measured)
    perturbed.update((i, (states[i], None)) for i in perturbed_layers for states in (perturbed_inputs, chained)
                     if i in states)
    kls = _tail_kl(model, layers, probe_chunk, probe_states(), perturbed)
    stats.sensitivity.update((path, kls[path]) for path in outside_probed if path in kls)
    stats.sensitivity.update(_layer_sensitivities(kls, perturbed_layers, chained_errors))
    if chained_errors:
        log.info("calibration: the sensitivity's KL carried to the output from %d of %d decoder layers (%s), "
                 "from the others to the next of them", len(perturbed_layers) - len(chained_errors),
                 len(perturbed_layers), ", ".join(str(i) for i in sorted(perturbed_layers) if i not in chained_errors))
    stats.seconds = time.monotonic() - start
    log.info("calibration: done in %.1f s", stats.seconds)
    return stats


def _carried(probed: list[int]) -> set[int]:
    """Of the probed decoder layers (in order), those whose perturbed states `measure` carries to the
    model's output: all if at most PERTURBED_LAYERS, else that many, the first and the last and the
    others evenly spaced between them."""
    if len(probed) <= PERTURBED_LAYERS:
        return set(probed)
    return {probed[round(k * (len(probed) - 1) / (PERTURBED_LAYERS - 1))] for k in range(PERTURBED_LAYERS)}


def _layer_sensitivities(kls: dict, perturbed_layers: dict[int, tuple[float, dict[str, float]]],
                         chained_errors: dict[int, tuple[int, float]]) -> dict[str, float]:
    """Each probed module's KL_i · ε_m / ε_i, from its layer i's (ε_i, {module: ε_m}) in
    `perturbed_layers` and KL_i: in `kls` where layer i's states were carried to the output, else
    from `chained_errors` (i -> the carried layer j its states were carried to, and their squared
    error from j's float output), times KL_j / ε_j."""
    out = {}
    for i, (error, errors) in perturbed_layers.items():
        if i in kls:
            out.update((path, kls[i] * e / max(error, 1e-30)) for path, e in errors.items())
        else:
            j, reached = chained_errors[i]
            kl = kls[j] / max(perturbed_layers[j][0], 1e-30) * reached
            out.update((path, kl * e / max(error, 1e-30)) for path, e in errors.items())
    return out


def _reaching(reached: set[str], path: str, recorder=None):
    """A recording callback that notes `path` as reached by the forward pass (and records its input)."""
    def call(x: mx.array, indices: mx.array | None) -> None:
        reached.add(path)
        if recorder is not None:
            recorder(x, indices)
    return call


def _tail(model: nn.Module, layers: list, chunk: mx.array, final: mx.array) -> mx.array:
    """The model's logits with `final` as the last decoder layer's output (the model's own code for
    the rest: final norm, lm_head or tied embeddings)."""
    layers[-1].out = final
    try:
        return text_logits(model, chunk)
    finally:
        layers[-1].out = None


def _log_probs(logits: mx.array) -> np.ndarray:
    """Log-softmax of float32 logits [..., V] as numpy [tokens, V]."""
    z = as_float32(logits).reshape(-1, logits.shape[-1])
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _tail_kl(model: nn.Module, layers: list, chunk: mx.array, final: mx.array, perturbed: dict) -> dict:
    """Mean KL(reference ‖ perturbed) of the next-token distributions over the tokens of `chunk`,
    for each key of `perturbed` -> (the last decoder layer's output, the path of a module outside
    the layers to put at PROBE, or None); the reference's is `final`. In blocks of tokens
    (TAIL_BLOCK logits at a time), with the reference's log-probabilities kept: one lm_head product
    per block and state, by numpy."""
    rows, length = chunk.shape
    if not perturbed:
        return {}
    vocab = _tail(model, layers, chunk[:1, :1], final[:1, :1]).shape[-1]  # mlx's lazy logits: never evaluated
    step = max(1, min(length, TAIL_BLOCK // vocab))
    blocks = [(slice(r, r + 1), slice(s, s + step)) for r in range(rows) for s in range(0, length, step)]
    kl = {}
    with _in_numpy(model):
        reference = [_log_probs(_tail(model, layers, chunk[b], final[b])) for b in blocks]
        for key, (states, path) in perturbed.items():
            total = 0.0
            with _at_probe(module_at(model, path)) if path is not None else nullcontext():
                for b, p_log in zip(blocks, reference):
                    q_log = _log_probs(_tail(model, layers, chunk[b], states[b]))
                    total += float((np.exp(p_log) * (p_log - q_log)).sum(dtype=np.float64))
            kl[key] = max(total / chunk.size, 0.0)
    return kl


def _recorders(model: nn.Module, paths: set[str], moments: set[str], containers: set[str]) -> dict:
    """A statistics recorder per Linear (or MultiLinear) module in `paths` outside the expert
    containers, and per container in `containers` holding one of `paths`; recorders of the same
    input share its sums."""
    out, seen = {}, _Seen()
    for path in sorted(paths):
        if not any(path.startswith(c + ".") for c in containers) and \
                (isinstance(module := module_at(model, path), nn.Linear) or _is_multilinear(module)):
            out[path] = _Linear(path in moments, seen)
    for container in sorted(containers):
        if any(p.startswith(container + ".") for p in paths):
            out[container] = _Experts(module_at(model, container), any(p.startswith(container + ".") for p in moments),
                                      seen)
    return out


@contextmanager
def _recording(model: nn.Module, recorders: dict):
    """surgery.recording of `recorders` inside `_in_numpy`, where a MultiLinear's recorder is its
    stand-in's (_MultiLinear records only its calls on inputs of its weight's `in`)."""
    multi = {p: r for p, r in recorders.items() if isinstance(module_at(model, p), _MultiLinear)}
    for path, recorder in multi.items():
        module_at(model, path).recorder = recorder
    try:
        with recording(model, {p: r for p, r in recorders.items() if p not in multi}):
            yield
    finally:
        for path in multi:
            module_at(model, path).recorder = None


_collecting = threading.local()  # .stream: the mlx stream of a thread running _collect_in_thread


def _collect_in_thread(collect, *args) -> None:
    """collect(*args) (_collect's work), on an mlx stream of this thread's own (mlx streams belong
    to their thread), its products in this thread alone: the pass's pool is left to the layer calls,
    which wait on it (the statistics' large products queued there before the layer's per-expert
    ones: on the 2-core VM under load, the trained tiny MoE's pass 3.0-4.7 s -> 2.7-3.9 s, side by
    side)."""
    if not hasattr(_collecting, "stream"):
        _collecting.stream = mx.new_stream(mx.cpu)
    _task.running = True  # as an item of the pool: _pooled() is False here
    try:
        with mx.stream(_collecting.stream):
            collect(*args)
    finally:
        _task.running = False


def _on_own_stream(fn, *args):
    """fn(*args) on an mlx stream of this thread's own."""
    if not hasattr(_collecting, "stream"):
        _collecting.stream = mx.new_stream(mx.cpu)
    with mx.stream(_collecting.stream):
        return fn(*args)


def _collect(stats: Statistics, recorded: dict, energy: set[str], moments: set[str]) -> dict[str, mx.array]:
    """Each recorder's statistics into `stats` (a module its pass never reached is left out); the
    moments of modules whose inputs were the same (q/k/v) are one record. Returns the energies added."""
    written: dict[tuple, str] = {}  # the inputs of a module whose moments are written -> its path
    added: dict[str, mx.array] = {}
    for path, r in recorded.items():
        if not r.n:
            continue
        if isinstance(r, _Experts):
            if r.moments:  # first: its pass over the activations gives the energy too
                r.input_moments(path, stats.moments, moments)
            added.update((p, v) for p, v in r.energy(path).items() if p in energy)
            if thin := r.thin():
                stats.thin[path] = thin
            continue
        if path in energy:
            added[path] = mx.array(r.mean_squares(), dtype=mx.float32)
        if path in moments:
            if (inputs := r.same_inputs()) in written:
                stats.moments.alias(path, written[inputs])
                continue
            stats.moments.put(path, r.mean_products())
            if inputs is not None:
                written[inputs] = path
    mx.eval(list(added.values()))
    stats.energy.update(added)
    return added
