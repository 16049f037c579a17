"""`--target-bpw`: choose each module's bits and group size to fit a size budget with the least
estimated output error.

Error model. For a linear layer y = W x, quantizing W adds ΔW x to its output, whose expected
energy is Σ_ij ΔW_ij² E[x_j²]. Without calibration data E[x_j²] is taken as 1 (the data-free
proxy: plain weight reconstruction error); with `--calib`, it is measured per input channel on
the calibration text (per expert for expert stacks, with every token sent through every expert so
that experts the router rarely picks are measured too). Each module's error is divided by its
output energy Σ_ij W_ij² E[x_j²], making modules of different scales comparable (a relative
error: measured to track the model's KL better than the absolute one, see BENCHMARKS.md). The
error of each candidate is measured by really quantizing the module (a sample of rows, from every
expert of a stack) as `mx.quantize` does (its numpy copy, bit for bit: `sample_errors`).

With `--calib`, each module's relative errors are then scaled by its measured output sensitivity
(`model_errors`): the KL the model's next-token distribution suffers when that module alone is
quantized at a probe setting (estimated from the error it adds to its decoder layer's output, see
calibrate.measure), divided by the module's relative error at that setting. Each
candidate's error then estimates its own contribution to the model's KL (first order: KL grows
linearly with a small weight perturbation's energy), and summing over modules is summing KL.

Allocation. A multiple-choice knapsack over modules — each picks one candidate, expert stacks one
for all their experts — minimizing the summed error with the total size at most the budget,
solved by dynamic programming over the byte budget in fine bins.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from .calibrate import as_float32, stored_bits, widened_bits
from .checkpoint import Stacked
from .errors import PlanError
from .formats import Mode, Quant
from .gptq import _grid, codes
from .plan import Module

# What --target-bpw chooses from (affine: the one mode every bit width and group size exists in)
CANDIDATES: tuple[Quant, ...] = tuple(Quant.make(Mode.AFFINE, b, g) for b in (2, 3, 4, 5, 6, 8) for g in (128, 64, 32))
SAMPLE_ROWS = 256  # rows per expert (or per matrix) whose quantization error is measured
BINS = 20000  # resolution of the byte budget in the knapsack
_BLOCK = 1 << 18  # sampled weight elements measured at once (1 MB as float32; a thread's temporaries ~4x): the
# candidates' passes over a block stay in cache (2-core VM, against 8 MB blocks: 27 -> 21 ms for a 16 x 128 x 256
# stack, 0.80 -> 0.57 s for 64 x 256 x 768)


@dataclass(frozen=True)
class Choice:
    quant: Quant
    nbytes: int
    error: float


def sample_parts(weight: mx.array | Stacked, seed: int = 0) -> Iterator[np.ndarray]:
    """The rows of `weight` ([out, in] or [E, out, in], or an expert stack as its parts) whose errors
    sample_errors measures, as stored (calibrate.stored_bits), read in the thread that made
    `weight`'s graph (mlx's rule): [E or 1, ≤ SAMPLE_ROWS, in] at once, or for a stack given as its
    parts, [1, ≤ SAMPLE_ROWS, in] a part at a time, each let go once its rows are taken (evaluating
    rows of a stack evaluates it whole: a 64-expert stack of the 6 GB layout, 0.2 GB, and its parts
    beside it until they are dropped)."""
    shape = weight.shape if len(weight.shape) == 3 else (1, *weight.shape)
    rows = None
    if shape[1] > SAMPLE_ROWS:
        rows = mx.array(np.sort(np.random.default_rng(seed).choice(shape[1], SAMPLE_ROWS, replace=False)))
    if not isinstance(weight, Stacked):
        w = weight if weight.ndim == 3 else weight[None]
        yield stored_bits(w if rows is None else w[:, rows])
        return
    parts = weight.parts
    for e in range(len(parts)):
        part, parts[e] = parts[e], None
        yield stored_bits(part if rows is None else part[rows])[None]


def sampled(weight: mx.array | Stacked, seed: int = 0) -> np.ndarray:
    """sample_parts' rows in one array [E or 1, ≤ SAMPLE_ROWS, in]."""
    count, out, e = weight.shape[0] if len(weight.shape) == 3 else 1, None, 0
    for rows in sample_parts(weight, seed):
        if len(rows) == count:
            return rows
        out = np.empty((count, *rows.shape[1:]), rows.dtype) if out is None else out
        out[e:e + len(rows)] = rows
        e += len(rows)
    return out


def sample_errors(sample: np.ndarray | Iterable[np.ndarray], candidates=CANDIDATES,
                  channel_energy: mx.array | None = None) -> dict[Quant, float]:
    """Relative output error of quantizing a weight each way, on a `sample` of its rows (see
    sampled, or sample_parts) from every expert; `channel_energy` is E[x_j²] ([in] or [E, in]),
    default 1."""
    return relative_errors(column_errors(sample, candidates), channel_energy)


def relative_errors(columns: tuple[np.ndarray, dict[Quant, np.ndarray]], channel_energy: mx.array | None = None
                    ) -> dict[Quant, float]:
    """sample_errors from a sample's column_errors: each candidate's Σ_j E[x_j²] Σ_rows (dequantized − w)²
    over Σ_j E[x_j²] Σ_rows w² (`channel_energy` E[x_j²], [in] or [E, in]; default 1)."""
    weights, errors = columns
    n = weights.shape[-1]
    h = np.ones((1, n)) if channel_energy is None else as_float32(channel_energy).reshape(-1, n).astype(np.float64)
    energy = float((weights * h).sum())
    return {q: float((e * h).sum()) / max(energy, 1e-30) for q, e in errors.items()}


