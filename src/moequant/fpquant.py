"""Fast CPU replacement for ``mx.quantize`` in the float modes (mxfp4, nvfp4, mxfp8), bit for bit.

On the CPU, mlx 0.32 has no kernel for these modes: ``mx.quantize`` composes them from generic
ops (an argmin over the 16 e2m1 values for the 4-bit modes), about 0.025 GB/s of bf16 input for
mxfp4/nvfp4 with 18-34x the input in temporaries (mxfp8: ~0.25 GB/s, ~2-4x). :func:`quantize_fp`
gives the same bytes from numpy integer code over row blocks, temporaries bounded by the block.

What mlx computes per group of G elements (G = 32 for the mx modes, 16 for nvfp4), read from its
op graph and checked against ``mx.quantize`` for every reachable (group maximum, element) pair of
bf16 and fp16 inputs:

* ``amax = max|x|`` in the input dtype.
* mxfp4/mxfp8: ``I = amax / maxval`` (6 or 448) in the input dtype; the scale exponent is the
  smallest ``Z`` with ``2**Z >= I`` (mlx rounds ``log2(I)``, then adds 1 if ``2**Z < I``),
  ``Z = 0`` if ``I == 0``; the stored scale is ``Z + 127``. Elements are ``x / 2**Z``.
* nvfp4: the scale is ``to_fp8(amax / 6)`` (e4m3, round to nearest even, saturating at 448); the
  elements are ``x / e4m3(scale)``, divided in float32; a scale of 0 makes every code 0.
* nvfp4 with a global scale ``g`` (a float32 scalar; mlx-lm uses ``max|w|`` per expert): with
  ``enc = 2688 / g`` in float32 (2688 = 448 * 6), the scale is ``to_fp8(f32(amax / 6) * enc)``
  (``amax / 6`` in the input dtype, the product in float32) and the element value is
  ``f32(x / e4m3(scale)) * enc``: the quotient rounded to the input dtype (mlx divides in it), the
  product in float32; then the nearest e2m1 value as below (dequantized: e2m1 * e4m3 * g / 2688).
  A scale of 0 makes every code 0. g = 0 (an all-zero expert) or g < ~8e-36 make ``enc`` inf: all
  codes are 0 and the scales are ``to_fp8(inf)`` = 0x7E, or ``to_fp8(0 * inf)``, a NaN (0xFE on
  x86), for zero groups. (Without a global scale, mlx's graph is the same with enc = 1.)
* 4-bit elements: the nearest of the 16 e2m1 values, ties to the lower table index, so ties go to
  the smaller magnitude (0.75 -> 0.5, 1.75 -> 1.5, 2.5 -> 2, 5 -> 4), ``x > 6`` gives 6, and a
  negative value that rounds to zero gives +0 (code 0, never 8). Codes are packed low nibble first:
  element ``k`` of each uint32 sits in bits ``4k..4k+3``.
* mxfp8 elements: mlx's ``to_fp8`` (e4m3, round to nearest even, saturating to 448, sign kept, so
  -0.0 gives 0x80); four bytes to a uint32, little-endian.

For bf16/fp16 the per-group scale comes from tables computed with ``mx.quantize`` itself (all 32768
possible group maxima); the elements come from exact integer arithmetic on the bits (dividing by
``2**Z`` subtracts ``Z`` from the exponent field) or, for mxfp8, mlx's own ``to_fp8`` table. Groups
the fast path does not model are recomputed by ``mx.quantize`` on their rows: NaN or inf, maxima
so small that mlx's exponent arithmetic wraps (below ~1e-35 for bf16/float32), and nvfp4 groups
whose scale saturates (max |x| > ~2600), where mlx's float32 distances to the table tie.

With a global scale, each distinct g gets its own small tables: the scale byte of every possible
bf16/fp16 group maximum, and the 7 code thresholds on the float32 quotient ``|x| / e4m3(scale)``
(mlx's element value is non-decreasing in that quotient, so each threshold is found by a search over
mlx's arithmetic: dtype rounding, then ``* enc``). Not modelled, so left to ``mx.quantize``: rows
with NaN or inf, groups whose value ``|x| / M * enc`` reaches 2**20 (g far below max|x|: the scale
saturates and mlx's float32 distances tie), and a g that is negative, -0, inf or NaN (all rows).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import mlx.core as mx
import numpy as np

from .formats import FP_MODES, Quant, defaults, divides, packed_shape, scales_shape

THREADS: int | None = None  # threads per call when not given (None: up to 2); procpool's workers set 1

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
        self.sint = np.dtype(uint).str.replace("u", "i")  # same-size signed int
        self.dint = np.int16 if self.nbits == 16 else np.int32


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
    bits, group = defaults(mode)
    rows = np.zeros((len(mags) + len(mags) % 2, group), fmt.uint)  # even count: nvfp4 packs by 32
    rows[: len(mags), 0] = mags
    _, scales = mx.quantize(mx.array(rows).view(fmt.dtype), group, bits, mode=mode)
    return np.array(scales)[: len(mags), 0]


def _fp16_floor_bits(values: np.ndarray) -> np.ndarray:
    """fp16 bits of the largest fp16 <= each (non-negative) value, so x > t iff x > that."""
    with np.errstate(over="ignore"):  # inf for groups that are not ok anyway
        h = values.astype(np.float16)
    b = h.view(np.uint16).copy()
    b[h.astype(np.float64) > values] -= 1
    return b


def _tables16(mode: str, fmt: _Fmt) -> dict:
    """For bf16/fp16, per possible group maximum (its 15 magnitude bits): the scale byte, whether
    the fast path models the group, and the element parameters: 4-bit thresholds (nvfp4) or the
    exponent shift ``Z << mant`` (mx modes)."""
    mags = np.arange(fmt.sign, dtype=np.uint32).astype(fmt.uint)
    scale = _oracle_scales(mode, fmt, mags)
    amax = mx.array(mags).view(fmt.dtype)
    finite = mags < fmt.inf
    t = {"scale": scale}
    if mode == "nvfp4":
        inter_nv = np.array(mx.divide(amax, mx.array(6.0, fmt.dtype)).astype(mx.float32))
        mine = _to_fp8(inter_nv)
        # saturated scales (amax > ~2600) leave quotients so large that mlx's rounded distances
        # to the table tie; those groups go to mx.quantize
        ok = finite & (mine == scale) & (scale < 0x7E)
        # for a global scale (_GS): float32 values of inter, of the maxima, the e4m3 bytes
        t["inter"], t["fp8"], t["finite"] = inter_nv, _fp8_values(), finite
        t["xf"] = np.array(amax.astype(mx.float32))
        m = _fp8_values()[scale]
        if fmt.dtype == mx.float16:  # compare x with m * midpoint: exact, and faster than f32
            thr = _fp16_floor_bits(m[:, None].astype(np.float64) * np.array(_MIDPOINTS))
            thr[scale == 0] = fmt.mag  # x / 0: mlx's argmin over inf/nan distances gives code 0
            t["thr"] = thr
        else:
            t["m"] = np.where(scale == 0, np.float32(np.inf), m).astype(np.float32)  # x/inf: 0
    else:
        inter = np.array(mx.divide(amax, mx.array(_MAXVAL[mode], fmt.dtype)).astype(mx.float32))
        frac, e = np.frexp(inter.astype(np.float64))
        z = np.where(inter > 0, e - (frac == 0.5), 0).astype(np.int64)
        # below -116 mlx's exponent wraps in uint8 (from -128) or bf16 subnormals would matter
        ok = finite & (z + 127 == scale) & (z >= (-116 if fmt.dtype == mx.bfloat16 else -30))
        z = np.where(ok, z, 0)
        t["shift"] = (z << fmt.mant).astype(fmt.dint)
        if fmt.dtype == mx.float16:
            t["ext"] = _ext_bits(fmt)
        if mode == "mxfp8":
            t["f8"] = _fp8_table(fmt)
    t["ok"] = ok
    return t


def _ext_bits(fmt: _Fmt) -> np.ndarray:
    """fp16 magnitude bits with subnormals renormalized (exponent field <= 0), as int32, so that
    ``ext - (Z << mant)`` is the bits of ``x / 2**Z`` whenever that is a normal number, and lies
    below the bits of 2**-14 otherwise."""
    mags = np.arange(fmt.sign, dtype=np.int64)
    ext = mags.copy()
    sub = (mags >> fmt.mant) == 0
    m = np.maximum(mags[sub], 1)
    k = np.floor(np.log2(m)).astype(np.int64)
    ext[sub] = ((k + 1 - fmt.mant) << fmt.mant) + ((m - (1 << k)) << (fmt.mant - k))
    ext[0] = -(1 << 20)
    return ext.astype(np.int32)


def _fp8_table(fmt: _Fmt) -> np.ndarray:
    """mlx's ``to_fp8`` of every 16-bit pattern of the input dtype."""
    allbits = mx.arange(1 << 16, dtype=mx.uint32).astype(mx.uint16).view(fmt.dtype)
    f8 = np.array(mx.to_fp8(allbits))
    # Quotients below the normal range are clamped to 0: right only if every such value is +-0
    # in e4m3, which holds for bf16 and fp16 (their normals start below 2**-10).
    tiny = np.arange(1 << fmt.mant)
    if not ((f8[tiny] == 0).all() and (f8[tiny | fmt.sign] == 0x80).all()):
        raise AssertionError("mlx's to_fp8 keeps a subnormal: fpquant's mxfp8 path does not apply")
    return f8


