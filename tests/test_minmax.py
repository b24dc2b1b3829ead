"""quantviz.calib.minmax: thresholds, scales and zero points against numpy and hand computations."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from quantviz.calib import METHODS, MethodConfig
from quantviz.calib.minmax import threshold_ema, threshold_minmax
from quantviz.errors import QuantvizError
from quantviz.stats import TensorAccumulator, TensorStats

SYM = MethodConfig()
ASYM = MethodConfig(symmetric=False)


def _stats(*batches: np.ndarray, c: float = 0.01) -> TensorStats:
    acc = TensorAccumulator("t", bins=64, ema_constant=c)
    for b in batches:
        acc.update(np.asarray(b, dtype=np.float32))
    return acc.result()


def _hand_asymmetric(lo: float, hi: float) -> tuple[float, int, float, float]:
    """uint8: the range widened to hold 0, s = float32((hi - lo) / 255), zp = round(-lo / s)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    s = float(np.float32((hi - lo) / 255.0))
    zp = int(round(-lo / s))
    zp = min(max(zp, 0), 255)
    return s, zp, -zp * s, (255 - zp) * s


@pytest.mark.parametrize("seed", range(4))
def test_symmetric_is_absmax(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((3, 50)) * 4 + rng.uniform(-3, 3)).astype(np.float32)
    r = METHODS["minmax"](_stats(*x), SYM)
    t = float(np.abs(x).max())
    assert r.threshold == t and (r.min, r.max) == (-t, t)
    assert r.scale == float(np.float32(t) / np.float32(127))
    assert r.zero_point == 0 and r.symmetric and r.method == "minmax"
    # the extreme value maps exactly onto +-127
    assert round(t / r.scale) == 127


@pytest.mark.parametrize(("lo", "hi"), [(-1.3, 4.7), (0.25, 9.0), (-7.0, -0.5), (-2.0, 2.0), (-1e-3, 300.0)])
def test_asymmetric_by_hand(lo: float, hi: float) -> None:
    x = np.linspace(lo, hi, 101, dtype=np.float32)
    r = threshold_minmax(_stats(x), ASYM)
    s, zp, nlo, nhi = _hand_asymmetric(float(x.min()), float(x.max()))
    assert (r.scale, r.zero_point) == (s, zp)
    assert (r.min, r.max) == pytest.approx((nlo, nhi), rel=1e-12, abs=1e-12)
    assert not r.symmetric and 0 <= r.zero_point <= 255
    # 0.0 is exactly representable: it is the grid point q = zero_point
    assert -r.min / r.scale == pytest.approx(r.zero_point, abs=1e-9)
    assert r.min <= 0.0 <= r.max
    # the nudged range stays within one step of the observed one (widened to hold 0)
    assert abs(r.min - min(float(x.min()), 0.0)) <= r.scale and abs(r.max - max(float(x.max()), 0.0)) <= r.scale
    assert r.threshold == max(abs(r.min), abs(r.max))


def test_constant_and_zero_tensors_are_defined() -> None:
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        const = _stats(np.full(10, 3.0))
        assert const.constant
        r = threshold_minmax(const, SYM)
        assert (r.threshold, r.scale) == (3.0, float(np.float32(3.0) / np.float32(127)))
        r = threshold_minmax(const, ASYM)
        assert (r.scale, r.zero_point, r.min) == (float(np.float32(3.0 / 255)), 0, 0.0)
        neg = threshold_minmax(_stats(np.full(4, -2.0)), ASYM)
        assert neg.zero_point == 255 and neg.max == 0.0
        zero = _stats(np.zeros(8))
        for cfg in (SYM, ASYM):
            r = threshold_minmax(zero, cfg)
            assert r.scale == 1.0 and r.zero_point == 0 and r.threshold == 0.0 and (r.min, r.max) == (0.0, 0.0)
            assert all(math.isfinite(v) for v in (r.scale, r.min, r.max, r.threshold))


def test_power_of_two() -> None:
    x = np.array([-0.3, 5.1], np.float32)
    r = threshold_minmax(_stats(x), MethodConfig(power_of_two=True))
    assert r.scale == 2.0 ** math.ceil(math.log2(float(np.float32(5.1) / np.float32(127))))
    assert r.threshold == r.scale * 127 >= 5.1


def test_ema_threshold_is_moving_average() -> None:
    batches = [np.array([-1.0, 2.0], np.float32), np.array([-3.0, 10.0], np.float32), np.array([-0.5, 1.0], np.float32)]
    c = 0.25
    lo, hi = -1.0, 2.0
    for b in batches[1:]:
        lo, hi = (1 - c) * lo + c * float(b.min()), (1 - c) * hi + c * float(b.max())
    r = threshold_ema(_stats(*batches, c=c), SYM)
    assert r.threshold == pytest.approx(max(abs(lo), abs(hi)), rel=1e-12)
    assert r.threshold < 10.0  # the moving average tempers the outlier batch
    ra = threshold_ema(_stats(*batches, c=c), ASYM)
    assert ra.scale == pytest.approx(float(np.float32((hi - lo) / 255)), rel=1e-7)


@pytest.mark.parametrize("method", ["minmax", "ema"])
def test_empty_tensor_refused(method: str) -> None:
    for empty in (_stats(), _stats(np.array([np.nan, np.inf], np.float32))):
        with pytest.raises(QuantvizError, match="Tensor 't' has no finite values"):
            METHODS[method](empty, SYM)