def column_errors(stored: np.ndarray | Iterable[np.ndarray], candidates=CANDIDATES
                  ) -> tuple[np.ndarray, dict[Quant, np.ndarray]]:
    """Of a sample's rows (stored_bits [E, rows, in]): per expert and input column, Σ_rows w² and,
    per candidate (those whose group size divides `in`), Σ_rows (dequantized − w)², float64 [E,
    in], with what `mx.dequantize(*mx.quantize(w))` restores (gptq._plain_affine's values, bit for
    bit). In numpy only (any thread may run it; mlx's CPU dequantize takes 5x its output's memory,
    ~1.1 GB for a 64-expert stack of 768 x 2048 at once), a few experts at a time, each group
    size's minima and maxima taken once for its bit widths (the coarser from the finer), each
    candidate in one buffer, in place. `stored` may also come as its experts a few at a time
    (sample_parts): each expert's errors are its own."""
    if isinstance(stored, np.ndarray):
        step = max(1, _BLOCK // math.prod(stored.shape[1:]))
        stored = [stored[e0:e0 + step] for e0 in range(0, len(stored), step)]
    weights, errors = [], {}
    for block in stored:
        x = widened_bits(block)
        n = x.shape[-1]
        valid = [q for q in candidates if n % q.group_size == 0]
        sizes = sorted({q.group_size for q in valid})
        weights.append(np.einsum("ern,ern->en", x, x))
        extremes = {}
        for size in sizes:  # [2, E, rows, groups]: each group's minimum and maximum, all _grid reads of it
            finer = max((s for s in extremes if size % s == 0), default=None)
            if finer is None:
                groups = x.reshape(*x.shape[:2], -1, size)
                extremes[size] = np.stack([groups.min(-1), groups.max(-1)])
            else:  # the minimum of minima: exact
                low, high = extremes[finer].reshape(2, *x.shape[:2], -1, size // finer)
                extremes[size] = np.stack([low.min(-1), high.max(-1)])
        t, full = np.empty_like(x), np.empty((2, *x.shape), np.float32)
        for q in valid:
            # each group's scale and bias repeated over its columns (numpy's operations with one operand
            # broadcast over a short last axis run several times slower than on two of one shape), by a
            # broadcast copy: np.repeat holds the GIL, 3.5x as long (on threads beside the pass)
            scale, bias = _grid(extremes[q.group_size], q.bits, axis=0)
            grouped = full.reshape(2, *x.shape[:2], -1, q.group_size)
            grouped[0] = scale[..., None]
            grouped[1] = bias[..., None]
            codes(x, full[0], full[1], q.bits, out=t)  # _plain_affine's operations, in its order, into one buffer
            t *= full[0]
            t += full[1]
            t -= x
            errors.setdefault(q, []).append(np.einsum("ern,ern->en", t, t))
    return np.concatenate(weights), {q: np.concatenate(e) for q, e in errors.items()}


def model_errors(errors: dict[str, dict[Quant, float]], sensitivity: dict[str, float], probe: Quant
                 ) -> dict[str, dict[Quant, float]]:
    """Each module's candidate errors in nats of KL: relative error × measured KL at `probe` /
    relative error at `probe`. A module without a measurement gets the median of the others' factors."""
    factors = {p: sensitivity[p] / max(e[probe], 1e-30) for p, e in errors.items() if p in sensitivity and probe in e}
    default = float(np.median(list(factors.values()))) if factors else 1.0
    return {p: {q: v * factors.get(p, default) for q, v in e.items()} for p, e in errors.items()}


def allocate(modules: list[Module], errors: dict[str, dict[Quant, float]], budget_bytes: int, fixed_bytes: int,
             dtype: str) -> dict[str, Quant]:
    """The candidate per module (paths in `errors`) with the least total error whose packed bytes,
    plus `fixed_bytes` for everything else, stay within `budget_bytes`."""
    options: list[tuple[str, list[Choice]]] = []
    for m in modules:
        if m.path not in errors:
            continue
        extra = (m.params - math.prod(m.shape)) * (4 if dtype == "float32" else 2)
        options.append((m.path, [Choice(q, q.packed_bytes(m.shape, dtype) + extra, e) for q, e in errors[m.path].items()]))
    room = budget_bytes - fixed_bytes
    least = sum(min(c.nbytes for c in cs) for _, cs in options)
    if room < least:
        raise PlanError(f"--target-bpw: the smallest choice for every module needs {fixed_bytes + least:,} bytes; "
                        f"the budget is {budget_bytes:,}")
    unit = max(room / BINS, 1.0)
    size = int(room // unit)
    best = np.zeros(size + 1)  # least error using at most b bins
    picks = []
    for _, choices in options:
        new = np.full(size + 1, np.inf)
        arg = np.zeros(size + 1, dtype=np.int32)
        for i, c in enumerate(choices):
            cost = math.ceil(c.nbytes / unit)
            if cost > size:
                continue
            shifted = np.full(size + 1, np.inf)
            shifted[cost:] = best[: size + 1 - cost] + c.error
            better = shifted < new
            new[better], arg[better] = shifted[better], i
        best = new
        picks.append(arg)
    b = int(np.argmin(best))
    chosen = {}
    for (path, choices), arg in zip(reversed(options), reversed(picks)):
        c = choices[arg[b]]
        chosen[path] = c.quant
        b -= math.ceil(c.nbytes / unit)
    return chosen