def _tables(mode: str, fmt: _Fmt) -> dict:
    key = (mode, str(fmt.dtype))
    with _TABLES_LOCK:
        if key not in _TABLES:
            _TABLES[key] = _tables16(mode, fmt) if fmt.nbits == 16 else {"fp8": _fp8_values()}
        return _TABLES[key]


# --------------------------------------------------------------------------------------------
# nvfp4 with a global scale g (see the module docstring)

_ENC_NUM = np.float32(448.0 * 6.0)
_Q_LIMIT = np.float32(2.0**20)  # below this mlx's float32 distances to the e2m1 table cannot tie
_FP8_EDGES: list = []


def _fp8_edges() -> np.ndarray:
    """For each e4m3 byte b = 1..126, the smallest float32 >= 0 that _to_fp8 maps to >= b."""
    with _TABLES_LOCK:
        if not _FP8_EDGES:
            lo = np.zeros(126, np.int64)  # bits, to_fp8 < b
            hi = np.full(126, 0x7F800000, np.int64)  # bits, to_fp8 >= b
            b = np.arange(1, 127)
            while (hi - lo > 1).any():
                mid = (lo + hi) >> 1
                ge = _to_fp8(mid.astype(np.uint32).view(np.float32)) >= b
                hi = np.where(ge, mid, hi)
                lo = np.where(ge, lo, mid)
            _FP8_EDGES.append(hi.astype(np.uint32).view(np.float32))
        return _FP8_EDGES[0]


