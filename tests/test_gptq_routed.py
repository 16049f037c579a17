"""A routed expert's H (calibrate.RoutedMoments) formed bit for bit as numpy's products give it."""

from __future__ import annotations

import numpy as np
import pytest

from moequant.calibrate import MIN_ROUTED, Moments, _mixed
from moequant.gptq import gram_upper, mirror_upper, one_blas_thread


@pytest.mark.parametrize("tokens", [1, 2, 37, 300])
@pytest.mark.parametrize("n", [64, 200])
def test_gram_upper_is_numpys_product_bit_for_bit(tokens, n):
    x = np.random.default_rng(tokens * n).standard_normal((tokens, n)).astype(np.float32)
    with one_blas_thread():
        expected = x.T @ x
        out = gram_upper(x, np.full((n, n), np.nan, np.float32))
    upper = np.triu_indices(n)
    assert np.array_equal(out[upper].view(np.uint32), expected[upper].view(np.uint32))
    assert np.array_equal(mirror_upper(out).view(np.uint32), expected.view(np.uint32))


def _reference(everyone, inputs, routed, e):
    """RoutedMoments' H of expert e as calibrate formed it until b694f5c."""
    total = 0.0
    for xn, chosen in inputs:
        if chosen is not None and (picked := np.nonzero((chosen == e).any(-1))[0]).size:
            xr = xn[picked]
            total = total + xr.T @ xr
    return _mixed(everyone, total if routed[e] >= MIN_ROUTED else 0.0, int(routed[e]))


def test_routed_moments_are_the_old_sums_bit_for_bit():
    rng = np.random.default_rng(0)
    experts, n, top = 6, 96, 2
    inputs = []
    for tokens in (80, 1, 50):  # a call of one token: numpy multiplies it without BLAS
        x = rng.standard_normal((tokens, n)).astype(np.float32)
        chosen = np.stack([rng.choice(experts - 1, top, replace=False) for _ in range(tokens)]).astype(np.int32)
        inputs.append((x, chosen))
    inputs.append((rng.standard_normal((8, n)).astype(np.float32), None))  # a call with no routing
    routed = np.array([sum(int((c == e).any(-1).sum()) for _, c in inputs if c is not None) for e in range(experts)])
    routed[3] = MIN_ROUTED - 1  # too few: every token's mean alone
    assert routed[experts - 1] == 0 and (routed[:3] >= MIN_ROUTED).all()
    everyone = sum(x.T @ x for x, _ in inputs) / sum(len(x) for x, _ in inputs)
    with Moments() as store:
        store.put_routed(["gate", "up"], everyone, inputs, routed)
        h = store["gate"]
        with one_blas_thread():
            expected = np.stack([_reference(everyone.astype(np.float32), inputs, routed, e) for e in range(experts)])
            assert np.array_equal(h[:].view(np.uint32), expected.view(np.uint32))
            assert np.array_equal(h[2].view(np.uint32), expected[2].view(np.uint32))
            assert np.array_equal(h.part(range(1, 4))[1:3].view(np.uint32), expected[2:4].view(np.uint32))
