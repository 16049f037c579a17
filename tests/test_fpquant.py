"""fpquant.quantize_fp gives mx.quantize's bytes in the fp modes, whatever the values."""

import mlx.core as mx
import numpy as np
import pytest

from moequant.fpquant import MODES, quantize_chunked, quantize_fp

DTYPES = {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}
TINY = {"bfloat16": 1e-39, "float16": 3e-6, "float32": 1e-39}  # subnormal range of each dtype


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
    assert q1.dtype == q0.dtype == mx.uint32 and s1.dtype == s0.dtype == mx.uint8
    assert q1.shape == q0.shape and s1.shape == s0.shape
    if not (mx.array_equal(q0, q1) and mx.array_equal(s0, s1)):
        qa, qb = np.array(q0).view(np.uint8), np.array(q1).view(np.uint8)
        sa, sb = np.array(s0), np.array(s1)
        raise AssertionError(f"{mode} {w.dtype} {tuple(w.shape)}: {int((qa != qb).sum())} weight bytes and "
                             f"{int((sa != sb).sum())} scales differ; first at {np.argwhere(qa != qb)[:3].tolist()}")
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