class _GS:
    """What one global scale ``g`` (float32) implies for one input format: enc = 2688 / g,
    the 7 code thresholds, and for 16-bit inputs the scale byte and "modelled" flag of every
    possible group maximum."""

    def __init__(self, g: np.float32, fmt: _Fmt, tables: dict):
        self.g = np.float32(g)
        with np.errstate(all="ignore"):
            self.enc = _ENC_NUM / self.g
        # g < 0, -0, inf or nan: not modelled, the rows go to mx.quantize
        self.valid = bool(np.isfinite(self.g) and self.g >= 0 and not np.signbit(self.g))
        # g == 0 (an all-zero expert) or g < ~8e-36: enc is inf, every code is 0 (x / M * inf is
        # +-inf or nan, all at infinite distance from the table, and argmin gives index 0)
        self.zero_codes = self.valid and bool(np.isinf(self.enc))
        if not self.valid:
            return
        # divisor per scale byte, applied to |x| (for fp16: to the float32 whose bits are the
        # fp16 bits << 13, which is |x| * 2**-112, subnormals included); scale 0: x / 0 gives
        # codes 0, as does x / inf
        fp8 = tables["fp8"].astype(np.float32)
        self.m = np.where(fp8 == 0, np.float32(np.inf), fp8).astype(np.float32)
        self.div = self.m * np.float32(2.0**-112) if fmt.dtype == mx.float16 else self.m
        if not self.zero_codes:
            b = self._bounds(fmt)
            self.bounds, self.qlim = b[:7], b[7]
        # An unsaturated scale (< 0x7E) leaves every |x| / M below ~10 / enc: only saturated
        # groups can reach _Q_LIMIT, unless that bound overflows fp16 (g > ~1.7e7)
        self.check_all = fmt.dtype == mx.float16 and self.g > np.float32(1e6)
        if fmt.nbits == 16:
            self.scale = self._scale16(fmt, tables)
            self.ok = self.ok_groups(fmt, tables["xf"], self.scale, tables["finite"])

    def _scale16(self, fmt: _Fmt, tables: dict) -> np.ndarray:
        """Scale byte per group maximum: mlx's to_fp8(inter * enc), inter = dtype(amax / 6) as
        float32. inter * enc is non-decreasing in the maximum's bits, so the bytes are runs
        found with searchsorted (entries for inf / nan maxima are not used)."""
        with np.errstate(all="ignore"):
            prod = tables["inter"] * self.enc
        if self.zero_codes:  # inf or nan products (0 * inf: NaN, whose sign to_fp8 keeps)
            return _to_fp8(prod)
        nf = fmt.inf
        starts = np.searchsorted(prod[:nf], _fp8_edges())
        runs = np.diff(np.concatenate([[0], starts, [nf]]))
        scale = np.zeros(fmt.sign, np.uint8)
        scale[:nf] = np.repeat(np.arange(127, dtype=np.uint8), runs)
        return scale

    def scale_f32(self, amax: np.ndarray) -> np.ndarray:
        """Scale bytes from group maxima (float32 values): to_fp8(amax / 6 * enc)."""
        with np.errstate(all="ignore"):
            return _to_fp8((amax / np.float32(6.0)) * self.enc)

    def ok_groups(self, fmt: _Fmt, x: np.ndarray, scale: np.ndarray, finite: np.ndarray) -> np.ndarray:
        """Groups the fast path models, from their maxima ``x`` (float32 values) and scales:
        finite, and scale 0 (codes 0) or mlx's value of the largest element (so of every
        element) below _Q_LIMIT."""
        ok = finite.copy()
        if self.zero_codes:
            return ok
        sel = np.nonzero(scale != 0 if self.check_all else scale == 0x7E)[0]
        if sel.size:
            with np.errstate(all="ignore"):
                r = x[sel] / self.m[scale[sel]]
            ok[sel] &= r.view(np.int32) <= self.qlim  # r >= 0, or nan (not ok)
        return ok

    def _q(self, fmt: _Fmt, r: np.ndarray) -> np.ndarray:
        """mlx's value before the table search from the float32 quotient ``r = |x| / M``: rounded
        to the input dtype (mlx divides in it), then times enc in float32."""
        with np.errstate(all="ignore"):
            if fmt.dtype == mx.bfloat16:  # round to nearest even (r >= 0 here)
                b = r.view(np.uint32)
                b = (b + (np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1)))) & np.uint32(0xFFFF0000)
                r = b.view(np.float32)
            elif fmt.dtype == mx.float16:  # same as astype(float16), 10x faster
                b = r.view(np.uint32)
                b = (b + (np.uint32(0xFFF) + ((b >> np.uint32(13)) & np.uint32(1)))) & np.uint32(0xFFFFE000)
                sub = np.rint(r * np.float32(2.0**24)) * np.float32(2.0**-24)  # fp16 subnormals
                r = np.where(r < np.float32(2.0**-14), sub, b.view(np.float32))
                r[r >= np.float32(65520.0)] = np.inf
            return r * self.enc

    def _bounds(self, fmt: _Fmt) -> list:
        """The float32 bits B_j (as int32) of the largest quotient ``|x| / M`` whose mlx value is
        <= midpoint j: x's code is the number of j with ``bits(|x| / M) > B_j``; and last, the
        bits of the largest quotient whose value is below _Q_LIMIT. The value is non-decreasing
        in the quotient, hence a (256-ary) search over the float32 bits."""
        top = np.append(np.array(_MIDPOINTS, np.float32), np.nextafter(_Q_LIMIT, np.float32(0)))
        top = top[:, None]
        nb = len(top)
        lo = np.zeros(nb, np.int64)  # value(lo) <= top; B in [lo, hi]
        hi = np.full(nb, 0x7F800000 - 1, np.int64)  # inf's value is inf > top
        k = np.arange(1, 257)
        rows = np.arange(nb)
        while (lo < hi).any():
            step = (hi - lo + 255) // 256
            pts = np.minimum(lo[:, None] + step[:, None] * k, hi[:, None])
            n = (self._q(fmt, pts.astype(np.uint32).view(np.float32)) <= top).sum(axis=1)  # a prefix
            new_lo = np.where(n > 0, pts[rows, np.maximum(n - 1, 0)], lo)
            hi = np.where(n < 256, pts[rows, np.minimum(n, 255)] - 1, hi)
            lo = new_lo
        return [np.int32(b) for b in lo]


