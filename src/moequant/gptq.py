"""GPTQ rounding (Frantar et al. 2022) into exactly MLX's affine format.

Plain rounding (`mx.quantize`) rounds every weight on its own. GPTQ rounds the input columns of a
weight [out, in] left to right and, after each column, moves the rounding error onto the columns not
yet rounded, weighted by how the inputs correlate, so that the layer's output error on calibration
inputs, tr(ΔW H ΔWᵀ) with H = E[x xᵀ], shrinks rather than the weight error.

MLX's format fixes what GPTQ may choose:

* Groups are `group_size` consecutive input columns, so columns go in their natural order (no
  act-order permutation).
* A group's scale and bias come from mlx's own CPU formula (`_grid`), applied at the group's first
  column to the group's current, error-updated weights, then rounded to the weight's dtype, since
  that is what is stored and dequantized; every column of the group is rounded on that stored grid.
* The codes are packed as `mx.quantize` packs them (`_pack`), and scales and biases are in the
  weight's dtype: `mx.dequantize`, QuantizedLinear and QuantizedSwitchLinear read the output unchanged.

The error of each column goes to the columns after it through U, the upper Cholesky factor of the
damped H⁻¹ (`_feedback`, which gets U from one Cholesky factorization and one triangular inverse),
lazily: per group and per block of columns, as matrix products. Codes are rounded on the stored
grid and the error uses what `mx.dequantize` restores (products and sums rounded to the dtype).

Rows are independent, so each row finally keeps whichever of GPTQ and `mx.quantize` has the
smaller output error on the undamped H: the result is never worse than plain rounding on the
calibration objective.

Cost: an expert stack goes a few experts at a time; weights with the same inputs (an expert stack's
gate and up) share each chunk's H and feedback (`quantize_gptq_together`), which changes no byte:
each expert's products and factorizations are the same, whatever else is batched with them. Rows
are another matter: a product over more rows (their gate and up side by side, say) may round
differently, since OpenBLAS computes the last columns of a product with other kernels (measured,
OpenBLAS 0.3.31: [2048, 2048] @ [2048, 768] and the first 768 columns of [2048, 2048] @ [2048, 1536]
differ in 2% of their elements), so the rows of each call (_CHUNK) are part of what the output is.
GPTQ's column loop is sequential (each column's error moves the next column's weights): its numpy
calls on [experts, rows] per column, few and into preallocated buffers, cost their Python overhead
once per column.
"""

from __future__ import annotations

import ctypes
import logging
import math
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import mlx.core as mx
import numpy as np

from .errors import LayoutError, PlanError
from .formats import Mode, Quant, divides, packed_shape, scales_shape

log = logging.getLogger(__name__)

# np.clip's ufunc, without np.clip's Python layer (GPTQ calls it once per column)
_clip = np._core.umath.clip if hasattr(np, "_core") else np.core.umath.clip

DAMP = 0.01  # λ: λ·mean(diag H) is added to the diagonal of H (Frantar et al.'s default)
BLOCK = 512  # columns per lazy update: a multiple of every affine group size
# float32 elements of weights rounded at once (8 MB; a call's temporaries ~12x that) and of H (and of each of its
# factors) at once (16 MB; ~4 copies). Half of 16 and 32 MB: the 6 GB layout's shapes (`.devrun`-style script, one
# thread) at 53.5-55.1 against 51.1-51.2 GFLOP/s on the 2-core VM, 64.3-66.4 against 62.6 on the 16-core Xeon (its
# down_proj 46-47 against 43; 4x more was slower, BENCHMARKS.md), a worker's peak RSS 40-50 MB lower
_CHUNK = 1 << 21
_H_CHUNK = 1 << 22


@lru_cache(maxsize=None)
def _openblas(*names: str, argtypes: tuple = (), restype=None):
    """The first of `names` that numpy's bundled OpenBLAS exports, as a ctypes function taking
    `argtypes`, or None (another BLAS: macOS's numpy uses Accelerate)."""
    for path in sorted((Path(np.__file__).parent.parent / "numpy.libs").glob("*openblas*")):
        try:
            lib = ctypes.CDLL(str(path))
        except OSError:
            continue
        for name in names:
            if (fn := getattr(lib, name, None)) is not None:
                fn.argtypes, fn.restype = list(argtypes), restype
                return fn
    return None


