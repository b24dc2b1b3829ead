"""quantviz.calib.percentile against numpy.percentile of the raw samples and a hand-computed histogram."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from quantviz.calib.percentile import histogram_quantile, threshold_percentile
from quantviz.calib.result import MethodConfig
from quantviz.errors import QuantvizError
from quantviz.histogram import Histogram
from quantviz.stats import TensorAccumulator, TensorStats


def stats_of(x: np.ndarray, bins: int = 2048, batches: int = 4) -> TensorStats:
    acc = TensorAccumulator("t", bins)
    for part in np.array_split(np.asarray(x, dtype=np.float32), batches):
        acc.update(part)
    return acc.result()


def _data(kind: str, n: int = 200_000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return rng.normal(0.3, 2.0, n)
    if kind == "laplace":
        return rng.laplace(0.0, 0.5, n)
    if kind == "relu":  # half exact zeros
        return np.maximum(rng.normal(size=n), 0.0)
    return rng.uniform(-3.0, 1.0, n)


@pytest.mark.parametrize("kind", ["normal", "laplace", "relu", "uniform"])
@pytest.mark.parametrize("p", [50.0, 99.0, 99.9, 99.99])
def test_symmetric_matches_numpy_percentile_of_abs(kind: str, p: float) -> None:
    x = _data(kind).astype(np.float32)
    st = stats_of(x)
    r = threshold_percentile(st, MethodConfig(percentile=p))
    expected = float(np.percentile(np.abs(x.astype(np.float64)), p))
    assert abs(r.threshold - expected) <= st.abs_hist.width
    assert r.symmetric and r.zero_point == 0 and r.min == -r.threshold


@pytest.mark.parametrize("kind", ["normal", "laplace", "relu", "uniform"])
@pytest.mark.parametrize("p", [99.0, 99.99])
def test_asymmetric_cuts_half_the_rest_from_each_tail(kind: str, p: float) -> None:
    x = _data(kind, seed=1).astype(np.float32)
    st = stats_of(x)
    r = threshold_percentile(st, MethodConfig(percentile=p, symmetric=False))
    tail = (100 - p) / 2
    lo, hi = np.percentile(x.astype(np.float64), [tail, 100 - tail])
    w = st.signed_hist.width
    assert abs(r.details["lower"] - lo) <= w
    assert abs(r.details["upper"] - hi) <= w
    # the uint8 range holds the cut range (widened to 0, nudged by at most one step)
    assert r.min <= min(r.details["lower"], 0.0) + r.scale
    assert r.max >= max(r.details["upper"], 0.0) - r.scale


def test_hand_computed_interpolation_inside_a_bin() -> None:
    # bins=4 over [0, 2): width 0.5, one value in each bin
    st = stats_of(np.array([0.25, 0.75, 1.25, 1.75]), bins=4, batches=1)
    assert st.abs_hist.width == 0.5
    # p = 62.5: 2.5 of 4 values lie below T; 2 lie below 1.0 and the third bin holds one value over
    # [1.0, 1.5): halfway through it, T = 1.25
    assert threshold_percentile(st, MethodConfig(percentile=62.5)).threshold == pytest.approx(1.25)
    # p = 50: exactly at the edge 1.0
    assert threshold_percentile(st, MethodConfig(percentile=50)).threshold == pytest.approx(1.0)
    # p = 10: 0.4 of the way through the first bin is 0.2, but every |x| is >= min = 0.25: clamped
    assert threshold_percentile(st, MethodConfig(percentile=10)).threshold == pytest.approx(0.25)


def test_histogram_quantile_by_hand() -> None:
    h = Histogram(np.array([2, 0, 6, 2], dtype=np.int64), np.array([0.0, 1.0, 2.0, 3.0, 4.0]))
    assert histogram_quantile(h, 0.2) == pytest.approx(1.0)  # 2 of 10 at the first bin's top
    assert histogram_quantile(h, 0.5) == pytest.approx(2.5)  # 3 more of the 6 in [2, 3)
    assert histogram_quantile(h, 0.9) == pytest.approx(3.5)
    assert histogram_quantile(h, 1.0) == pytest.approx(4.0)
    assert histogram_quantile(h, 0.0) == pytest.approx(0.0)


def test_p100_is_minmax() -> None:
    x = _data("normal", 10_000)
    st = stats_of(x)
    r = threshold_percentile(st, MethodConfig(percentile=100))
    assert r.threshold == st.absmax
    ra = threshold_percentile(st, MethodConfig(percentile=100, symmetric=False))
    assert ra.details["lower"] == st.min and ra.details["upper"] == st.max


def test_curve_is_the_cdf_with_the_chosen_point() -> None:
    x = _data("laplace", 50_000)
    st = stats_of(x)
    r = threshold_percentile(st, MethodConfig(percentile=99.9))
    c = r.curve
    assert c is not None and c.chosen == r.threshold
    assert np.all(np.diff(c.y) >= 0) and c.y[0] == 0 and c.y[-1] == pytest.approx(100.0)
    # the CDF at the chosen threshold is p (interpolating the curve itself)
    assert np.interp(c.chosen, c.x, c.y) == pytest.approx(99.9, abs=1e-6)
    # the fraction of samples below T is p within one bin's mass
    frac = 100 * np.mean(np.abs(x.astype(np.float32)) <= c.chosen)
    assert abs(frac - 99.9) < 0.05


@pytest.mark.parametrize("p", [0.0, -1.0, 100.5, math.nan])
def test_p_outside_range_is_rejected(p: float) -> None:
    with pytest.raises(QuantvizError, match="percentile"):
        MethodConfig(percentile=p)


def test_statistics_without_histogram_are_rejected() -> None:
    st = stats_of(_data("normal", 1000))
    empty = Histogram(np.zeros_like(st.abs_hist.counts), st.abs_hist.edges.copy())
    with pytest.raises(QuantvizError, match="histogram"):
        threshold_percentile(replace(st, abs_hist=empty), MethodConfig())
    empty_signed = Histogram(np.zeros_like(st.signed_hist.counts), st.signed_hist.edges.copy())
    with pytest.raises(QuantvizError, match="histogram"):
        threshold_percentile(replace(st, signed_hist=empty_signed), MethodConfig(symmetric=False))