def _block_gs(fmt: _Fmt, tables: dict, gs: _GS, ws: "_Work", u: np.ndarray, wq: np.ndarray,
              sc: np.ndarray) -> np.ndarray:
    """:func:`_block` for nvfp4 with the global scale ``gs``."""
    rows = u.shape[0]
    ug = u.reshape(-1, 16)
    shape = ug.shape
    mag = np.bitwise_and(ug, fmt.uint(fmt.mag), out=ws.get("mag", shape, fmt.uint))
    amax = _group_max(mag, ws)
    if fmt.nbits == 16:
        scale, ok = gs.scale[amax], gs.ok[amax]
    else:
        x = amax.view(np.float32)
        scale = gs.scale_f32(x)
        ok = gs.ok_groups(fmt, x, scale, amax < np.uint32(0x7F800000))
    sc[...] = scale.reshape(sc.shape)
    bad = np.nonzero(~ok.reshape(rows, -1).all(axis=1))[0]
    if gs.zero_codes:
        wq[...] = 0
        return bad
    d = ws.get("d", shape, np.int32)
    q = d.view(np.float32)
    if fmt.nbits == 16:  # |x| as float32 (fp16: times 2**-112, see _GS)
        np.left_shift(mag, 16 if fmt.dtype == mx.bfloat16 else 13, dtype=np.uint32, out=d.view(np.uint32))
        x = q
    else:
        x = mag.view(np.float32)
    with np.errstate(all="ignore"):
        np.divide(x, gs.div[scale][:, None], out=q)
    neg = np.less(ug.view(fmt.sint), 0, out=ws.get("neg", shape, np.bool_))
    codes = _codes_from_thresholds(d, neg, gs.bounds, ws, shape)
    _pack4(codes, wq, ws)
    return bad


# --------------------------------------------------------------------------------------------
# One block of rows


