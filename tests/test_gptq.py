"""GPTQ into MLX's affine format: mx.quantize's bytes and layout, lower output error than plain rounding."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from moequant.errors import LayoutError, PlanError
from moequant.gptq import _cholesky, _feedback, _gptq, _grid, _inverse_cholesky, _inverse_lower, _lapack, _pack, \
    _rounded, calibration_error, dequantized_affine, Parts, quantize_gptq, quantize_gptq_together
from moequant.formats import Quant

BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)


def _weights(seed: int, shape=(16, 256), dtype=mx.bfloat16) -> mx.array:
    """Normal weights with a few large outliers, one all-zero row and one tiny-magnitude row."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32) * 0.02
    outliers = rng.uniform(size=shape) < 0.005
    w = np.where(outliers, rng.standard_normal(shape).astype(np.float32) * 0.5, w)
    w[..., 0, :] = 0
    w[..., 1, :] *= 1e-4
    return mx.array(w).astype(dtype)


def _second_moment(seed: int, n: int, tokens: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Correlated inputs X = Z·A [tokens, n] and H = XᵀX / tokens."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n)).astype(np.float32) / np.sqrt(n) + 0.3 * np.eye(n, dtype=np.float32)
    x = rng.standard_normal((tokens, n)).astype(np.float32) @ a
    return x, x.T @ x / tokens


def _codes(packed: mx.array, bits: int, n: int) -> np.ndarray:
    """Unpacked codes [..., n]: each row's bytes as one little-endian bitstream (independent of _pack)."""
    stream = np.unpackbits(np.array(packed).view(np.uint8), axis=-1, bitorder="little")
    digits = stream.reshape(*packed.shape[:-1], n, bits).astype(np.int64)
    return (digits << np.arange(bits)).sum(-1)


def _output_error(w: mx.array, out, x: np.ndarray, q: Quant) -> np.ndarray:
    """‖(W − Ŵ) Xᵀ‖² per row, in float64."""
    restored = mx.dequantize(*out, q.group_size, q.bits, dtype=mx.float32)
    diff = np.array(w.astype(mx.float32)).astype(np.float64) - np.array(restored)
    return ((diff @ x.T.astype(np.float64)) ** 2).sum(-1)


def _bits(a: mx.array) -> np.ndarray:
    return np.array(a.view(mx.uint16) if a.dtype in (mx.bfloat16, mx.float16) else a)


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16, mx.float16], ids=str)
@pytest.mark.parametrize("bits", BITS)
def test_grid_is_mlx_affine_formula(bits, dtype):
    w = _weights(bits, (16, 512), dtype)
    for group_size in GROUP_SIZES:
        _, scales, biases = mx.quantize(w, group_size, bits)
        groups = np.array(w.astype(mx.float32)).reshape(16, -1, group_size)
        scale, bias = (_rounded(v, dtype) for v in _grid(groups, bits, axis=2))
        assert (scale == np.array(scales.astype(mx.float32))).all()
        assert (bias == np.array(biases.astype(mx.float32))).all()


@pytest.mark.parametrize("bits", BITS)
def test_dequantized_affine_is_mlx_bit_for_bit(bits):
    w = _weights(bits, (3, 16, 512), mx.float32)
    for group_size in GROUP_SIZES:
        expected = np.array(mx.dequantize(*mx.quantize(w, group_size, bits), group_size, bits))
        given = np.array(w)
        assert np.array_equal(dequantized_affine(given, bits, group_size), expected)
        assert np.array_equal(given, np.array(w))  # left as it was
        out = dequantized_affine(given, bits, group_size, overwrite=True)  # into `given` itself
        assert np.array_equal(out, expected) and np.shares_memory(out, given)


@pytest.mark.parametrize("group_size", GROUP_SIZES)
@pytest.mark.parametrize("bits", BITS)
def test_identity_h_in_float32_is_mx_quantize_bit_for_bit(bits, group_size):
    # H = I: nothing to propagate, GPTQ is round-to-nearest on mlx's grid; in float32 the stored
    # grid is mlx's unrounded one, so every byte (packing included) must match.
    w = _weights(bits, (16, 256), mx.float32)
    ours = quantize_gptq(w, np.eye(256, dtype=np.float32), Quant.make("affine", bits, group_size))
    # force GPTQ's own rows (the plain rows would hide a packing bug): run the core directly
    codes, scales, biases, _ = _gptq(np.array(w)[None], _feedback(np.eye(256, dtype=np.float32)[None], 0.01), bits,
                                     group_size, mx.float32)
    plain = mx.quantize(w, group_size, bits)
    assert (_pack(codes[0], bits) == np.array(plain[0])).all()
    assert (scales[0] == np.array(plain[1])).all() and (biases[0] == np.array(plain[2])).all()
    for a, b in zip(ours, plain):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert (np.array(a) == np.array(b)).all()


