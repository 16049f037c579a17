"""Error-minimizing rounding for the standard MLX formats.

`mx.quantize` takes each group's scale (and bias) from its min/max (affine) or its absolute max
(mxfp4, nvfp4, mxfp8). One outlier then stretches the grid for the whole group. Here every group
also tries a few clipped ranges — the weights clipped to a shrunk range, then quantized by
`mx.quantize` itself — and keeps, per group, whichever candidate reconstructs the original weights
with the least squared error. The unclipped range is always a candidate, so no group gets worse
than plain rounding, and the output is the same format, bit layout and dtype that `mx.quantize`
writes: it loads in unmodified mlx-lm.
"""

from __future__ import annotations

import mlx.core as mx

from .formats import Mode, Quant

# Range shrink factors tried per group; 1.0 (plain rounding) must stay first.
CLIP_FACTORS = (1.0, 0.95, 0.9, 0.85, 0.8)


def _candidate(w: mx.array, q: Quant, factor: float, global_scale: mx.array | None):
    groups = w.reshape(*w.shape[:-1], -1, q.group_size).astype(mx.float32)
    if factor == 1.0:
        clipped = w
    else:
        if q.mode == Mode.AFFINE:  # shrink [min, max] toward its midpoint
            lo, hi = groups.min(-1, keepdims=True), groups.max(-1, keepdims=True)
            mid = (lo + hi) / 2
            lo, hi = mid + factor * (lo - mid), mid + factor * (hi - mid)
        else:  # shrink the symmetric range of the fp formats
            hi = factor * mx.abs(groups).max(-1, keepdims=True)
            lo = -hi
        clipped = mx.clip(groups, lo, hi).reshape(w.shape).astype(w.dtype)
    extra = {"global_scale": global_scale} if global_scale is not None else {}
    packed, scales, *biases = mx.quantize(clipped, q.group_size, q.bits, mode=q.mode.value, **extra)
    biases = biases[0] if biases else None
    restored = mx.dequantize(packed, scales, biases, q.group_size, q.bits, mode=q.mode.value, dtype=mx.float32,
                             **extra)
    error = ((restored.reshape(groups.shape) - groups) ** 2).sum(-1)
    return packed, scales, biases, error


def quantize_searched(w: mx.array, q: Quant, global_scale: mx.array | None = None,
                      factors: tuple[float, ...] = CLIP_FACTORS):
    """(packed, scales, biases or None) like `mx.quantize(w, …)`, each group's range picked among
    `factors` for the least reconstruction error. `global_scale` (nvfp4) is kept as given."""
    best = None
    for factor in factors:
        packed, scales, biases, error = _candidate(w, q, factor, global_scale)
        if best is None:
            best = [packed, scales, biases, error]
            continue
        better = error < best[3]  # [..., groups]
        words = packed.shape[-1] // better.shape[-1]  # uint32 words per group
        shape = best[0].shape
        best[0] = mx.where(better[..., None], packed.reshape(*better.shape, words),
                           best[0].reshape(*better.shape, words)).reshape(shape)
        best[1] = mx.where(better, scales, best[1])
        if biases is not None:
            best[2] = mx.where(better, biases, best[2])
        best[3] = mx.minimum(error, best[3])
    return best[0], best[1], best[2]  # lazy: evaluated when written (and never in a dry run)


def reconstruction_error(w: mx.array, packed: mx.array, scales: mx.array, biases: mx.array | None, q: Quant,
                         global_scale: mx.array | None = None) -> float:
    """Sum of squared differences between `w` and its dequantized form."""
    extra = {"global_scale": global_scale} if global_scale is not None else {}
    restored = mx.dequantize(packed, scales, biases, q.group_size, q.bits, mode=q.mode.value, dtype=mx.float32,
                             **extra)
    return ((restored - w.astype(mx.float32)) ** 2).sum().item()