def _group_params_f32(mode: str, tables: dict, amax_bits: np.ndarray):
    """float32 input: scale byte, ok flag and element parameter per group, from amax bits:
    the divisor M (nvfp4), ``Z << 23`` (mxfp4) or ``2**-Z`` (mxfp8)."""
    amax = amax_bits.view(np.float32)
    finite = amax_bits < np.uint32(0x7F800000)
    with np.errstate(all="ignore"):
        inter = amax / np.float32(_MAXVAL[mode])
        if mode == "nvfp4":
            scale = _to_fp8(inter)
            m = tables["fp8"][scale]
            m[scale == 0] = np.inf  # x / 0 in mlx gives codes 0, as does x / inf here
            return scale, finite & (scale < 0x7E), m  # saturated: see _tables16
        frac, e = np.frexp(inter)
        z = np.where(inter > 0, e - (frac == 0.5), 0).astype(np.int32)
    ok = finite & (z >= -120) & (z <= 127)
    z = np.where(ok, z, 0)
    scale = (z + 127).astype(np.uint8)
    if mode == "mxfp4":
        return scale, ok, z << 23
    return scale, ok, np.ldexp(np.float32(1.0), -z).astype(np.float32)


class _Work:
    """Scratch arrays for one thread, sized for one block and reused from block to block (fresh
    temporaries per block cost page faults, about a third of the time)."""

    def __init__(self, elems: int):
        self.elems = elems
        self.bufs: dict = {}

    def get(self, name: str, shape, dtype) -> np.ndarray:
        key = (name, np.dtype(dtype).itemsize)
        if key not in self.bufs:
            self.bufs[key] = np.empty(self.elems * np.dtype(dtype).itemsize, np.uint8)
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return self.bufs[key][:size].view(dtype).reshape(shape)


def _group_max(mag: np.ndarray, ws: _Work) -> np.ndarray:
    """Row maxima of ``mag`` [groups, G]: transposed to [G, groups], then halved G times with
    contiguous (vectorized) maxima; numpy's reductions over short rows are slower."""
    groups, g = mag.shape
    cols = ws.get("cols", (g, groups), mag.dtype)
    np.copyto(cols, mag.T)
    while g > 1:
        g //= 2
        np.maximum(cols[:g], cols[g : 2 * g], out=cols[:g])
    return cols[0].copy()


def _bits_of(v: float, fmt: _Fmt) -> int:
    """Bits of ``v`` (exactly representable) in the input format."""
    if fmt.dtype == mx.float16:
        return int(np.array(v, np.float16).view(np.uint16))
    return int(np.array(v, np.float32).view(np.uint32)) >> (32 - fmt.nbits)


def _codes_from_bits(d: np.ndarray, neg: np.ndarray, fmt: _Fmt, ws: _Work, shape) -> np.ndarray:
    """e2m1 codes from ``d``, the bits (in the input format) of each ``|x| / scale``: the number
    of midpoints 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5 strictly below, plus 8 if ``neg`` and the
    code is not 0. The midpoints from 1.25 up are 2**(mant-1) apart in bits, hence the shift.
    ``neg`` is overwritten."""
    t0, t1, t2 = (_bits_of(v, fmt) for v in (0.25, 0.75, 1.25))
    t = np.subtract(d, t2 + 1, out=ws.get("t", shape, d.dtype))
    np.right_shift(t, fmt.mant - 1, out=t)
    np.clip(t, -1, 4, out=t)
    t += 2
    codes = ws.get("codes", shape, np.uint8)
    codes[...] = t  # 1..6
    cmp = np.less_equal(d, t1, out=ws.get("b1", shape, np.bool_))
    codes -= cmp.view(np.uint8)
    np.greater(d, t0, out=cmp)  # code > 0
    codes += cmp.view(np.uint8)
    np.logical_and(neg, cmp, out=neg)
    return _or_sign(codes, neg)


def _or_sign(codes: np.ndarray, sign: np.ndarray) -> np.ndarray:
    """``codes |= 8 * sign`` (sign: bool); the shift runs on uint16 pairs, as numpy has no fast
    uint8 shift (each byte is 0 or 1, so nothing crosses into the next byte)."""
    pairs = sign.view(np.uint16)
    pairs <<= 3
    codes |= sign.view(np.uint8)
    return codes


def _codes_from_thresholds(mag, neg, thr, ws: _Work, shape) -> np.ndarray:
    """e2m1 codes by comparing magnitude bits with threshold bits: ``thr`` is per group
    ([groups, 7]) or 7 scalars. ``neg`` is overwritten."""
    cols = [thr[:, j : j + 1] for j in range(7)] if isinstance(thr, np.ndarray) else thr
    codes = ws.get("codes", shape, np.uint8)
    gt = ws.get("b1", shape, np.bool_)
    np.greater(mag, cols[0], out=gt)
    codes[...] = gt
    np.logical_and(neg, gt, out=neg)
    for j in range(1, 7):
        np.greater(mag, cols[j], out=gt)
        codes += gt.view(np.uint8)
    return _or_sign(codes, neg)


