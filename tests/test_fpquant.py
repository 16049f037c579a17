"""fpquant.quantize_fp gives mx.quantize's bytes in the fp modes, whatever the values."""

import mlx.core as mx
import numpy as np
import pytest

from moequant.formats import FP_MODES, MODES as SPECS
from moequant.fpquant import quantize_chunked, quantize_fp

MODES = {m.value: (SPECS[m].default_group_size, SPECS[m].default_bits) for m in FP_MODES}  # mode -> (group, bits)

DTYPES = {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}
TINY = {"bfloat16": 1e-39, "float16": 3e-6, "float32": 1e-39}  # subnormal range of each dtype



def _assert_same_packing(q0, s0, q1, s1, label: str) -> None:
    """Same dtypes, shapes and bytes as mx.quantize's (packed weights, uint8 scales)."""
    assert q1.dtype == q0.dtype == mx.uint32 and s1.dtype == s0.dtype == mx.uint8
    assert q1.shape == q0.shape and s1.shape == s0.shape
    if not (mx.array_equal(q0, q1) and mx.array_equal(s0, s1)):
        qa, qb = np.array(q0).view(np.uint8), np.array(q1).view(np.uint8)
        sa, sb = np.array(s0), np.array(s1)
        raise AssertionError(f"{label}: {int((qa != qb).sum())} weight bytes and {int((sa != sb).sum())} scales "
                             f"differ; first at {np.argwhere(qa != qb)[:3].tolist()}")