@pytest.mark.parametrize("bits", BITS)
def test_identity_h_in_bfloat16_keeps_mx_grid_and_rounds_to_its_stored_values(bits):
    # bf16: same scales and biases as mx.quantize, but GPTQ rounds on the stored (bf16) grid where
    # mlx rounds on its float32 one, so a few codes differ, and a row changes only if it gets closer.
    w = _weights(bits, (64, 256))
    q = Quant.make("affine", bits, 64)
    ours = quantize_gptq(w, np.eye(256, dtype=np.float32), q)
    plain = mx.quantize(w, q.group_size, bits)
    for a, b in zip(ours, plain):
        assert a.shape == b.shape and a.dtype == b.dtype
    assert (_bits(ours[1]) == _bits(plain[1])).all() and (_bits(ours[2]) == _bits(plain[2])).all()
    changed = _codes(ours[0], bits, 256) != _codes(plain[0], bits, 256)  # measured: 0.1% (2 bits) to 19% (8)
    w32 = np.array(w.astype(mx.float32)).astype(np.float64)
    ours_err = ((w32 - np.array(mx.dequantize(*ours, q.group_size, bits, dtype=mx.float32))) ** 2).sum(-1)
    plain_err = ((w32 - np.array(mx.dequantize(*plain, q.group_size, bits, dtype=mx.float32))) ** 2).sum(-1)
    assert (ours_err <= plain_err * (1 + 1e-5)).all()
    assert (ours_err[changed.any(-1)] < plain_err[changed.any(-1)]).all()


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16], ids=str)  # float32: bit for bit above
@pytest.mark.parametrize("group_size", GROUP_SIZES)
@pytest.mark.parametrize("bits", BITS)
def test_output_is_mx_quantize_format(bits, group_size, dtype):
    w = _weights(bits + group_size, (16, 256), dtype)
    _, h = _second_moment(bits, 256)
    q = Quant.make("affine", bits, group_size)
    ours = quantize_gptq(w, h, q)
    plain = mx.quantize(w, group_size, bits)
    for a, b in zip(ours, plain):
        assert a.shape == b.shape and a.dtype == b.dtype
    codes = _codes(ours[0], bits, 256).reshape(16, -1, group_size)
    assert codes.max() < 2**bits
    scales, biases = (np.array(a.astype(mx.float32))[..., None] for a in ours[1:])
    expected = _rounded(_rounded((codes * scales).astype(np.float32), dtype) + biases, dtype)
    restored = np.array(mx.dequantize(*ours, group_size, bits, dtype=mx.float32))
    assert (restored == expected.reshape(16, 256)).all()


@pytest.mark.parametrize("bits", (2, 3, 4, 8))
def test_gptq_lowers_output_error_on_correlated_inputs(bits):
    w = _weights(bits, (64, 512))
    x, h = _second_moment(bits, 512)
    q = Quant.make("affine", bits, 64)
    gptq_err = _output_error(w, quantize_gptq(w, h, q), x, q)
    plain_err = _output_error(w, mx.quantize(w, 64, bits), x, q)
    assert (gptq_err <= plain_err * (1 + 1e-4)).all()  # every row: kept only if lower (float32 H)
    # measured ratios: 0.73 (2 bits), 0.58 (3), 0.53 (4), 0.29 (8)
    assert gptq_err.sum() < 0.8 * plain_err.sum()


@pytest.mark.parametrize("n", (96, 600))
def test_the_factor_inverse_is_the_inverse_of_the_cholesky_factor(n):
    """_inverse_cholesky: L⁻¹ of H = L Lᵀ, through LAPACK where numpy's OpenBLAS has it, else (and
    as its check) the blocked numpy factorization: the same lower triangle to float32 rounding."""
    _, h = _second_moment(3, n)
    h = np.stack([h + 0.01 * np.diag(h).mean() * np.eye(n), h + np.eye(n)]).astype(np.float32)  # damped, as GPTQ's
    ours = np.tril(_inverse_cholesky(h.copy()))
    fallback = np.tril(_inverse_lower(_cholesky(h.copy(), block=64), block=16))
    exact = np.linalg.inv(np.linalg.cholesky(h.astype(np.float64)))
    for got in (ours, fallback):
        assert np.abs(got - exact).max() < 1e-4 * np.abs(exact).max()
    assert _lapack("spotrf") is not None or np.array_equal(ours, fallback)


def test_a_matrix_not_positive_definite_is_refused_by_the_factorization():
    """_feedback damps H 10x more each time the factorization refuses it: it must refuse."""
    h = np.stack([np.eye(8, dtype=np.float32), np.diag(np.r_[np.ones(7), -1.0]).astype(np.float32)])
    with pytest.raises(np.linalg.LinAlgError):
        _inverse_cholesky(h)