def _pack4(codes: np.ndarray, out: np.ndarray, ws: _Work) -> None:
    """Two codes per byte, the first in the low nibble (little-endian: low nibbles first in each
    uint32)."""
    pair = codes.reshape(-1).view(np.uint16)  # c0 | c1 << 8
    tmp = ws.get("pair", pair.shape, np.uint16)
    np.right_shift(pair, 4, out=tmp)  # c1 << 4
    tmp |= pair
    out[...] = tmp.reshape(out.shape)  # low byte: c0 | c1 << 4 (astype keeps the low byte)


def _block(mode: str, fmt: _Fmt, tables: dict, ws: _Work, u: np.ndarray, wq: np.ndarray,
           sc: np.ndarray) -> np.ndarray:
    """Quantize rows ``u`` (raw bits, [rows, in]) into ``wq`` (bytes) and ``sc``; return the
    indices of rows the fast path does not model."""
    bits, group = defaults(mode)
    rows, n = u.shape
    ug = u.reshape(-1, group)
    shape = ug.shape
    mag = np.bitwise_and(ug, fmt.uint(fmt.mag), out=ws.get("mag", shape, fmt.uint))
    amax = _group_max(mag, ws)
    if fmt.nbits == 16:
        scale, ok = tables["scale"][amax], tables["ok"][amax]
    else:
        scale, ok, param = _group_params_f32(mode, tables, amax)
    sc[...] = scale.reshape(sc.shape)
    bad = np.nonzero(~ok.reshape(rows, -1).all(axis=1))[0]
    if bits == 4:
        neg = np.less(ug.view(fmt.sint), 0, out=ws.get("neg", shape, np.bool_))
    if mode == "nvfp4" and fmt.dtype == mx.float16:
        codes = _codes_from_thresholds(mag, neg, tables["thr"][amax], ws, shape)
    elif mode == "nvfp4":  # mlx divides, so use the rounded float32 quotient x / M
        if fmt.nbits == 16:  # bf16: the upper half of a float32
            x = np.left_shift(ug, np.uint32(16), dtype=np.uint32, out=ws.get("x", shape, np.uint32))
            m = tables["m"][amax]
        else:
            x, m = ug, param
        d = ws.get("d", shape, np.int32)
        with np.errstate(all="ignore"):
            np.divide(x.view(np.float32), m[:, None], out=d.view(np.float32))
        d &= np.int32(0x7FFFFFFF)
        codes = _codes_from_bits(d, neg, _FMTS[mx.float32], ws, shape)
    elif mode == "mxfp8" and fmt.nbits == 32:
        with np.errstate(all="ignore"):
            q = ug.view(np.float32) * param[:, None]
        wq[...] = _to_fp8(q).reshape(wq.shape)
        return bad
    else:  # mx modes: the bits of x / 2**Z are the bits of x minus Z << mant
        if fmt.dtype == mx.float16:  # subnormals renormalized first
            src = np.take(tables["ext"], mag, out=ws.get("d", shape, np.int32))
        else:
            src = mag.view(fmt.sint)
        shift = tables["shift"][amax] if fmt.nbits == 16 else param
        d = np.subtract(src, shift[:, None], out=ws.get("d", shape, src.dtype))
        if bits == 8:  # mxfp8, 16-bit input: mlx's own to_fp8 of the quotient, by table
            # quotients below the normal range are +-0 in e4m3: clamp d at 0 (branch-free:
            # d & ~(d >> sign bit)); d never exceeds 0x7FFF (|x| / 2**Z <= 448 * (1 + 2**-7))
            neg_d = np.right_shift(d, d.dtype.itemsize * 8 - 1, out=ws.get("t", shape, d.dtype))
            np.invert(neg_d, out=neg_d)
            d &= neg_d
            idx = ws.get("mag", shape, fmt.uint)
            idx[...] = d
            idx |= np.bitwise_and(ug, fmt.uint(fmt.sign), out=ws.get("x", shape, fmt.uint))
            np.take(tables["f8"], idx.reshape(wq.shape), out=wq)
            return bad
        codes = _codes_from_bits(d, neg, fmt, ws, shape)
    _pack4(codes, wq, ws)
    return bad


# --------------------------------------------------------------------------------------------
# Public API