def _values(case: str, shape: tuple, dtype: str, group: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 0.02
    groups = x.reshape(-1, group)  # a view: edits below change x
    if case == "outliers":  # a few huge values in every group
        cols = rng.integers(0, group, size=(groups.shape[0], 2))
        np.put_along_axis(groups, cols, rng.choice([-1, 1], cols.shape) * rng.uniform(50, 3000, cols.shape), 1)
    elif case == "zeros":  # all-zero groups (some -0.0), zeros inside groups
        groups[::3] = 0.0
        groups[1::6] = -0.0
        groups[rng.random(groups.shape) < 0.2] = 0.0
    elif case == "tiny":  # subnormal values, alone and mixed with normal ones
        t = rng.standard_normal(groups.shape) * TINY[dtype]
        groups[::2] = t[::2]
        groups[1::4, : group // 2] = t[1::4, : group // 2]
        groups[3::4] = t[3::4]  # subnormals in groups whose largest value is barely normal
        groups[3::4, 0] = TINY[dtype] * rng.uniform(3, 2e4, groups[3::4, 0].shape)
    elif case == "mixed":  # both signs, magnitudes over many decades
        x *= 10.0 ** rng.uniform(-7, 3, size=shape)
    elif case == "ties":  # exact grid points and midpoints, under power-of-two and other scales
        grid = np.array([0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2, 2.5, 3, 3.5, 4, 5, 6, 0.1, 5.5])
        vals = rng.choice(grid, groups.shape) * rng.choice([-1, 1], groups.shape)
        vals[:, 0] = 6.0
        scale = 2.0 ** rng.integers(-12, 4, size=(groups.shape[0], 1))
        scale[1::2] *= rng.choice([1.125, 1.25, 1.5, 1.75, 1.875], (scale[1::2].shape[0], 1))
        groups[...] = vals * scale
    elif case == "expert10x":  # one expert of the stack ten times larger
        x[1] *= 10.0
    return x


def _check(w: mx.array, mode: str, **kwargs) -> None:
    group, bits = MODES[mode]
    q0, s0 = mx.quantize(w, group_size=group, bits=bits, mode=mode)
    q1, s1 = quantize_fp(w, mode, **kwargs)
    _assert_same_packing(q0, s0, q1, s1, f"{mode} {w.dtype} {tuple(w.shape)}")
    d0 = mx.dequantize(q0, s0, group_size=group, bits=bits, mode=mode, dtype=w.dtype)
    d1 = mx.dequantize(q1, s1, group_size=group, bits=bits, mode=mode, dtype=w.dtype)
    assert mx.array_equal(d0, d1, equal_nan=True)


CASES = ["normal", "outliers", "zeros", "tiny", "mixed", "ties"]


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", CASES)
def test_2d_matches_mx_quantize(mode, dtype, case):
    x = _values(case, (48, 256), dtype, MODES[mode][0])
    _check(mx.array(x).astype(DTYPES[dtype]), mode)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", ["expert10x", "outliers", "tiny"])
def test_expert_stack_matches_mx_quantize(mode, dtype, case):
    x = _values(case, (4, 24, 128), dtype, MODES[mode][0], seed=1)
    _check(mx.array(x).astype(DTYPES[dtype]), mode)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_inf_and_nan_match_mx_quantize(mode, dtype):
    x = _values("normal", (32, 256), dtype, MODES[mode][0], seed=2)
    x.reshape(-1)[[5, 700, 1900]] = [np.inf, -np.inf, np.nan]
    x[20:, :] *= 1e4  # large groups too (nvfp4 saturates its scale at 448 here)
    _check(mx.array(x).astype(DTYPES[dtype]), mode)


@pytest.mark.parametrize("mode", list(MODES))
def test_blocks_and_threads(mode):
    """Many small blocks on two threads, rows that do not fill the last block: same bytes."""
    x = _values("mixed", (3, 37, 512), "bfloat16", MODES[mode][0], seed=3)
    w = mx.array(x).astype(mx.bfloat16)
    _check(w, mode, block_elems=1500, threads=2)
    _check(w, mode, block_elems=1, threads=1)


@pytest.mark.parametrize("mode", list(MODES))
def test_strided_and_broadcast_input(mode):
    w = mx.array(_values("mixed", (256, 96), "bfloat16", 32, seed=4)).astype(mx.bfloat16)
    _check(w.T, mode)
    _check(w.T[::2, 32:], mode)
    _check(mx.broadcast_to(w[:1, :64], (8, 64)), mode)


def test_every_bf16_value():
    """Each bf16 value once in a group with 1.0, once alone: covers every element code path."""
    vals = mx.arange(1 << 16, dtype=mx.uint32).astype(mx.uint16).view(mx.bfloat16)
    pairs = mx.stack([vals, mx.ones_like(vals)], axis=-1).reshape(-1, 512)
    for mode in MODES:
        _check(pairs, mode)
        _check(vals.reshape(-1, 512), mode)


def test_nvfp4_where_mx_quantize_refuses():
    """mlx packs nvfp4 by 32 elements across rows: [3, 16] raises there; here each row is what
    mx.quantize gives it in a larger tensor."""
    x = mx.array(_values("normal", (4, 16), "bfloat16", 16)).astype(mx.bfloat16)
    with pytest.raises(ValueError):
        mx.quantize(x[:3], group_size=16, bits=4, mode="nvfp4")
    q, s = mx.quantize(x, group_size=16, bits=4, mode="nvfp4")
    q1, s1 = quantize_fp(x[:3], "nvfp4")
    assert mx.array_equal(q1, q[:3]) and mx.array_equal(s1, s[:3])


@pytest.mark.parametrize("mode", list(MODES))
def test_chunked_helper_matches_mx_quantize(mode):
    group, bits = MODES[mode]
    w = mx.array(_values("outliers", (5, 9, 64), "bfloat16", group)).astype(mx.bfloat16)
    q0, s0 = mx.quantize(w, group_size=group, bits=bits, mode=mode)
    for rows in (1, 4, 128):
        q1, s1 = quantize_chunked(w, mode, rows_per_chunk=rows)
        assert q1.shape == q0.shape and s1.shape == s0.shape
        assert mx.array_equal(q0, q1) and mx.array_equal(s0, s1)


def test_rejects_what_it_does_not_do():
    w = mx.zeros((4, 64), mx.bfloat16)
    with pytest.raises(ValueError, match="mode"):
        quantize_fp(w, "affine")
    with pytest.raises(ValueError, match="dtype"):
        quantize_fp(w.astype(mx.int32), "mxfp4")
    with pytest.raises(ValueError, match="shape"):
        quantize_fp(mx.zeros((4, 48), mx.bfloat16), "mxfp4")
    with pytest.raises(ValueError, match="shape"):
        quantize_fp(mx.zeros((64,), mx.bfloat16), "mxfp4")


# --------------------------------------------------------------------------------------------
# nvfp4 with a global scale (mx.quantize's global_scale; mlx-lm's per-expert tensor scales)

from moequant.fpquant import quantize_fp_experts  # noqa: E402


def _check_gs(w: mx.array, g, **kwargs) -> None:
    """quantize_fp(w, "nvfp4", global_scale=g) gives mx.quantize's bytes."""
    g = mx.array(g, mx.float32)
    q0, s0 = mx.quantize(w, group_size=16, bits=4, mode="nvfp4", global_scale=g)
    q1, s1 = quantize_fp(w, "nvfp4", global_scale=g, **kwargs)
    _assert_same_packing(q0, s0, q1, s1, f"nvfp4 {w.dtype} {tuple(w.shape)} g={g.item()}")


def _gmax(w: mx.array) -> float:
    return mx.max(mx.abs(w)).astype(mx.float32).item()


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("magnitude", [1.0, 1e-3, 1e-5, 300.0])
def test_global_scale_matches_mx_quantize(dtype, case, magnitude):
    """g = max|w| (what mlx-lm uses) and g above and below it, at several magnitudes (small ones
    are where the global scale matters: it lifts the e4m3 scales out of their subnormal range)."""
    if dtype == "float16":
        magnitude = min(magnitude, 20.0)  # outliers (up to 3000) stay finite
    x = _values(case, (32, 128), dtype, 16) * magnitude
    w = mx.array(x).astype(DTYPES[dtype])
    g = _gmax(w)
    for gv in (g, g * 4.0, g / 3.0):
        _check_gs(w, gv)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_global_scale_edge_values(dtype):
    """g = 0 (an all-zero expert's), g so small that 2688 / g is inf, subnormal, huge, 2688
    (2688 / g = 1), far below max|w| (saturated scales), and the unmodelled nan, inf, negative."""
    x = _values("mixed", (16, 64), dtype, 16, seed=5)
    w = mx.array(x).astype(DTYPES[dtype])
    for g in (0.0, 1e-37, 1e-40, 1e30, 2688.0, _gmax(w) * 1e-4, _gmax(w) * 1e-7,
              np.nan, np.inf, -1.0, -0.0):
        _check_gs(w, g)
    _check_gs(mx.zeros((4, 32), DTYPES[dtype]), 0.0)
    big = w.astype(mx.float32) * 1e4 if dtype != "float16" else w * 1e4
    _check_gs(big.astype(DTYPES[dtype]), 1e-6)  # quotients beyond 2**20, and fp16 overflow
    if dtype == "float16":
        _check_gs(w, 1e8)  # x / M overflows fp16 without a saturated scale


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_global_scale_every_value(dtype):
    """Every bf16 / fp16 value alone in its group (every group maximum) and next to a fixed
    group maximum (every element), for a few global scales."""
    dt = DTYPES[dtype]
    vals = mx.arange(1 << 16, dtype=mx.uint32).astype(mx.uint16).view(dt)
    for g in (1.0, 1e-4):
        _check_gs(vals.reshape(-1, 512), g)
    for g, m0 in ((1.0, 1.0), (1e-3, 1e-3 / 7.3), (1e-5, 1e-5)):
        m0 = mx.array(m0).astype(dt)
        v = mx.where(mx.abs(vals) <= m0, vals, mx.zeros_like(vals))
        _check_gs(mx.stack([v, mx.broadcast_to(m0, v.shape)], axis=-1).reshape(-1, 512), g)


def test_global_scale_blocks_threads_and_strides():
    x = _values("mixed", (3, 37, 256), "bfloat16", 16, seed=6)
    w = mx.array(x).astype(mx.bfloat16)
    g = _gmax(w)
    _check_gs(w, g, block_elems=1500, threads=2)
    _check_gs(w, g, block_elems=1, threads=1)
    _check_gs(w.reshape(-1, 256)[:96].T, g)  # [256, 96], strided
    _check_gs(w[:, ::2, 64:], g)
    q0, s0 = quantize_fp(w, "nvfp4", global_scale=mx.array(g, mx.float32))
    q1, s1 = quantize_fp(w, "nvfp4", global_scale=g)  # a Python float is taken as float32
    assert mx.array_equal(q0, q1) and mx.array_equal(s0, s1)


def _expert_stack(dtype: str) -> mx.array:
    """Experts of very different magnitudes, one all zero, one with outliers and zero groups."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((8, 24, 64)) * 0.02
    x[1] *= 1e-3 / 0.02
    x[2] *= 1e-5 / 0.02
    x[3] = 0.0
    x[4] *= 1e4 if dtype != "float16" else 1e3
    x[5].reshape(-1, 16)[::2] = 0.0
    x[5].reshape(-1)[::97] = 40.0
    x[6] = _values("tiny", (24, 64), dtype, 16, seed=8)
    x[7] = -0.0
    return mx.array(x).astype(DTYPES[dtype])


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_experts_match_mlx_lm(dtype):
    switch_layers = pytest.importorskip("mlx_lm.models.switch_layers")
    w = _expert_stack(dtype)
    q0, s0, g0 = switch_layers._quantize_experts(w, group_size=16, bits=4, mode="nvfp4")
    q1, s1, g1 = quantize_fp_experts(w, block_elems=700, threads=2)
    assert g1.dtype == mx.float32 and g1.shape == g0.shape and mx.array_equal(g0, g1)
    assert q1.shape == q0.shape and s1.shape == s0.shape
    assert mx.array_equal(q0, q1) and mx.array_equal(s0, s1)
    d0 = [mx.dequantize(q0[e], s0[e], group_size=16, bits=4, mode="nvfp4", global_scale=g0[e]) for e in range(8)]
    d1 = [mx.dequantize(q1[e], s1[e], group_size=16, bits=4, mode="nvfp4", global_scale=g1[e]) for e in range(8)]
    assert all(mx.array_equal(a, b) for a, b in zip(d0, d1))


def test_experts_with_nan_and_inf():
    """An expert holding a NaN has g = NaN (mlx's max), one holding inf g = inf: mlx's bytes."""
    switch_layers = pytest.importorskip("mlx_lm.models.switch_layers")
    x = _values("normal", (3, 8, 32), "bfloat16", 16, seed=9)
    x[0, 2, 5], x[2, 7, 31] = np.nan, -np.inf
    w = mx.array(x).astype(mx.bfloat16)
    q0, s0, g0 = switch_layers._quantize_experts(w, group_size=16, bits=4, mode="nvfp4")
    q1, s1, g1 = quantize_fp_experts(w)
    assert mx.array_equal(g0, g1, equal_nan=True)
    assert mx.array_equal(q0, q1) and mx.array_equal(s0, s1)


def test_global_scale_rejects_what_mlx_rejects():
    w = mx.zeros((4, 64), mx.bfloat16)
    with pytest.raises(ValueError, match="nvfp4"):
        quantize_fp(w, "mxfp4", global_scale=1.0)
    with pytest.raises(ValueError, match="float32"):
        quantize_fp(w, "nvfp4", global_scale=mx.array(1.0, mx.bfloat16))
    with pytest.raises(ValueError, match="float32"):
        quantize_fp(w, "nvfp4", global_scale=mx.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="nvfp4"):
        quantize_fp_experts(w[None], "mxfp4")
    with pytest.raises(ValueError, match="experts"):
        quantize_fp_experts(w)
