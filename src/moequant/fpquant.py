"""Fast CPU replacement for ``mx.quantize`` in the float modes (mxfp4, nvfp4, mxfp8), bit for bit.

On the CPU, mlx 0.32 has no kernel for these modes: ``mx.quantize`` builds them from generic ops
(an argmin over a 16-entry table for the 4-bit modes), about 0.025 GB/s of bf16 input for
mxfp4/nvfp4 with 18-34x the input in temporaries. :func:`quantize_fp` gives the same bytes from
numpy integer code over row blocks, on both cores, with temporaries bounded by the block size.

What mlx computes, per group of G elements (G = 32 for mx modes, 16 for nvfp4), as read from
its op graph and checked against ``mx.quantize`` over every bf16/fp16 (scale, element) pair:

* ``amax = max|x|`` in the input dtype.
* mxfp4/mxfp8: ``I = amax / maxval`` (6 or 448, in the input dtype); the scale exponent is the
  smallest ``Z`` with ``2**Z >= I`` (mlx rounds ``log2`` and then rounds up), ``Z = 0`` if
  ``I == 0``; the stored scale is ``Z + 127``. Elements are ``x / 2**Z``.
* nvfp4: the scale is ``to_fp8(amax / 6)`` (e4m3, round to nearest even, saturating at 448);
  elements are ``x / e4m3(scale)``; a scale of 0 makes every code 0.
* 4-bit elements: the nearest of the 16 e2m1 values, ties to the lower table index, so ties go
  to the smaller magnitude (0.75 -> 0.5, 1.75 -> 1.5, 5 -> 4), ``x > 6`` gives 6, and a negative
  value that rounds to zero gives +0 (code 0, never 8). Codes are packed low nibble first: element
  ``k`` of each uint32 sits in bits ``4k..4k+3``.
* mxfp8 elements: mlx's ``to_fp8`` (e4m3, round to nearest even, saturating to 448, sign kept,
  so -0.0 gives 0x80); bytes are packed little-endian, four to a uint32.
* nvfp4 uses no global scale unless one is passed (this module does not take one).

For bf16/fp16 the per-group part is a lookup in tables that are computed with ``mx.quantize``
itself (all 32768 possible group maxima), so the scales are mlx's by construction; elements use
exact integer comparisons against per-group thresholds, or mlx's own ``to_fp8`` table. Groups the
fast path does not model (NaN or inf, or so tiny that mlx's exponent arithmetic wraps) are
recomputed by ``mx.quantize`` on their rows.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import mlx.core as mx
import numpy as np

MODES = {"mxfp4": (32, 4), "nvfp4": (16, 4), "mxfp8": (32, 8)}  # mode -> (group size, bits)

_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)  # between consecutive e2m1 magnitudes
_MAXVAL = {"mxfp4": 6.0, "nvfp4": 6.0, "mxfp8": 448.0}


class _Fmt:
    """Bit layout of one input dtype."""

    def __init__(self, dtype, uint, mant: int, exp_bits: int):
        self.dtype, self.uint, self.mant = dtype, uint, mant
        self.nbits = np.dtype(uint).itemsize * 8
        self.sign = 1 << (self.nbits - 1)
        self.mag = self.sign - 1
        self.inf = ((1 << exp_bits) - 1) << mant
        self.bias = (1 << (exp_bits - 1)) - 1


_FMTS = {
    mx.bfloat16: _Fmt(mx.bfloat16, np.uint16, 7, 8),
    mx.float16: _Fmt(mx.float16, np.uint16, 10, 5),
    mx.float32: _Fmt(mx.float32, np.uint32, 23, 8),
}

# --------------------------------------------------------------------------------------------
# e4m3 conversion, as mlx's CPU ToFP8 / FromFP8 do it


def _to_fp8(f: np.ndarray) -> np.ndarray:
    """mlx's ``to_fp8`` of float32 values (PyTorch's e4m3fn rounding, saturating to 0x7E)."""
    fb = np.ascontiguousarray(f, dtype=np.float32).view(np.uint32)
    sign = fb & np.uint32(0x80000000)
    fb = fb ^ sign
    low = (fb.view(np.float32) + np.float32(2.0**14)).view(np.uint32) - np.uint32(141 << 23)
    high = fb + np.uint32((((7 - 127) << 23) + 0x7FFFF) & 0xFFFFFFFF)
    high += (fb >> np.uint32(20)) & np.uint32(1)
    high >>= np.uint32(20)
    out = np.where(fb < np.uint32(121 << 23), low, high).astype(np.uint8)  # low byte, as C does
    out[fb >= np.uint32(543 << 21)] = 0x7E
    out |= (sign >> np.uint32(24)).astype(np.uint8)
    return out


def _fp8_values() -> np.ndarray:
    """float32 value of every e4m3 byte (mlx's ``from_fp8``)."""
    return np.array(mx.from_fp8(mx.arange(256, dtype=mx.uint32).astype(mx.uint8), mx.float32))


# --------------------------------------------------------------------------------------------
# Per-(mode, dtype) tables, built once from mlx itself

_TABLES: dict = {}
_TABLES_LOCK = threading.Lock()


def _oracle_scales(mode: str, fmt: _Fmt, mags: np.ndarray) -> np.ndarray:
    """The scale byte mx.quantize gives a group whose largest magnitude has bits ``mags``."""
    group, bits = MODES[mode]
    rows = np.zeros((len(mags) + len(mags) % 2, group), fmt.uint)  # even count: nvfp4 packs by 32
    rows[: len(mags), 0] = mags
    _, scales = mx.quantize(mx.array(rows).view(fmt.dtype), group, bits, mode=mode)
    return np.array(scales)[: len(mags), 0]


def _dtype_bits(values: np.ndarray, fmt: _Fmt) -> np.ndarray:
    """Bits of the largest ``fmt`` value <= each (non-negative, float64) value: x > t iff x > that."""
    with np.errstate(over="ignore"):  # inf for groups that are not ok anyway
        v = values.astype(np.float32)  # exact: the thresholds have at most 7 significant bits
        h = v.astype(np.float16) if fmt.dtype == mx.float16 else None
    if fmt.dtype == mx.float32:
        return v.view(np.uint32)
    if fmt.dtype == mx.bfloat16:
        return (v.view(np.uint32) >> 16).astype(np.uint16)  # truncation rounds toward zero
    b = h.view(np.uint16).copy()
    over = h.astype(np.float64) > values
    b[over] -= 1
    return b


def _tables16(mode: str, fmt: _Fmt) -> dict:
    """For bf16/fp16: per possible group maximum (its 15 magnitude bits) the scale byte, whether
    the fast path models the group, and the element thresholds (4-bit) or exponent shift (mxfp8)."""
    mags = np.arange(fmt.sign, dtype=np.uint32).astype(fmt.uint)
    scale = _oracle_scales(mode, fmt, mags)
    amax = mx.array(mags).view(fmt.dtype)
    finite = mags < fmt.inf
    t = {"scale": scale}
    mids = np.array(_MIDPOINTS, np.float64)
    if mode == "nvfp4":
        mine = _to_fp8(np.array(mx.divide(amax, mx.array(6.0, fmt.dtype)).astype(mx.float32)))
        # saturated scales (amax > ~2600) leave quotients so large that mlx's rounded distances
        # to the table tie; those groups go to mx.quantize
        ok = finite & (mine == scale) & (scale < 0x7E)
        m = _fp8_values()[scale].astype(np.float64)
        thr = _dtype_bits(m[:, None] * mids, fmt)
        thr[scale == 0] = fmt.mag  # x / 0: mlx's argmin over inf/nan distances picks code 0
        t["thr"] = thr
    else:
        inter = np.array(mx.divide(amax, mx.array(_MAXVAL[mode], fmt.dtype)).astype(mx.float32))
        frac, e = np.frexp(inter.astype(np.float64))
        z = np.where(inter > 0, e - (frac == 0.5), 0).astype(np.int64)
        ok = finite & (z + 127 == scale) & (z >= -126)  # below, mlx's exponent wraps in uint8
        z = np.where(ok, z, 0)
        if mode == "mxfp4":
            t["thr"] = _dtype_bits(np.ldexp(mids[None, :], z[:, None]), fmt)
        else:
            t["shift"] = (z << fmt.mant).astype(np.int32)
            t["ext"], t["f8"] = _ext_bits(fmt), _fp8_table(fmt)
    t["ok"] = ok
    return t


def _ext_bits(fmt: _Fmt) -> np.ndarray:
    """Magnitude bits with subnormals renormalized (exponent field <= 0, as int32), so that
    ``ext - Z << mant`` is the bits of ``x / 2**Z`` whenever that is a normal number."""
    mags = np.arange(fmt.sign, dtype=np.int64)
    ext = mags.copy()
    sub = (mags >> fmt.mant) == 0
    m = mags[sub]
    k = np.floor(np.log2(np.maximum(m, 1))).astype(np.int64)
    ext[sub] = ((k + 1 - fmt.mant) << fmt.mant) + ((m - (1 << k)) << (fmt.mant - k))
    ext[0] = -(1 << 24)  # zero stays below every normal number after any shift
    return ext.astype(np.int32)


def _fp8_table(fmt: _Fmt) -> np.ndarray:
    """mlx's ``to_fp8`` of every 16-bit pattern of the input dtype."""
    allbits = mx.arange(1 << 16, dtype=mx.uint32).astype(mx.uint16).view(fmt.dtype)
    f8 = np.array(mx.to_fp8(allbits))
    # ext < 2**mant (a subnormal or zero quotient) is clamped to 0: that is only right if every
    # such value is +-0 in e4m3, which holds for bf16 and fp16 (their normals start below 2**-10).
    tiny = np.arange(1 << fmt.mant)
    assert (f8[tiny] == 0).all() and (f8[tiny | fmt.sign] == 0x80).all()
    return f8


def _tables(mode: str, fmt: _Fmt) -> dict:
    key = (mode, str(fmt.dtype))
    with _TABLES_LOCK:
        if key not in _TABLES:
            _TABLES[key] = _tables16(mode, fmt) if fmt.nbits == 16 else {
                "mids": np.array(_MIDPOINTS, np.float32).view(np.uint32), "fp8": _fp8_values()}
        return _TABLES[key]


# --------------------------------------------------------------------------------------------
# One block of rows


def _group_params_f32(mode: str, tables: dict, amax_bits: np.ndarray):
    """float32 input: scale byte, ok flag and element parameters per group, from amax bits."""
    amax = amax_bits.view(np.float32)
    finite = amax_bits < np.uint32(0x7F800000)
    with np.errstate(all="ignore"):
        inter = amax / np.float32(_MAXVAL[mode])
        if mode == "nvfp4":
            scale = _to_fp8(inter)
            m = tables["fp8"][scale]
            m[scale == 0] = np.inf  # x / 0 in mlx gives codes 0, as does x / inf here
            return scale, finite & (scale < 0x7E), m
        frac, e = np.frexp(inter)
        z = np.where(inter > 0, e - (frac == 0.5), 0).astype(np.int32)
    ok = finite & (z >= -120) & (z <= 127)
    z = np.where(ok, z, 0)
    scale = (z + 127).astype(np.uint8)
    with np.errstate(over="ignore"):  # 5 * 2**127 is inf: no finite x exceeds it, as it should be
        if mode == "mxfp4":
            thr = np.ldexp(np.array(_MIDPOINTS, np.float32)[None, :], z[:, None]).astype(np.float32)
            return scale, ok, thr.view(np.uint32)
        return scale, ok, np.ldexp(np.float32(1.0), -z).astype(np.float32)


def _fp4_codes(mag: np.ndarray, u: np.ndarray, thr: np.ndarray, fmt: _Fmt) -> np.ndarray:
    """e2m1 codes of one block: count of thresholds exceeded, sign bit only on nonzero codes.
    ``mag``/``u``: [groups, G] magnitude bits / raw bits; ``thr``: [groups, 7] (or [7]) bits."""
    col = (lambda j: thr[:, j : j + 1]) if thr.ndim == 2 else (lambda j: thr[j])
    codes = np.greater(mag, col(0)).view(np.uint8)
    sgn = (u >> (fmt.nbits - 1)).astype(np.uint8)
    sgn &= codes
    for j in range(1, 7):
        codes += np.greater(mag, col(j)).view(np.uint8)
    sgn <<= 3
    codes |= sgn
    return codes


def _block(mode: str, fmt: _Fmt, tables: dict, u: np.ndarray, wq: np.ndarray, sc: np.ndarray) -> np.ndarray:
    """Quantize rows ``u`` (raw bits, [rows, in]) into ``wq`` (bytes) and ``sc``; return the
    indices of rows the fast path does not model."""
    group, bits = MODES[mode]
    rows, n = u.shape
    ug = u.reshape(-1, group)
    mag = ug & fmt.uint(fmt.mag)
    amax = np.maximum.reduceat(mag.reshape(-1), np.arange(0, mag.size, group))
    if fmt.nbits == 16:
        scale, ok = tables["scale"][amax], tables["ok"][amax]
    else:
        scale, ok, param = _group_params_f32(mode, tables, amax)
    sc[...] = scale.reshape(rows, n // group)
    if bits == 4:
        if fmt.nbits == 16:
            codes = _fp4_codes(mag, ug, tables["thr"][amax], fmt)
        elif mode == "mxfp4":
            codes = _fp4_codes(mag, ug, param, fmt)
        else:  # nvfp4, float32: mlx divides in float32, so compare the rounded quotient
            with np.errstate(all="ignore"):
                q = (ug.view(np.float32) / param[:, None]).view(np.uint32)
            codes = _fp4_codes(q & np.uint32(fmt.mag), q, tables["mids"], fmt)
        codes = codes.reshape(-1, 2)
        hi = codes[:, 1] << np.uint8(4)
        hi |= codes[:, 0]
        wq[...] = hi.reshape(rows, n // 2)
    elif fmt.nbits == 16:  # mxfp8: e4m3 of x / 2**Z, read from mlx's own to_fp8 table
        idx = tables["ext"][mag]
        idx -= tables["shift"][amax][:, None]
        np.clip(idx, 0, fmt.mag, out=idx)
        idx |= (ug & fmt.uint(fmt.sign)).astype(np.int32)
        wq[...] = tables["f8"][idx].reshape(rows, n)
    else:
        with np.errstate(all="ignore"):
            q = ug.view(np.float32) * param[:, None]
        wq[...] = _to_fp8(q).reshape(rows, n)
    bad = ~ok.reshape(rows, -1).all(axis=1)
    return np.nonzero(bad)[0]


# --------------------------------------------------------------------------------------------
# Public API


def quantize_fp(w: mx.array, mode: str, *, block_elems: int = 1 << 20, threads: int | None = None
                ) -> tuple[mx.array, mx.array]:
    """``mx.quantize(w, group_size=G, bits=B, mode=mode)`` for mode mxfp4 (G 32, B 4), nvfp4
    (G 16, B 4) or mxfp8 (G 32, B 8), without a global scale: the same (uint32 weight, uint8
    scales), byte for byte, computed on the CPU in blocks of about ``block_elems`` input elements
    on ``threads`` threads (default: up to 2, one per core).

    ``w``: bfloat16, float16 or float32, shape [..., in] with at least 2 dims and ``in`` a
    multiple of G. Unlike mx.quantize, nvfp4 also works when the element count is not a multiple
    of 32 (mx.quantize raises there).
    """
    if mode not in MODES:
        raise ValueError(f"quantize_fp: mode {mode!r}; expected one of {', '.join(MODES)}")
    group, bits = MODES[mode]
    if w.dtype not in _FMTS:
        raise ValueError(f"quantize_fp: dtype {w.dtype}; expected bfloat16, float16 or float32")
    if w.ndim < 2 or w.shape[-1] % group:
        raise ValueError(f"quantize_fp: shape {tuple(w.shape)}; expected [..., in] with in a multiple of {group}")
    fmt = _FMTS[w.dtype]
    tables = _tables(mode, fmt)
    n = w.shape[-1]
    flat = w.reshape(-1, n)
    rows = flat.shape[0]
    src = flat.view(mx.uint16 if fmt.nbits == 16 else mx.uint32)
    mx.eval(src)
    u = np.asarray(src)  # zero-copy view of mlx's buffer; only read
    wq = np.empty((rows, n * bits // 8), np.uint8)
    sc = np.empty((rows, n // group), np.uint8)
    step = max(1, block_elems // n)
    starts = range(0, rows, step)

    def run(r0):
        r1 = min(rows, r0 + step)
        return r0 + _block(mode, fmt, tables, u[r0:r1], wq[r0:r1], sc[r0:r1])

    nthreads = threads or min(2, os.cpu_count() or 1)
    if nthreads > 1 and len(starts) > 1:
        with ThreadPoolExecutor(nthreads) as pool:
            bad = list(pool.map(run, starts))
    else:
        bad = [run(r0) for r0 in starts]
    bad = np.concatenate(bad) if bad else np.zeros(0, np.int64)
    if bad.size:
        _fallback(flat, bad, mode, wq, sc)
    del u
    shape = tuple(w.shape[:-1])
    return (mx.array(wq.view(np.uint32)).reshape(*shape, n * bits // 32),
            mx.array(sc).reshape(*shape, n // group))


def _fallback(flat: mx.array, rows: np.ndarray, mode: str, wq: np.ndarray, sc: np.ndarray) -> None:
    """Rows with groups the fast path does not model, straight from mx.quantize."""
    group, bits = MODES[mode]
    for i in range(0, len(rows), 256):
        idx = rows[i : i + 256]
        sub = flat[mx.array(idx.astype(np.int32))]
        if mode == "nvfp4" and (len(idx) * flat.shape[1] // group) % 2:
            sub = mx.concatenate([sub, mx.zeros((1, flat.shape[1]), flat.dtype)])
        q, s = mx.quantize(sub, group, bits, mode=mode)
        wq[idx] = np.array(q)[: len(idx)].view(np.uint8)
        sc[idx] = np.array(s)[: len(idx)]


def quantize_chunked(w: mx.array, mode: str, rows_per_chunk: int = 128) -> tuple[mx.array, mx.array]:
    """``mx.quantize`` itself on blocks of ``rows_per_chunk`` rows (of the flattened [rows, in]
    view), concatenated: identical output, temporaries bounded by the block instead of the tensor
    (mlx's fp modes need 18-34x their input on the CPU), no faster."""
    if mode not in MODES:
        raise ValueError(f"quantize_chunked: mode {mode!r}; expected one of {', '.join(MODES)}")
    group, bits = MODES[mode]
    n = w.shape[-1]
    flat = w.reshape(-1, n)
    if mode == "nvfp4" and (rows_per_chunk * n // group) % 2:
        rows_per_chunk += 1  # mlx's nvfp4 packs by 32 elements across rows
    qs, ss = [], []
    for r0 in range(0, flat.shape[0], rows_per_chunk):
        block = flat[r0 : r0 + rows_per_chunk]
        k = block.shape[0]
        if mode == "nvfp4" and (k * n // group) % 2:
            block = mx.concatenate([block, mx.zeros((1, n), w.dtype)])
        q, s = mx.quantize(block, group, bits, mode=mode)
        q, s = q[:k], s[:k]
        mx.eval(q, s)
        qs.append(q)
        ss.append(s)
    shape = tuple(w.shape[:-1])
    return (mx.concatenate(qs).reshape(*shape, n * bits // 32),
            mx.concatenate(ss).reshape(*shape, n // group))