def quantize_fp(w: mx.array, mode: str, *, global_scale: mx.array | float | None = None,
                block_elems: int = 1 << 18, threads: int | None = None) -> tuple[mx.array, mx.array]:
    """``mx.quantize(w, group_size=G, bits=B, mode=mode, global_scale=global_scale)`` for mode
    mxfp4 (G 32, B 4), nvfp4 (G 16, B 4) or mxfp8 (G 32, B 8): the same (uint32 weight, uint8
    scales), same shapes, byte for byte, evaluated (not lazy).

    ``global_scale`` (nvfp4 only, as in mlx): a float32 scalar mx.array, or a Python / numpy
    number, taken as float32. mlx dequantizes such weights as e2m1 * e4m3 * (g / 2688); mlx-lm
    uses ``g = max|w|`` (see :func:`quantize_fp_experts`). A global scale that is negative, -0,
    inf or nan is left to mx.quantize (slow); g = 0 (an all-zero expert) is handled here.

    Runs on the CPU in row blocks of about ``block_elems`` input elements, on ``threads`` threads
    (default: 2, or 1 on a one-core machine; numpy releases the GIL for the work). Extra memory:
    the outputs twice (numpy, then the mx copy) plus ~16 bytes per block element per thread.

    ``w``: bfloat16, float16 or float32, shape [..., in] with at least 2 dims and ``in`` a
    multiple of G; any strides. Unlike mx.quantize, nvfp4 also works when the element count is
    not a multiple of 32 (mx.quantize raises there); each row is then what mx.quantize gives it
    inside a larger tensor.
    """
    _check_args("quantize_fp", w, mode)
    gvals = None
    if global_scale is not None:
        if mode != "nvfp4":
            raise ValueError(f"quantize_fp: a global scale needs mode 'nvfp4', got {mode!r}")
        gvals = np.array([_global_scale_value(global_scale)], np.float32)
    return _quantize(w, mode, gvals, block_elems, threads)


def quantize_fp_experts(w: mx.array, mode: str = "nvfp4", *, block_elems: int = 1 << 18,
                        threads: int | None = None) -> tuple[mx.array, mx.array, mx.array]:
    """mlx-lm's ``_quantize_experts(w, group_size=16, bits=4, mode="nvfp4")`` (switch_layers.py),
    byte for byte: each expert ``w[e]`` of ``w`` [experts, out, in] quantized with its own global
    scale ``g[e] = max|w[e]|`` (computed in w's dtype, then float32). Returns (packed uint32
    [experts, out, in / 8], scales uint8 [experts, out, in / 16], g float32 [experts]).

    Same options and extra memory as :func:`quantize_fp`.
    """
    if mode != "nvfp4":
        raise ValueError(f"quantize_fp_experts: a global scale needs mode 'nvfp4', got {mode!r}")
    _check_args("quantize_fp_experts", w, mode)
    if w.ndim != 3:
        raise ValueError(f"quantize_fp_experts: shape {tuple(w.shape)}; expected [experts, out, in]")
    g = _expert_maxima(w)
    q, s = _quantize(w, mode, np.array(g), block_elems, threads)
    return q, s, g