def _openblas_threads_local():
    """numpy's bundled OpenBLAS `openblas_set_num_threads_local`, or None (another BLAS)."""
    return _openblas("openblas_set_num_threads_local", argtypes=(ctypes.c_int,), restype=ctypes.c_int)


def _cblas_ssyrk():
    """numpy's bundled OpenBLAS `cblas_ssyrk` (its 64-bit integer interface), or None (another BLAS)."""
    i64, f32, ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
    return _openblas("scipy_cblas_ssyrk64_", "cblas_ssyrk64_",
                     argtypes=(ctypes.c_int,) * 3 + (i64, i64, f32, ptr, i64, f32, ptr, i64))


def _lapack(name: str):
    """LAPACK's `name` (Fortran interface, 64-bit integers, every argument by reference) from numpy's
    bundled OpenBLAS, or None (another BLAS)."""
    return _openblas(f"scipy_{name}_64_", f"{name}_64_", argtypes=(ctypes.c_void_p,) * (6 if name == "strtri" else 5))


def gram_upper(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """xᵀx of float32 `x` [T, n] into `out` [n, n] (both C-contiguous), its upper triangle bit for bit
    as numpy's `x.T @ x` computes it: numpy calls its BLAS's syrk for a product of a matrix with its
    own transpose (row-major, upper, transposed) and then copies the upper triangle into the lower
    one, one element at a time through a stride of a row (for n = 2048, as long as the product of
    ~100 tokens: measured on the 2-core VM). Here the same syrk call and no copy: `out`'s strict lower
    triangle is left as it was. Without numpy's OpenBLAS, or for one token (which numpy multiplies
    without BLAS), numpy's product whole."""
    fn, (t, n) = _cblas_ssyrk(), x.shape
    if fn is None or t < 2 or not (x.flags.c_contiguous and out.flags.c_contiguous and x.dtype == out.dtype == np.float32):
        return np.matmul(x.T, x, out=out)
    fn(101, 121, 112, n, t, 1.0, x.ctypes.data, n, 0.0, out.ctypes.data, n)  # CblasRowMajor, CblasUpper, CblasTrans
    return out


def mirror_upper(a: np.ndarray, block: int = 128) -> np.ndarray:
    """`a` [n, n] with its strict lower triangle overwritten by the upper one's transpose, a block at a time."""
    n = a.shape[-1]
    for i0 in range(0, n, block):
        i1 = min(i0 + block, n)
        a[i1:, i0:i1] = a[i0:i1, i1:].T
        lower = np.tril_indices(i1 - i0, -1)
        a[i0:i1, i0:i1][lower] = a[i0:i1, i0:i1].T[lower]
    return a


@contextmanager
def one_blas_thread():
    """numpy's BLAS on one thread, then the thread count as it was. GPTQ makes thousands of small
    and medium matrix products; measured on two cores (OpenBLAS 0.3.31), threaded OpenBLAS runs a
    [64, 448] @ [448, 768] product 13x slower than one thread and a 2048-wide Cholesky 2x slower,
    while the largest products gain only ~15% from the second core. Despite its name, numpy's
    OpenBLAS's `openblas_set_num_threads_local` sets the count for the whole process: threads that
    enter and leave this in turn race (one restores a count another still relies on), so code that
    runs it in several threads holds it around them all (calibrate's pass, convert's worker
    threads with GPTQ): inside, each entry sets 1 and restores 1."""
    fn = _openblas_threads_local()
    previous = fn(1) if fn else None
    try:
        yield
    finally:
        if fn:
            fn(previous)


def _grid(groups: np.ndarray, bits: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale and bias of each group (along `axis`, float32), as mlx's CPU affine quantize computes
    them, before their rounding to the stored dtype."""
    n_bins = np.float32(2**bits - 1)
    w_min, w_max = groups.min(axis), groups.max(axis)
    mask = np.abs(w_min) > np.abs(w_max)
    scale = np.maximum((w_max - w_min) / n_bins, np.float32(1e-7))
    scale = np.where(mask, scale, -scale)
    edge = np.where(mask, w_min, w_max)
    q0 = np.rint(edge / scale)
    shifted = q0 != 0
    scale = np.where(shifted, edge / np.where(shifted, q0, 1), scale)
    return scale, np.where(shifted, edge, np.float32(0))


def dequantized_affine(w: np.ndarray, bits: int, group_size: int, overwrite: bool = False) -> np.ndarray:
    """`mx.dequantize(*mx.quantize(w, group_size, bits), group_size, bits)` of float32 `w` [..., n],
    in numpy, bit for bit (without mlx's CPU dequantize, which takes 5x its output's memory): the
    operations of `_plain_affine` in float32, in its order, in one array of w's size, or in `w`
    itself if `overwrite` (then nothing of its size is made: the calibration pass's probes, a few
    experts' weights at once per thread)."""
    groups = w.reshape(*w.shape[:-1], -1, group_size)
    scale, bias = (v[..., None] for v in _grid(groups, bits, axis=-1))
    q = codes(groups, scale, bias, bits, out=groups if overwrite else None)
    np.multiply(q, scale, out=q)
    np.add(q, bias, out=q)
    return q.reshape(w.shape)


def codes(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, bits: int, out: np.ndarray | None = None) -> np.ndarray:
    """mlx's CPU affine codes of float32 `x` on the grid `scale`, `bias` (broadcast against it), as
    float32: clip(rint((x − bias) / scale), 0, 2**bits − 1), in one array (`out`, which may be `x`)."""
    q = np.subtract(x, bias, out=out)
    np.divide(q, scale, out=q)
    np.rint(q, out=q)
    return np.clip(q, 0, 2**bits - 1, out=q)


def _plain_affine(w: np.ndarray, bits: int, group_size: int, dtype: mx.Dtype, axis: int = -1):
    """`mx.quantize(w, group_size, bits)` in numpy, bit for bit, for float32 `w` [..., n] holding
    values of `dtype`: codes (float32 [..., n], on mlx's float32 grid), the stored scales and biases
    (float32 [..., n / group_size], rounded to `dtype`) and what `mx.dequantize` restores from them
    (float32 [..., n]; mlx computes it in `dtype`, whatever dtype it is asked to return). The
    quantized axis `axis` may be another than the last: the same values, in `w`'s layout."""
    axis = axis % w.ndim
    groups = w.reshape(*w.shape[:axis], -1, group_size, *w.shape[axis + 1:])
    scale, bias = _grid(groups, bits, axis=axis + 1)
    scale_, bias_ = np.expand_dims(scale, axis + 1), np.expand_dims(bias, axis + 1)
    q = codes(groups, scale_, bias_, bits)
    scale, bias = _rounded(scale, dtype), _rounded(bias, dtype)
    restored = _dequantized(q, np.expand_dims(scale, axis + 1), np.expand_dims(bias, axis + 1), dtype)
    return q.reshape(w.shape), scale, bias, restored.reshape(w.shape)


def _rounded(x: np.ndarray, dtype: mx.Dtype, inplace: bool = False) -> np.ndarray:
    """float32 `x` rounded to `dtype` (to nearest, ties to even, as mlx casts), back in float32 (into
    `x` itself if `inplace` and `x` is contiguous)."""
    if dtype == mx.float16:
        return x.astype(np.float16).astype(np.float32)
    if dtype == mx.bfloat16:
        u = np.ascontiguousarray(x, np.float32).view(np.uint32)
        # (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000 (uint32, wrapping), in one array
        odd = np.right_shift(u, np.uint32(16))
        np.bitwise_and(odd, np.uint32(1), out=odd)
        out = np.add(u, np.uint32(0x7FFF), out=u if inplace else None)
        np.add(out, odd, out=out)
        np.bitwise_and(out, np.uint32(0xFFFF0000), out=out)
        return out.view(np.float32)
    return x


def _dequantized(q: np.ndarray, scale: np.ndarray, bias: np.ndarray, dtype: mx.Dtype) -> np.ndarray:
    """What `mx.dequantize` gives for codes `q`: scale·q, then + bias, each rounded to `dtype`."""
    out = _rounded(np.multiply(q, scale), dtype, inplace=True)
    return _rounded(np.add(out, bias, out=out) if out.shape == np.broadcast_shapes(out.shape, np.shape(bias))
                    else out + bias, dtype, inplace=True)


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Codes [..., n] (< 2**bits) -> uint32 [..., n * bits / 32], as mx.quantize packs them: one
    little-endian bitstream per row, each code least significant bit first."""
    c = np.ascontiguousarray(codes).reshape(*codes.shape[:-1], -1, 8)  # 8 codes fill `bits` whole bytes
    word = c[..., 0].astype(np.uint64)
    for k in range(1, 8):
        word |= c[..., k].astype(np.uint64) << np.uint64(k * bits)
    stream = word.astype("<u8").view(np.uint8).reshape(*word.shape, 8)[..., :bits]
    stream = np.ascontiguousarray(stream).reshape(*codes.shape[:-1], -1)
    return stream.view("<u4").astype(np.uint32)


def _cholesky(h: np.ndarray, block: int = 256) -> np.ndarray:
    """`h` [B, n, n] (float32) with its lower triangle overwritten by each matrix's lower Cholesky
    factor; the strict upper triangle is left as it was. Blocked and right-looking, so that nearly all
    the work is in matrix products: on one core, 2.5x faster than numpy's cholesky at n = 7168."""
    n = h.shape[-1]
    product = np.empty((h.shape[0], max(n - block, 0), block), np.float32)  # each update, then subtracted
    for k0 in range(0, n, block):
        k1 = min(k0 + block, n)
        diag = np.linalg.cholesky(h[:, k0:k1, k0:k1])
        h[:, k0:k1, k0:k1] = diag
        if k1 == n:
            break
        panel = h[:, k1:, k0:k1] @ _inverse_lower(diag).transpose(0, 2, 1)
        h[:, k1:, k0:k1] = panel
        for j0 in range(k1, n, block):  # the lower half of the trailing matrix
            j1 = min(j0 + block, n)
            update = np.matmul(panel[:, j0 - k1:], panel[:, j0 - k1:j1 - k1].transpose(0, 2, 1),
                               out=product[:, :n - j0, :j1 - j0])
            np.subtract(h[:, j0:, j0:j1], update, out=h[:, j0:, j0:j1])
    return h


def _inverse_lower(l: np.ndarray, block: int = 64, out: np.ndarray | None = None) -> np.ndarray:
    """Inverse of each lower triangular matrix in `l` [B, n, n] (whatever its strict upper triangle
    holds), by halves: [[A, 0], [C, D]]⁻¹ = [[A⁻¹, 0], [−D⁻¹ C A⁻¹, D⁻¹]]: mostly matrix products,
    written into `out` (one array for all the halves: a fresh zeroed one per half cost as much time
    in page faults as the products)."""
    n = l.shape[-1]
    out = np.empty_like(l) if out is None else out  # may be `l` itself: each block is read before it is written
    if n <= block:
        out[...] = np.linalg.inv(np.tril(l))
        return out
    m = n // 2
    top, bottom = _inverse_lower(l[:, :m, :m], block, out[:, :m, :m]), _inverse_lower(l[:, m:, m:], block,
                                                                                       out[:, m:, m:])
    out[:, :m, m:] = 0
    np.negative(bottom @ (l[:, m:, :m] @ top), out=out[:, m:, :m])
    return out


def _inverse_cholesky(a: np.ndarray) -> np.ndarray:
    """L⁻¹ in the lower triangle of each matrix of `a` [B, n, n] (symmetric positive definite:
    a = L Lᵀ), in place; np.linalg.LinAlgError if one is not positive definite.
    The strict upper triangle is left as it was, or zeroed.

    For float32 and C-contiguous `a`, with numpy's OpenBLAS, its LAPACK's spotrf and strtri, a
    matrix at a time: LAPACK reads a row-major matrix as its transpose (the same symmetric matrix),
    and its upper factor U = Lᵀ, and U⁻¹, are L and L⁻¹ in row-major order. Measured on one thread,
    1.6-1.8x faster than `_cholesky` and `_inverse_lower` (which do it with another BLAS) on the 2-core
    VM for n = 768 to 7168 (85 GFLOP/s at 7168), 1.3-1.5x on a 16-core Xeon for n = 768 and 2048."""
    potrf, trtri = _lapack("spotrf"), _lapack("strtri")
    if potrf is None or trtri is None or a.dtype != np.float32 or not a.flags.c_contiguous:
        return _inverse_lower(_cholesky(a), out=a)
    n, info = ctypes.c_int64(a.shape[-1]), ctypes.c_int64(0)
    for m in a:
        potrf(b"U", ctypes.byref(n), m.ctypes.data, ctypes.byref(n), ctypes.byref(info))
        if info.value == 0:
            trtri(b"U", b"N", ctypes.byref(n), m.ctypes.data, ctypes.byref(n), ctypes.byref(info))
        if info.value != 0:
            raise np.linalg.LinAlgError(f"LAPACK: info {info.value}")
    return a


@one_blas_thread()
def _feedback(h: np.ndarray, damp: float) -> np.ndarray:
    """For H [B, n, n]: GPTQ's error feedback A [B, n, n], A_ji = U_ij / U_ii for j > i, where U is the
    upper Cholesky factor of (H + λ·mean(diag H)·I)⁻¹ = UᵀU (A's diagonal and upper triangle are never
    read). An input with H_jj = 0 (never active) is decoupled: its weights are rounded to the nearest
    and pass no error on.

    U comes without forming H⁻¹: with J the reversal, J H J = L Lᵀ (L lower) gives H = R Rᵀ with
    R = J L J upper, so H⁻¹ = (R⁻¹)ᵀ R⁻¹ and U = R⁻¹ = J L⁻¹ J."""
    n = h.shape[-1]
    idx = np.arange(n)
    live = np.array(h[:, idx[::-1], idx[::-1]], dtype=np.float32) > 0

    def reversed_h() -> np.ndarray:  # J H J, its rows and columns of dead inputs zeroed
        out = np.array(h[:, ::-1, ::-1], dtype=np.float32)
        if not live.all():
            out *= live[:, :, None]
            out *= live[:, None, :]
        return out

    lower = reversed_h()
    diag = lower[:, idx, idx]
    count = live.sum(-1)
    mean = np.where(count > 0, diag.sum(-1, dtype=np.float64) / np.maximum(count, 1), 1.0)
    for attempt in range(4):  # 10x more damping each time H is not positive semi-definite
        lower = reversed_h() if attempt else lower
        lower[:, idx, idx] = np.where(live, diag + damp * 10**attempt * mean[:, None], 1)
        try:
            inverse = _inverse_cholesky(lower)
            break
        except np.linalg.LinAlgError:
            if attempt == 3:
                raise
            log.debug("gptq: H + %g·mean(diag H)·I is not positive definite; damping 10x more", damp * 10**attempt)
    u = inverse[:, ::-1, ::-1]  # upper: U
    u = u / u[:, idx, idx][:, :, None]  # a contiguous copy, in memory order
    return u.transpose(0, 2, 1)  # products with its slices take the transpose without a copy


@one_blas_thread()
def _gptq(w: np.ndarray, a: np.ndarray, bits: int, group_size: int, dtype: mx.Dtype):
    """GPTQ of `w` [B, R, n] (float32) with feedback `a` [B or 1, n, n] from `_feedback`.

    Returns codes uint8 [B, R, n], stored scales and biases (float32 [B, R, n / group_size]) and the
    residual W − Ŵ, transposed [B, n, R]."""
    B, R, n = w.shape
    # the codes' bounds as arrays: a ufunc converts scalars on every call (the column loop's clip 0.7 against 1.4 µs)
    low, high = np.zeros((), np.float32), np.full((), 2**bits - 1, np.float32)
    w0 = np.ascontiguousarray(w.transpose(0, 2, 1))  # columns contiguous: [B, n, R]
    target = w0.copy()  # the weights updated for the errors of all columns before the current group
    error = np.empty_like(w0)  # each column's target minus its dequantized value
    restored = np.empty_like(w0)  # each column's dequantized value
    codes = np.empty((B, n, R), np.uint8)
    scales = np.empty((B, n // group_size, R), np.float32)
    biases = np.empty_like(scales)
    # the column loop's buffers: its ~10 numpy calls per column on [B, R] are most of GPTQ's time
    # where B·R is small, so each writes into one of these rather than a new array
    t, x, corr = np.empty((B, R), np.float32), np.empty((B, R), np.float32), np.empty((B, 1, R), np.float32)
    q = np.empty((B, group_size, R), np.float32)
    levels = 2**bits
    # a group's dequantized value of each code (fewer than its columns), gathered per column; the
    # gather's index in float32 (exact) and int32: a mixed-type cast costs as much as the gather
    lookup = levels <= group_size and B * R * levels < 2**24
    if lookup:
        at = np.empty((B, R), np.int32)
        first = (np.arange(B * R, dtype=np.float32) * levels).reshape(B, R)  # each row's first entry
        table = np.empty((B, R, levels), np.float32)
        ks = np.arange(levels, dtype=np.float32)
    for b0 in range(0, n, BLOCK):
        b1 = min(b0 + BLOCK, n)
        for g0 in range(b0, b1, group_size):
            g1 = g0 + group_size
            if g0 > b0:  # from this block's earlier groups
                target[:, g0:g1] -= a[:, g0:g1, b0:g0] @ error[:, b0:g0]
            scale, bias = (_rounded(v, dtype) for v in _grid(target[:, g0:g1], bits, axis=1))
            scales[:, g0 // group_size], biases[:, g0 // group_size] = scale, bias
            if lookup:
                table[...] = _dequantized(ks, scale[..., None], bias[..., None], dtype)
            for i in range(g0, g1):
                if i > g0:  # from this group's earlier columns
                    np.matmul(a[:, i, None, g0:i], error[:, g0:i], out=corr)
                    np.subtract(target[:, i], corr[:, 0], out=t)
                else:
                    t[...] = target[:, i]
                np.subtract(t, bias, out=x)
                np.divide(x, scale, out=x)
                qi = q[:, i - g0]
                np.rint(_clip(x, low, high, out=x), out=qi)  # = clip(rint(x)): the bounds are whole numbers
                if lookup:
                    np.add(qi, first, out=at, casting="unsafe")
                    table.take(at, out=restored[:, i], mode="clip")
                else:
                    restored[:, i] = _dequantized(qi, scale, bias, dtype)
                np.subtract(t, restored[:, i], out=error[:, i])
            codes[:, g0:g1] = q
        if b1 < n:  # from this block to all later columns
            target[:, b1:] -= a[:, b1:, b0:b1] @ error[:, b0:b1]
    resid = np.subtract(w0, restored, out=restored)
    return codes.transpose(0, 2, 1), scales.transpose(0, 2, 1), biases.transpose(0, 2, 1), resid


def _as_numpy(x) -> np.ndarray:
    return np.array(x.astype(mx.float32)) if isinstance(x, mx.array) else np.asarray(x, np.float32)


class Parts:
    """An expert stack [E, out, in] given as its experts' weights (lazy mx arrays [out, in], as a
    checkpoint.Stacked has them): GPTQ stacks and evaluates only the few experts it rounds at once,
    and lets go of them once rounded. A lazy `mx.stack` of them, sliced, is evaluated whole and kept
    while the stack is referenced: a GPTQ worker held its whole share of a layer's stacks (0.19 GiB
    of a 64-expert layer's gate and up, half of them each, on 2 workers)."""

    ndim = 3

    def __init__(self, parts: list[mx.array]):
        self.parts = list(parts)
        self.shape = (len(self.parts), *self.parts[0].shape)
        self.dtype = self.parts[0].dtype
        self.size = math.prod(self.shape)

    def stacked(self) -> mx.array:
        return mx.stack(self.parts)

    def rows(self, e0: int, e1: int, r: slice) -> mx.array:
        return mx.stack([p[r] for p in self.parts[e0:e1]])

    def release(self, e0: int, e1: int) -> None:
        self.parts[e0:e1] = [None] * (e1 - e0)


def _check(w: mx.array, h: np.ndarray, q: Quant) -> None:
    if q.mode != Mode.AFFINE:
        raise PlanError(f"gptq: mode {q.mode.value}; expected affine")
    n = w.shape[-1]
    if w.ndim not in (2, 3) or not divides(n, q):
        raise LayoutError(f"gptq: weight {tuple(w.shape)}; expected [out, in] or [E, out, in] with in divisible by "
                          f"group_size={q.group_size}")
    allowed = [(n, n)] + ([(w.shape[0], n, n)] if w.ndim == 3 else [])
    if h.shape not in allowed:
        raise LayoutError(f"gptq: H {h.shape} for weight {tuple(w.shape)}; expected "
                          f"{' or '.join(str(s) for s in allowed)}")


def quantize_gptq(w: mx.array, h, q: Quant, damp: float = DAMP) -> tuple[mx.array, mx.array, mx.array]:
    """(packed, scales, biases) like `mx.quantize(w, q.group_size, q.bits, mode="affine")`, rounded
    by GPTQ for the inputs whose second moment is `h`, row by row never worse than plain rounding on
    tr(ΔW H ΔWᵀ).

    `w` is a Linear weight [out, in] with `h` = E[x xᵀ] [in, in], or an expert stack [E, out, in]
    with one H per expert [E, in, in] or one shared [in, in]; `h` is an mx.array, a numpy array, or
    per expert, anything else of shape [E, in, in] whose slices are numpy arrays (read a few experts
    at a time: calibrate.RoutedMoments forms them then).
    `damp` is λ: λ·mean(diag H) is added to H's diagonal for the GPTQ updates only."""
    return quantize_gptq_together([(w, q)], h, damp)[0]


def quantize_gptq_together(weights: list[tuple[mx.array, Quant]], h, damp: float = DAMP) -> list[tuple]:
    """`quantize_gptq` of several weights (each with its Quant) whose inputs are the same, e.g. an
    expert stack's gate and up projections: H and its feedback are read and formed once, a few
    experts at a time, for all of them (the feedback does not depend on the Quant). The same bytes
    as one `quantize_gptq` each."""
    if isinstance(h, (mx.array, np.ndarray)) or len(getattr(h, "shape", ())) != 3:
        h = _as_numpy(h)
    for w, q in weights:
        _check(w, h, q)
    if len({w.shape[:-2] for w, _ in weights}) > 1:
        raise LayoutError(f"gptq: weights {[tuple(w.shape) for w, _ in weights]} rounded together; expected the same "
                          "number of experts")
    return _quantize_gptq(weights, h, damp)


@one_blas_thread()
def _quantize_gptq(weights: list[tuple[mx.array, Quant]], h: np.ndarray, damp: float) -> list[tuple]:
    n = weights[0][0].shape[-1]
    stacks = [w if isinstance(w, Parts) else w.reshape(-1, *w.shape[-2:]) for w, _ in weights]
    num, rows = stacks[0].shape[0], max(s.shape[1] for s in stacks)
    hs = h if len(h.shape) == 3 else h.reshape(-1, n, n)
    shared = hs.shape[0] == 1
    hs = hs[:] if shared else hs  # a lazy one in memory
    a_shared = _feedback(hs, damp) if shared else None
    step = max(1, _CHUNK // (rows * n)) if shared else max(1, min(_CHUNK // (rows * n), _H_CHUNK // (n * n)))
    outs = [_Rounded(w, q) for w, q in weights]
    for e0 in range(0, num, step):
        e1 = min(e0 + step, num)
        hc = hs if shared else hs[e0:e1]
        a = a_shared if shared else _feedback(hc, damp)
        for stack, out in zip(stacks, outs):
            row_step = max(1, _CHUNK // ((e1 - e0) * n))  # rows are rounded independently: a large one in blocks
            for r0 in range(0, stack.shape[1], row_step):
                out.round(stack, e0, e1, slice(r0, min(r0 + row_step, stack.shape[1])), hc, a, shared)
            if isinstance(stack, Parts):
                stack.release(e0, e1)
    return [out.result() for out in outs]


def _columns(w: mx.array, shared: bool) -> np.ndarray:
    """float32 numpy [B, in, rows] of weights `w` [B, rows, in] (with `shared`, [1, in, B·rows]: one
    matrix of all of them), contiguous. bfloat16 is widened from its bits in the same pass as the
    transpose (exact: a bfloat16 is a float32's upper half)."""
    if w.dtype == mx.bfloat16:
        half = np.array(w.view(mx.uint16))
        half = half.reshape(1, -1, half.shape[-1]) if shared else half
        out = np.empty((half.shape[0], half.shape[2], half.shape[1]), np.float32)
        bits = out.view(np.uint32)
        bits[...] = half.transpose(0, 2, 1)
        np.left_shift(bits, np.uint32(16), out=bits)
        return out
    w0 = np.array(w.astype(mx.float32))
    w0 = w0.reshape(1, -1, w0.shape[-1]) if shared else w0
    return np.ascontiguousarray(w0.transpose(0, 2, 1))


class _Rounded:
    """One weight's GPTQ output, filled a few experts at a time (`round`)."""

    def __init__(self, w: mx.array, q: Quant):
        self.w, self.q = w, q
        rows, n = w.shape[-2:]
        num = w.size // (rows * n)
        self.packed = np.empty(packed_shape((num, rows, n), q), np.uint32)
        self.scales = np.empty(scales_shape((num, rows, n), q), np.float32)
        self.biases = np.empty_like(self.scales)
        self.kept, self.lowered = 0, 0.0

    def round(self, stack: mx.array, e0: int, e1: int, r: slice, hc: np.ndarray, a: np.ndarray, shared: bool) -> None:
        """Rows `r` of experts e0:e1 of `stack` (the weight [E, out, in]) by GPTQ with their H `hc` and
        feedback `a`, each row kept only if its output error on H is lower than plain rounding's."""
        bits, group_size = self.q.bits, self.q.group_size
        rows = r.stop - r.start
        # all in GPTQ's layout, columns contiguous [B, in, rows] (_gptq takes its transpose as it is):
        # the differences below then read contiguous arrays, not one through a transpose
        w0 = _columns(stack.rows(e0, e1, r) if isinstance(stack, Parts) else stack[e0:e1, r], shared)
        *rounded, resid = _gptq(w0.transpose(0, 2, 1), a, bits, group_size, self.w.dtype)
        codes, g_scales, g_biases = (x.transpose(0, 2, 1) for x in rounded)
        p_codes, p_scales, p_biases, plain_resid = _plain_affine(w0, bits, group_size, self.w.dtype, axis=1)
        plain_resid = np.subtract(w0, plain_resid, out=plain_resid)
        # per row, ΔW_gptq H ΔW_gptqᵀ − ΔW_plain H ΔW_plainᵀ in one product: H is symmetric
        # (((hc @ (resid - plain_resid)) * (resid + plain_resid)).sum(1), its temporaries reused)
        product = hc @ np.subtract(resid, plain_resid, out=w0)
        gain = np.multiply(product, np.add(resid, plain_resid, out=resid), out=product).sum(1)
        better = (gain < 0)[:, None]
        packed = _pack(np.where(better, codes, p_codes.astype(np.uint8)).transpose(0, 2, 1), bits)
        self.packed[e0:e1, r] = packed.reshape(e1 - e0, rows, -1)
        self.scales[e0:e1, r] = np.where(better, g_scales, p_scales).transpose(0, 2, 1).reshape(e1 - e0, rows, -1)
        self.biases[e0:e1, r] = np.where(better, g_biases, p_biases).transpose(0, 2, 1).reshape(e1 - e0, rows, -1)
        self.kept += int(better.sum())
        self.lowered -= float(np.minimum(gain, 0).sum())

    def result(self) -> tuple[mx.array, mx.array, mx.array]:
        w = self.w
        log.debug("gptq %s %s: GPTQ kept for %d of %d rows, lowering the output error by %.4g", tuple(w.shape), self.q,
                  self.kept, w.size // w.shape[-1], self.lowered)
        shape = w.shape[:-1]
        return (mx.array(self.packed).reshape(*shape, -1), mx.array(self.scales).astype(w.dtype).reshape(*shape, -1),
                mx.array(self.biases).astype(w.dtype).reshape(*shape, -1))


def calibration_error(w: mx.array, packed: mx.array, scales: mx.array, biases: mx.array, h, q: Quant) -> np.ndarray:
    """Output error tr(ΔW H ΔWᵀ) of each row ([out] or [E, out], float64), ΔW = w − dequantized."""
    restored = mx.dequantize(packed, scales, biases, q.group_size, q.bits, mode="affine", dtype=mx.float32)
    diff = (np.array(w.astype(mx.float32)) - np.array(restored)).astype(np.float64)
    h = _as_numpy(h).astype(np.float64)
    return ((diff @ h) * diff).sum(-1)  # [E, out, in] @ [E, in, in] or [in, in]
