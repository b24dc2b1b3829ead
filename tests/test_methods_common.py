"""Properties every registered calibration method must have (quantviz.calib.METHODS)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from quantviz.calib import METHODS, MethodConfig
from quantviz.errors import QuantvizError
from quantviz.histogram import Histogram
from quantviz.stats import TensorAccumulator, TensorStats

ALL = sorted(METHODS)
# methods that read a histogram (minmax and ema read only the running ranges)
HISTOGRAM_METHODS = ["percentile", "mse", "aciq"]


def stats_of(x: np.ndarray, bins: int = 2048) -> TensorStats:
    acc = TensorAccumulator("t", bins)
    for part in np.array_split(np.asarray(x, dtype=np.float32), 4):
        acc.update(part)
    return acc.result()


DATA = {
    "normal": np.random.default_rng(0).normal(0.3, 1.0, 20_000),
    "relu": np.maximum(np.random.default_rng(1).laplace(0.0, 1.0, 20_000), 0.0),
    "negative": -np.abs(np.random.default_rng(2).normal(size=20_000)) - 0.5,
}


def _is_power_of_two(v: float) -> bool:
    mantissa, _ = math.frexp(v)
    return mantissa == 0.5


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("kind", sorted(DATA))
def test_symmetric_threshold_and_scale(name: str, kind: str) -> None:
    st = stats_of(DATA[kind])
    r = METHODS[name](st, MethodConfig())
    assert r.symmetric and r.zero_point == 0
    assert 0 < r.threshold <= st.absmax * (1 + 1e-12)
    assert r.min == -r.threshold and r.max == r.threshold
    # scale = T / 127 as a float32 value
    assert r.scale == float(np.float32(r.threshold) / np.float32(127))
    assert float(np.float32(r.scale)) == r.scale


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("kind", sorted(DATA))
def test_asymmetric_zero_point_and_exact_zero(name: str, kind: str) -> None:
    st = stats_of(DATA[kind])
    r = METHODS[name](st, MethodConfig(symmetric=False))
    assert not r.symmetric
    assert isinstance(r.zero_point, int) and 0 <= r.zero_point <= 255
    assert r.min <= 0.0 <= r.max
    # the grid is s * (q - zp): min and max sit on it, and q = zp dequantizes to exactly 0.0
    assert r.min == -r.zero_point * r.scale and r.max == (255 - r.zero_point) * r.scale
    assert (r.zero_point - r.zero_point) * r.scale == 0.0
    # the range stays inside the observed one, widened to 0 and nudged by at most one step
    assert r.min >= min(st.min, 0.0) - r.scale and r.max <= max(st.max, 0.0) + r.scale


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("symmetric", [True, False])
def test_power_of_two_scale_is_a_power_of_two_not_below_the_linear_one(name: str, symmetric: bool) -> None:
    st = stats_of(DATA["normal"])
    linear = METHODS[name](st, MethodConfig(symmetric=symmetric))
    p2 = METHODS[name](st, MethodConfig(symmetric=symmetric, power_of_two=True))
    assert _is_power_of_two(p2.scale)
    assert p2.scale >= linear.scale
    assert p2.scale < 2 * linear.scale


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("value", [2.5, -0.75])
def test_constant_tensor_keeps_its_value(name: str, value: float) -> None:
    st = stats_of(np.full(1000, value))
    assert st.constant
    r = METHODS[name](st, MethodConfig())
    assert r.threshold == pytest.approx(abs(value), rel=1e-6)
    # quantize-dequantize of the constant gives it back (to float32 rounding of the scale)
    q = np.clip(np.rint(value / r.scale), -127, 127)
    assert q * r.scale == pytest.approx(value, rel=1e-6)
    ra = METHODS[name](st, MethodConfig(symmetric=False))
    assert np.isfinite(ra.scale) and ra.scale > 0 and 0 <= ra.zero_point <= 255
    qa = np.clip(np.rint(value / ra.scale) + ra.zero_point, 0, 255)
    assert (qa - ra.zero_point) * ra.scale == pytest.approx(value, rel=1e-6)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("symmetric", [True, False])
def test_all_zero_tensor_gives_a_defined_result(name: str, symmetric: bool) -> None:
    st = stats_of(np.zeros(500))
    r = METHODS[name](st, MethodConfig(symmetric=symmetric))
    assert r.threshold == 0.0 and r.min == 0.0 and r.max == 0.0
    assert r.scale == 1.0 and r.zero_point == 0


@pytest.mark.parametrize("name", ALL)
def test_empty_or_nan_only_tensor_is_rejected(name: str) -> None:
    empty = TensorAccumulator("empty").result()
    with pytest.raises(QuantvizError, match="empty"):
        METHODS[name](empty, MethodConfig())
    acc = TensorAccumulator("nan")
    acc.update(np.array([np.nan, np.inf, -np.inf], dtype=np.float32))
    with pytest.raises(QuantvizError, match="NaN"):
        METHODS[name](acc.result(), MethodConfig())


@pytest.mark.parametrize("name", HISTOGRAM_METHODS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_statistics_without_histograms_are_rejected(name: str, symmetric: bool) -> None:
    st = stats_of(DATA["normal"])
    no_hist = replace(
        st,
        abs_hist=Histogram(np.zeros_like(st.abs_hist.counts), st.abs_hist.edges.copy()),
        signed_hist=Histogram(np.zeros_like(st.signed_hist.counts), st.signed_hist.edges.copy()),
    )
    with pytest.raises(QuantvizError, match="histogram"):
        METHODS[name](no_hist, MethodConfig(symmetric=symmetric))


@pytest.mark.parametrize("name", ALL)
def test_statistics_are_not_modified(name: str) -> None:
    st = stats_of(DATA["relu"])
    before = (st.abs_hist.counts.copy(), st.signed_hist.counts.copy(), st.abs_hist.edges.copy())
    for symmetric in (True, False):
        METHODS[name](st, MethodConfig(symmetric=symmetric))
    assert np.array_equal(st.abs_hist.counts, before[0])
    assert np.array_equal(st.signed_hist.counts, before[1])
    assert np.array_equal(st.abs_hist.edges, before[2])


@pytest.mark.parametrize("name", ALL)
def test_curve_when_present_marks_the_chosen_point(name: str) -> None:
    st = stats_of(DATA["normal"])
    r = METHODS[name](st, MethodConfig())
    if r.curve is not None:
        assert r.curve.x.shape == r.curve.y.shape and r.curve.x.size >= 1
        assert np.all(np.isfinite(r.curve.x))
        assert r.curve.x.min() <= r.curve.chosen <= r.curve.x.max()