def _expert_maxima(w: mx.array) -> mx.array:
    """``mx.max(mx.abs(w), axis=(-2, -1)).astype(mx.float32)``, from the largest magnitude bits
    (the same value, 10-20x faster than mlx's CPU abs + max); experts holding a NaN are left to
    mlx, whose max gives a NaN (with mlx's bits)."""
    fmt = _FMTS[w.dtype]
    src = w.reshape(w.shape[0], -1).view(mx.uint16 if fmt.nbits == 16 else mx.uint32)
    mx.eval(src)
    u = np.asarray(src)
    top = np.zeros(w.shape[0], fmt.uint)
    chunk = max(1, (1 << 22) // max(1, u.shape[1]))  # experts per temporary
    for e0 in range(0, u.shape[0], chunk):
        top[e0 : e0 + chunk] = np.bitwise_and(u[e0 : e0 + chunk], fmt.uint(fmt.mag)).max(axis=1, initial=0)
    del u
    g = np.array(mx.array(top).view(w.dtype).astype(mx.float32))
    for e in np.nonzero(top > fmt.inf)[0]:
        g[e] = np.array(mx.max(mx.abs(w[int(e)])).astype(mx.float32))
    return mx.array(g)


def _check_args(name: str, w: mx.array, mode: str) -> None:
    if mode not in FP_MODES:
        raise ValueError(f"{name}: mode {mode!r}; expected one of {', '.join(FP_MODES)}")
    if w.dtype not in _FMTS:
        raise ValueError(f"{name}: dtype {w.dtype}; expected bfloat16, float16 or float32")
    q = Quant.make(mode)
    if w.ndim < 2 or not divides(w.shape[-1], q):
        raise ValueError(f"{name}: shape {tuple(w.shape)}; expected [..., in] with in a multiple of {q.group_size}")


def _global_scale_value(g) -> np.float32:
    if isinstance(g, mx.array):
        if g.dtype != mx.float32 or g.size != 1:
            raise ValueError(f"quantize_fp: global_scale must be a float32 scalar, got {g.dtype} {tuple(g.shape)}")
        return np.array(g).reshape(()).astype(np.float32)[()]
    return np.float32(g)


def _quantize(w: mx.array, mode: str, gvals: np.ndarray | None, block_elems: int,
              threads: int | None) -> tuple[mx.array, mx.array]:
    """Quantize ``w`` ([..., in]); with ``gvals`` (float32, nvfp4 only), its flattened rows in
    ``len(gvals)`` equal consecutive segments, segment i with global scale ``gvals[i]``."""
    q = Quant.make(mode)
    fmt = _FMTS[w.dtype]
    tables = _tables(mode, fmt)
    n = w.shape[-1]
    flat = w.reshape(-1, n)
    rows = flat.shape[0]
    src = flat.view(mx.uint16 if fmt.nbits == 16 else mx.uint32)
    mx.eval(src)
    u = np.asarray(src)  # zero-copy view of mlx's buffer; only read
    wq = np.empty(packed_shape((rows, n), q), np.uint32).view(np.uint8)  # written byte by byte
    sc = np.empty(scales_shape((rows, n), q), np.uint8)
    step = max(1, block_elems // n)
    if gvals is None:
        seg, ctx = rows, [None]
    else:
        seg = rows // len(gvals) if len(gvals) else 0
        uniq: dict = {}
        for g in gvals:  # one _GS per distinct g
            if g.tobytes() not in uniq:
                uniq[g.tobytes()] = _GS(g, fmt, tables)
        ctx = [uniq[g.tobytes()] for g in gvals]
    # blocks of rows within one segment; segments whose global scale is not modelled are left to
    # mx.quantize
    jobs = []
    for i, c in enumerate(ctx):
        if c is None or c.valid:
            s0, s1 = i * seg, (i + 1) * seg
            jobs += [(r0, min(s1, r0 + step), i) for r0 in range(s0, s1, step)]

    local = threading.local()

    def run(job):
        r0, r1, i = job
        if not hasattr(local, "ws"):
            local.ws = _Work(step * n)
        if ctx[i] is None:
            return r0 + _block(mode, fmt, tables, local.ws, u[r0:r1], wq[r0:r1], sc[r0:r1])
        return r0 + _block_gs(fmt, tables, ctx[i], local.ws, u[r0:r1], wq[r0:r1], sc[r0:r1])

    nthreads = threads or THREADS or min(2, os.cpu_count() or 1)
    if nthreads > 1 and len(jobs) > 1:
        with ThreadPoolExecutor(nthreads) as pool:
            bad = list(pool.map(run, jobs))
    else:
        bad = [run(job) for job in jobs]
    bad = np.concatenate(bad) if bad else np.zeros(0, np.int64)
    if gvals is None:
        if bad.size:
            _fallback(flat, bad, mode, wq, sc)
    else:
        for i, c in enumerate(ctx):
            rows_i = (np.arange(i * seg, (i + 1) * seg) if not c.valid
                      else bad[(bad >= i * seg) & (bad < (i + 1) * seg)])
            if rows_i.size:
                _fallback(flat, rows_i, mode, wq, sc, mx.array(gvals[i]))
    del u
    return (mx.array(wq.view(np.uint32)).reshape(packed_shape(w.shape, q)),
            mx.array(sc).reshape(scales_shape(w.shape, q)))


def _fallback(flat: mx.array, rows: np.ndarray, mode: str, wq: np.ndarray, sc: np.ndarray,
              global_scale: mx.array | None = None) -> None:
    """Rows with groups the fast path does not model, straight from mx.quantize."""
    bits, group = defaults(mode)
    kw = {} if global_scale is None else {"global_scale": global_scale}
    for i in range(0, len(rows), 256):
        idx = rows[i : i + 256]
        sub = flat[mx.array(idx.astype(np.int32))]
        if mode == "nvfp4" and (len(idx) * flat.shape[1] // group) % 2:
            sub = mx.concatenate([sub, mx.zeros((1, flat.shape[1]), flat.dtype)])
        q, s = mx.quantize(sub, group, bits, mode=mode, **kw)
        wq[idx] = np.array(q)[: len(idx)].view(np.uint8)
        sc[idx] = np.array(s)[: len(idx)]


def quantize_chunked(w: mx.array, mode: str, rows_per_chunk: int = 128) -> tuple[mx.array, mx.array]:
    """``mx.quantize`` itself on blocks of ``rows_per_chunk`` rows (of the flattened [rows, in]
    view), concatenated: identical output, temporaries bounded by the block instead of the tensor
    (mlx's fp modes need 18-34x their input on the CPU), no faster."""
    if mode not in FP_MODES:
        raise ValueError(f"quantize_chunked: mode {mode!r}; expected one of {', '.join(FP_MODES)}")
    quant = Quant.make(mode)
    bits, group = quant.bits, quant.group_size
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
    return (mx.concatenate(qs).reshape(packed_shape(w.shape, quant)),
            mx.concatenate(ss).reshape(scales_shape(w.shape, quant)))
