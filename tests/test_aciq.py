"""quantviz.calib.aciq against b, sigma and ncnn's formula computed directly from the samples."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from quantviz.calib.aciq import threshold_aciq
from quantviz.calib.result import MethodConfig
from quantviz.errors import QuantvizError
from quantviz.histogram import Histogram
from quantviz.stats import TensorAccumulator, TensorStats

# Banner et al. 2019: optimal 8-bit clip for a Laplace(b) prior is 9.89 b, for a Gaussian 3.92 sigma.
PAPER_LAPLACE_8BIT = 9.89
PAPER_GAUSSIAN_8BIT = 3.92


def stats_of(x: np.ndarray, bins: int = 2048) -> TensorStats:
    acc = TensorAccumulator("t", bins)
    for part in np.array_split(np.asarray(x, dtype=np.float32), 5):
        acc.update(part)
    return acc.result()


def test_laplace_threshold_is_9_89_b_of_the_samples() -> None:
    x = np.random.default_rng(0).laplace(0.0, 0.7, 300_000).astype(np.float32).astype(np.float64)
    st = stats_of(x)
    r = threshold_aciq(st, MethodConfig())
    b = np.mean(np.abs(x - x.mean()))
    assert r.details["b"] == pytest.approx(b, rel=2e-3)
    assert r.details["mu"] == pytest.approx(x.mean(), abs=st.signed_hist.width)
    # symmetric T covers [mu - alpha, mu + alpha]: |mu| + 9.89 b (mu is ~0 here)
    assert r.threshold == pytest.approx(abs(x.mean()) + PAPER_LAPLACE_8BIT * b, rel=3e-3)
    assert r.threshold <= st.absmax
    assert r.scale == pytest.approx(r.threshold / 127, rel=1e-6)


def test_shifted_laplace_asymmetric_range_is_mu_plus_minus_alpha() -> None:
    x = np.random.default_rng(1).laplace(5.0, 0.4, 300_000).astype(np.float32).astype(np.float64)
    st = stats_of(x)
    r = threshold_aciq(st, MethodConfig(symmetric=False))
    mu, b = x.mean(), np.mean(np.abs(x - x.mean()))
    lo, hi = max(mu - PAPER_LAPLACE_8BIT * b, x.min()), min(mu + PAPER_LAPLACE_8BIT * b, x.max())
    assert hi == pytest.approx(mu + PAPER_LAPLACE_8BIT * b, rel=1e-3)  # not clamped: the tail reaches it
    # the uint8 range: [lo, hi] widened to hold 0, nudged by at most one step
    assert r.min <= 0.0 and r.min > -r.scale
    assert r.max == pytest.approx(hi, abs=r.scale + 1e-3 * hi)
    assert lo > 0  # the fitted range does not reach 0: uint8 widens it
    symmetric = threshold_aciq(st, MethodConfig())
    assert symmetric.threshold == pytest.approx(hi, rel=3e-3)


def test_gaussian_prior_is_3_92_sigma() -> None:
    x = np.random.default_rng(2).normal(0.0, 1.5, 300_000).astype(np.float32).astype(np.float64)
    st = stats_of(x)
    r = threshold_aciq(st, MethodConfig(aciq_prior="gaussian"))
    assert r.details["sigma"] == pytest.approx(np.std(x), rel=1e-3)
    assert r.threshold == pytest.approx(abs(x.mean()) + PAPER_GAUSSIAN_8BIT * np.std(x), rel=3e-3)


def test_ncnn_prior_follows_ncnn2table_formula() -> None:
    x = np.random.default_rng(3).normal(0.0, 1.0, 50_000).astype(np.float32).astype(np.float64)
    st = stats_of(x)
    r = threshold_aciq(st, MethodConfig(aciq_prior="ncnn"))
    # ncnn2table compute_aciq_gaussian_clip(absmax, N): alpha_8bit * (2 absmax * c) / sqrt(2 ln N)
    c = (0.5 * 0.35) * (1 + math.sqrt(math.pi * math.log(4)))
    expected = 3.92403714 * (np.abs(x).max() * 2 * c) / math.sqrt(2 * math.log(x.size))
    assert r.threshold == pytest.approx(min(expected, np.abs(x).max()), rel=1e-9)


def test_clip_beyond_the_data_is_clamped_to_the_observed_range() -> None:
    # uniform on [-1, 1]: b = 0.5, 9.89 b ~ 4.9 > abs-max 1
    x = np.random.default_rng(4).uniform(-1, 1, 10_000)
    st = stats_of(x)
    assert threshold_aciq(st, MethodConfig()).threshold == st.absmax
    ra = threshold_aciq(st, MethodConfig(symmetric=False))
    assert ra.min == pytest.approx(st.min, abs=ra.scale)
    assert ra.max == pytest.approx(st.max, abs=ra.scale)


def test_relu_output_clips_at_zero_below() -> None:
    x = np.maximum(np.random.default_rng(5).laplace(0, 1, 100_000), 0.0)
    st = stats_of(x)
    r = threshold_aciq(st, MethodConfig(symmetric=False))
    assert r.zero_point == 0 and r.min == 0.0
    mu = x.mean()
    b = np.mean(np.abs(x - mu))
    assert r.max == pytest.approx(min(mu + PAPER_LAPLACE_8BIT * b, x.max()), rel=5e-3)


def test_curve_is_the_fitted_prior_over_the_histogram() -> None:
    x = np.random.default_rng(6).laplace(0, 1, 100_000)
    st = stats_of(x)
    r = threshold_aciq(st, MethodConfig())
    c = r.curve
    assert c is not None and c.chosen == r.threshold
    # the fitted counts add up to about N (the Laplace mass within the observed range)
    assert c.y.sum() == pytest.approx(x.size, rel=0.01)


def test_bad_prior_and_missing_histogram() -> None:
    with pytest.raises(QuantvizError, match="ACIQ prior"):
        MethodConfig(aciq_prior="cauchy")
    st = stats_of(np.random.default_rng(7).normal(size=1000))
    empty = Histogram(np.zeros_like(st.signed_hist.counts), st.signed_hist.edges.copy())
    with pytest.raises(QuantvizError, match="histogram"):
        threshold_aciq(replace(st, signed_hist=empty), MethodConfig())
