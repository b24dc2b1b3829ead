"""Error measures: hand-computed values, a slow per-sample loop, and streaming = whole-array results."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantviz.metrics import ErrorAccumulator, cosine, mse, sample_cosines, snr_db


def slow_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Per sample, in plain Python over the flattened values, then the mean."""
    total = 0.0
    for x, y in zip(a.reshape(a.shape[0], -1).tolist(), b.reshape(b.shape[0], -1).tolist(), strict=True):
        dot = sum(p * q for p, q in zip(x, y, strict=True))
        nx = math.sqrt(sum(p * p for p in x))
        ny = math.sqrt(sum(q * q for q in y))
        if nx == 0 and ny == 0:
            c = 1.0
        elif nx == 0 or ny == 0:
            c = 0.0
        else:
            c = dot / (nx * ny)
        total += c
    return total / int(a.shape[0])


def test_hand_values() -> None:
    a = np.array([[1.0, 1.0]])
    b = np.array([[1.0, 0.0]])
    assert cosine(a, b) == pytest.approx(1 / math.sqrt(2), abs=1e-15)
    assert snr_db(a, b) == pytest.approx(10 * math.log10(2.0 / 1.0), abs=1e-12)
    assert mse(a, b) == pytest.approx(0.5, abs=1e-15)
    # opposite vectors
    assert cosine(np.array([[1.0, -2.0]]), np.array([[-1.0, 2.0]])) == pytest.approx(-1.0, abs=1e-15)


def test_zero_cases() -> None:
    z = np.zeros((1, 4))
    x = np.array([[0.0, 1.0, 0.0, 0.0]])
    assert cosine(z, z) == 1.0  # both zero: identical
    assert cosine(z, x) == 0.0  # one zero
    assert cosine(x, z) == 0.0
    assert snr_db(x, x) == math.inf  # equal
    assert snr_db(z, z) == math.inf
    assert snr_db(z, x) == -math.inf  # no signal, some noise
    assert mse(x, x) == 0.0
    # per sample: one pair of zeros, one regular pair -> mean of 1 and the regular cosine
    a = np.array([[0.0, 0.0], [3.0, 4.0]])
    b = np.array([[0.0, 0.0], [4.0, 3.0]])
    assert np.allclose(sample_cosines(a, b), [1.0, 24 / 25])
    assert cosine(a, b) == pytest.approx((1 + 24 / 25) / 2)


def test_against_slow_loop() -> None:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((7, 3, 4, 5))
    b = a + 0.1 * rng.standard_normal(a.shape)
    b[2] = 0.0  # one sample quantized to zero
    a[4] = 0.0
    b[4] = 0.0
    assert cosine(a, b) == pytest.approx(slow_cosine(a, b), abs=1e-12)
    sig = float(sum(v * v for v in a.ravel().tolist()))
    noise = float(sum((p - q) ** 2 for p, q in zip(a.ravel().tolist(), b.ravel().tolist(), strict=True)))
    assert snr_db(a, b) == pytest.approx(10 * math.log10(sig / noise), rel=1e-12)
    assert mse(a, b) == pytest.approx(noise / a.size, rel=1e-12)


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        cosine(np.zeros((2, 3)), np.zeros((3, 2)))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 12),
    width=st.integers(1, 6),
    cuts=st.lists(st.integers(0, 12), max_size=4),
    seed=st.integers(0, 2**31 - 1),
)
def test_streaming_equals_whole(n: int, width: int, cuts: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, width)).astype(np.float32)
    b = (a + 0.05 * rng.standard_normal((n, width))).astype(np.float32)
    bounds = sorted({0, n, *[min(c, n) for c in cuts]})
    acc = ErrorAccumulator()
    parts: list[ErrorAccumulator] = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        acc.update(a[lo:hi], b[lo:hi])
        p = ErrorAccumulator()
        p.update(a[lo:hi], b[lo:hi])
        parts.append(p)
    merged = ErrorAccumulator()
    for p in reversed(parts):  # merge order does not matter
        merged.merge(p)
    for r in (acc.result(), merged.result()):
        assert r.samples == n
        assert r.cosine == pytest.approx(cosine(a, b), abs=1e-12)
        assert r.snr_db == pytest.approx(snr_db(a, b), rel=1e-9)
        assert r.mse == pytest.approx(mse(a, b), rel=1e-9)


def test_empty_accumulator_is_nan() -> None:
    r = ErrorAccumulator().result()
    assert r.samples == 0 and math.isnan(r.cosine) and math.isnan(r.snr_db) and math.isnan(r.mse)


@pytest.mark.parametrize("shape", [(1, 125_000), (8, 3000), (3, 1), (0, 5), (2, 0)])
def test_compiled_sums_equal_the_einsum_path(shape: tuple[int, int]) -> None:
    """kernels.pair_sums (one compiled pass, float64 products of float32 values) gives metrics' four
    per-sample sums of the einsum path to rounding, NaN and Inf propagated the same way."""
    from quantviz import kernels
    from quantviz.metrics import _sums_numpy

    assert kernels.available()  # the fast path is the one used: test it
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * 30).astype(np.float32)
    y = (x + rng.standard_normal(shape).astype(np.float32) * 0.05).astype(np.float32)
    if x.size > 10:
        x[0, 3] = 0.0
        y[-1, 5] = np.float32(3e38)  # beyond float32 when squared: fine in float64
    got = kernels.pair_sums(x, y)
    ref = np.stack(_sums_numpy(x, y), axis=1) if shape[0] else np.empty((0, 4))
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=0)
    if x.size > 10:
        x[-1, 2], y[0, 7] = np.nan, np.inf
        got = kernels.pair_sums(x, y)
        ref = np.stack(_sums_numpy(x, y), axis=1)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(ref))