def test_gptq_matches_textbook_gptq():
    # Frantar et al.'s algorithm as written: Cholesky of H⁻¹, one column at a time, float64
    w = _weights(7, (8, 128), mx.float32)
    _, h = _second_moment(7, 128)
    bits, group_size = 3, 32
    wf = np.array(w).astype(np.float64)
    hd = h.astype(np.float64) + 0.01 * np.mean(np.diag(h)) * np.eye(128)
    u = np.linalg.cholesky(np.linalg.inv(hd)).T  # upper, H⁻¹ = UᵀU
    codes = np.zeros(wf.shape, np.int64)
    for i in range(128):
        if i % group_size == 0:
            scale, bias = (v.astype(np.float64) for v in _grid(wf[:, i:i + group_size].astype(np.float32), bits, 1))
        codes[:, i] = np.clip(np.rint((wf[:, i] - bias) / scale), 0, 2**bits - 1)
        err = (wf[:, i] - (codes[:, i] * scale + bias)) / u[i, i]
        wf[:, i + 1:] -= np.outer(err, u[i, i + 1:])
    ours, *_ = _gptq(np.array(w)[None], _feedback(h[None], 0.01), bits, group_size, mx.float32)
    assert (ours[0] == codes).mean() > 0.995  # float32 vs float64: a rare tie may round the other way


@pytest.mark.parametrize("shared", [False, True], ids=["per-expert H", "shared H"])
def test_expert_stack_is_each_expert_quantized_alone(shared):
    w = _weights(3, (4, 32, 256))
    w[0] = w[0] * 10  # expert 0 unusual
    hs = np.stack([_second_moment(e, 256)[1] * (e + 1) for e in range(4)])
    hs[2] = 0  # an expert the calibration never routed to
    h = hs[1] if shared else hs
    q = Quant.make("affine", 4, 64)
    ours = quantize_gptq(w, h, q)
    plain = mx.quantize(w, 64, 4)
    for a, b in zip(ours, plain):
        assert a.shape == b.shape and a.dtype == b.dtype
    for e in range(4):
        alone = quantize_gptq(w[e], h if shared else hs[e], q)
        for a, b in zip(ours, alone):
            assert (_bits(a[e]) == _bits(b)).all()
    err = calibration_error(w, *ours, h, q)
    base = calibration_error(w, *plain, h, q)
    assert err.shape == (4, 32)
    assert (err <= base * (1 + 1e-4)).all()
    live = [0, 1, 3] if not shared else [0, 1, 2, 3]
    assert err[live].sum() < 0.8 * base[live].sum()


def test_a_stack_given_as_its_parts_is_rounded_the_same_and_let_go_of():
    """gptq.Parts (a worker's share of an expert stack, as its experts' weights): the same bytes as
    the stack, gate and up together, and every part let go of once rounded."""
    gate, up = _weights(3, (4, 32, 256)), _weights(4, (4, 32, 256))
    hs = np.stack([_second_moment(e, 256)[1] * (e + 1) for e in range(4)])
    q = Quant.make("affine", 4, 64)
    stacked = quantize_gptq_together([(gate, q), (up, q)], hs)
    parts = [Parts([w[e] for e in range(4)]) for w in (gate, up)]
    given = quantize_gptq_together([(p, q) for p in parts], hs)
    for ours, theirs in zip(given, stacked):
        for a, b in zip(ours, theirs):
            assert a.shape == b.shape and a.dtype == b.dtype and (_bits(a) == _bits(b)).all()
    assert all(x is None for p in parts for x in p.parts)


def test_dead_inputs_are_rounded_plainly_and_never_nan():
    w = _weights(5, (16, 256))
    x, _ = _second_moment(5, 256)
    x[:, 64:96] = 0  # a whole group of inputs never active
    x[:, 7] = 0
    h = x.T @ x / len(x)
    q = Quant.make("affine", 4, 64)
    ours = quantize_gptq(w, h, q)
    assert all(np.isfinite(np.array(a.astype(mx.float32))).all() for a in ours[1:])
    gptq_err = _output_error(w, ours, x, q)
    plain_err = _output_error(w, mx.quantize(w, 64, 4), x, q)
    assert (gptq_err <= plain_err * (1 + 1e-4)).all() and gptq_err.sum() < 0.8 * plain_err.sum()


def test_rejects_other_modes_and_mismatched_h():
    w = _weights(0, (16, 256))
    with pytest.raises(PlanError, match=r"gptq: mode mxfp4; expected affine"):
        quantize_gptq(w, np.eye(256), Quant.make("mxfp4"))
    with pytest.raises(LayoutError, match=r"H \(128, 128\) for weight \(16, 256\); expected \(256, 256\)"):
        quantize_gptq(w, np.eye(128), Quant.make("affine", 4, 64))
    with pytest.raises(LayoutError, match=r"expected \(256, 256\) or \(3, 256, 256\)"):
        quantize_gptq(mx.stack([w] * 3), np.stack([np.eye(256)] * 2), Quant.make("affine", 4, 64))


def test_weights_with_the_same_inputs_rounded_together_are_each_rounded_alone():
    # an expert stack's gate and up: one H per expert, the feedback formed once for both
    gate, up = _weights(11, (4, 32, 256)), _weights(12, (4, 48, 256), mx.float16)
    hs = np.stack([_second_moment(e, 256)[1] for e in range(4)])
    quants = Quant.make("affine", 4, 64), Quant.make("affine", 3, 32)
    together = quantize_gptq_together([(gate, quants[0]), (up, quants[1])], hs)
    for w, q, out in zip((gate, up), quants, together):
        for a, b in zip(out, quantize_gptq(w, hs, q)):
            assert a.shape == b.shape and a.dtype == b.dtype and (_bits(a) == _bits(b)).all()

