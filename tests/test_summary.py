"""Summaries the pages show: clipped fractions against numpy on the raw data."""

from __future__ import annotations

import numpy as np
import pytest

from quantviz.calib import MethodConfig
from quantviz.stats import TensorAccumulator, TensorStats
from quantviz.summary import all_thresholds, clipped_fraction, curve_value_at, method_table


def _stats(x: np.ndarray, bins: int = 2048) -> TensorStats:
    acc = TensorAccumulator("t", bins)
    for chunk in np.array_split(x, 7):
        acc.update(chunk)
    return acc.result()


@pytest.mark.parametrize("frac", [0.5, 0.8, 0.95])
def test_clipped_fraction_matches_numpy_within_a_bin(frac: float) -> None:
    rng = np.random.default_rng(3)
    x = rng.laplace(0.2, 1.0, 200_000).astype(np.float32)
    t = _stats(x)
    lo, hi = float(x.min()) * frac, float(x.max()) * frac
    expected = np.mean((x < lo) | (x > hi))
    width = t.signed_hist.width
    # values inside one bin of each cut may go either way
    slack = (np.sum(np.abs(x - lo) < width) + np.sum(np.abs(x - hi) < width)) / x.size
    assert abs(clipped_fraction(t, lo, hi) - expected) <= slack + 1e-12


def test_clip_at_observed_range_cuts_nothing() -> None:
    x = np.random.default_rng(0).standard_normal(10_000).astype(np.float32)
    t = _stats(x)
    assert clipped_fraction(t, t.min, t.max) == 0.0
    assert clipped_fraction(t, -t.absmax, t.absmax) == 0.0


def test_method_table_has_a_row_per_method_with_clips_consistent() -> None:
    x = np.random.default_rng(1).standard_normal(50_000).astype(np.float32)
    t = _stats(x)
    results = all_thresholds(t, MethodConfig())
    df = method_table(t, results)
    assert len(df) == len(results)
    minmax = df[df["method"] == "MinMax"].iloc[0]
    assert minmax["clipped %"] == 0.0
    assert minmax["threshold"] == pytest.approx(np.abs(x).max())


def test_curve_value_at_interpolates_and_clamps() -> None:
    from quantviz.calib import Curve

    c = Curve(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, np.inf]), "x", "y", 1.0)
    assert curve_value_at(c, 1.5) == pytest.approx(15.0)
    assert curve_value_at(c, 0.0) == 10.0
    assert curve_value_at(c, 2.9) == np.inf
    assert curve_value_at(c, 2.1) == 20.0


@pytest.mark.parametrize("symmetric", [True, False])
def test_expected_mse_matches_fake_quantizing_the_raw_values(symmetric: bool) -> None:
    from quantviz.calib import METHODS
    from quantviz.fakequant import fake_quantize
    from quantviz.summary import expected_mse

    rng = np.random.default_rng(7)
    x = np.concatenate([rng.laplace(0.3, 0.5, 100_000), np.zeros(5_000)]).astype(np.float32)
    t = _stats(x)
    config = MethodConfig(symmetric=symmetric)
    for name in ("minmax", "kl", "percentile"):
        th = METHODS[name](t, config)
        if symmetric:
            q = fake_quantize(x, th.scale, 0, -127, 127)
        else:
            q = fake_quantize(x, th.scale, th.zero_point, 0, 255)
        brute = float(np.mean((x.astype(np.float64) - q) ** 2))
        assert expected_mse(t, th) == pytest.approx(brute, rel=0.05), name
