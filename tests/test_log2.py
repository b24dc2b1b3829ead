"""quantviz.calib.log2: linear int8 versus log2 quantization error against numpy on the samples."""

from __future__ import annotations

import numpy as np
import pytest

from quantviz.calib.log2 import log2_quantization_error, log2_quantize
from quantviz.errors import QuantvizError
from quantviz.stats import TensorAccumulator, TensorStats


def stats_of(x: np.ndarray, bins: int = 2048) -> TensorStats:
    acc = TensorAccumulator("t", bins)
    for part in np.array_split(np.asarray(x, dtype=np.float32), 3):
        acc.update(part)
    return acc.result()


def log2_by_search(x: np.ndarray, t: float) -> np.ndarray:
    """Brute force: the nearest of the 127 levels 2^k (k = E-126..E, E = round(log2 t)) in the log
    domain, searched over all levels, or 0 below the smallest level's lower half-step."""
    e = int(np.round(np.log2(t)))
    ks = np.arange(e - 126, e + 1, dtype=np.float64)
    mag = np.abs(x)
    out = np.zeros_like(x)
    nz = mag > 0
    lg = np.log2(mag[nz])
    k = ks[np.argmin(np.abs(lg[:, None] - ks[None, :]), axis=1)]
    q = 2.0**k
    q[lg < ks[0] - 0.5] = 0.0
    out[nz] = np.sign(x[nz]) * q
    return out


def linear_by_numpy(x: np.ndarray, t: float) -> np.ndarray:
    s = np.float64(np.float32(t) / np.float32(127))
    return np.clip(np.rint(x / s), -127, 127) * s


def test_hand_computed_levels() -> None:
    # E = 2 (levels ..., 1, 2, 4); the 2 / 4 boundary is 2^1.5 = 2.828..., not the midpoint 3
    q = log2_quantize(np.array([3.0, 2.9, 2.8, -2.8, 0.0, 100.0, 0.75, 0.7]), 2)
    assert q.tolist() == [4.0, 4.0, 2.0, -2.0, 0.0, 4.0, 1.0, 0.5]
    # underflow: below 2^(E - 126.5) -> 0, the smallest level 2^(E-126) above it
    tiny = np.ldexp(1.0, 2 - 126)
    assert log2_quantize(np.array([tiny, tiny * 0.7, tiny * 0.72]), 2).tolist() == [tiny, 0.0, tiny]


@pytest.mark.parametrize("kind", ["laplace", "normal", "relu", "lognormal"])
def test_histogram_errors_match_the_samples(kind: str) -> None:
    rng = np.random.default_rng(0)
    n = 100_000
    x = {
        "laplace": rng.laplace(0, 1, n),
        "normal": rng.normal(0.2, 1.0, n),
        "relu": np.maximum(rng.normal(size=n), 0.0),
        "lognormal": rng.choice([-1, 1], n) * rng.lognormal(0.0, 1.0, n),
    }[kind]
    x = x.astype(np.float32).astype(np.float64)
    st = stats_of(x)
    t = float(np.abs(x).max())
    lin = np.mean((x - linear_by_numpy(x, t)) ** 2)
    log = np.mean((x - log2_by_search(x, t)) ** 2)
    cmp = log2_quantization_error(st)
    assert cmp.threshold == t and cmp.top_exponent == int(np.round(np.log2(t)))
    assert cmp.linear_mse == pytest.approx(lin, rel=0.03)
    assert cmp.log2_mse == pytest.approx(log, rel=0.03)
    # a clip below abs-max: both schemes saturate
    t2 = t / 3
    cmp2 = log2_quantization_error(st, threshold=t2)
    assert cmp2.linear_mse == pytest.approx(np.mean((x - linear_by_numpy(x, t2)) ** 2), rel=0.03)
    assert cmp2.log2_mse == pytest.approx(np.mean((x - log2_by_search(x, t2)) ** 2), rel=0.03)


def test_raw_values_are_exact_and_per_bin_curves_average_the_errors() -> None:
    rng = np.random.default_rng(1)
    x = rng.laplace(0, 1, 20_000)
    cmp = log2_quantization_error(x, threshold=5.0, bins=256)
    lin = (x - linear_by_numpy(x, 5.0)) ** 2
    log = (x - log2_by_search(x, 5.0)) ** 2
    assert cmp.linear_mse == pytest.approx(lin.mean(), rel=1e-12)
    assert cmp.log2_mse == pytest.approx(log.mean(), rel=1e-12)
    # per-bin curves: the mean error of the samples whose |x| falls in each bin (a loop over bins)
    w = cmp.centers[1] - cmp.centers[0]
    for i in (0, 3, 40, 100):
        inside = (np.abs(x) >= i * w) & (np.abs(x) < (i + 1) * w)
        assert cmp.counts[i] == inside.sum()
        assert cmp.linear_error[i] == pytest.approx(lin[inside].mean(), rel=1e-9)
        assert cmp.log2_error[i] == pytest.approx(log[inside].mean(), rel=1e-9)


def test_histogram_per_bin_curves_against_samples() -> None:
    x = np.random.default_rng(2).normal(0, 1, 200_000)
    st = stats_of(x, bins=256)
    cmp = log2_quantization_error(st)
    lin = (x - linear_by_numpy(x, cmp.threshold)) ** 2
    log = (x - log2_by_search(x, cmp.threshold)) ** 2
    w = st.abs_hist.width
    assert np.nansum(cmp.counts * cmp.linear_error) / x.size == pytest.approx(cmp.linear_mse)
    for i in (2, 10, 30):  # well populated bins
        inside = (np.abs(x) >= i * w) & (np.abs(x) < (i + 1) * w)
        assert cmp.linear_error[i] == pytest.approx(lin[inside].mean(), rel=0.1)
        assert cmp.log2_error[i] == pytest.approx(log[inside].mean(), rel=0.1)


def test_exact_zeros_cost_nothing_in_either_scheme() -> None:
    x = np.random.default_rng(3).normal(size=20_000)
    a = log2_quantization_error(stats_of(x))
    b = log2_quantization_error(stats_of(np.concatenate([x, np.zeros(20_000)])))
    assert b.linear_mse == pytest.approx(a.linear_mse / 2, rel=1e-9)
    assert b.log2_mse == pytest.approx(a.log2_mse / 2, rel=1e-9)


def test_log2_keeps_small_values_that_linear_rounds_to_zero() -> None:
    # magnitudes 2^-12 .. 1: linear int8 (step 1/127) rounds the small ones to 0 (relative squared
    # error 1); log2 keeps every value within a factor 2^0.5 (relative squared error <= (2^0.5 - 1)^2)
    x = np.exp2(np.random.default_rng(4).uniform(-12, 0, 50_000))
    cmp = log2_quantization_error(x, bins=2048)
    small = (cmp.counts > 0) & (cmp.centers < cmp.scale / 4)
    assert small.any()
    rel_lin = cmp.linear_error[small] / cmp.centers[small] ** 2
    rel_log = cmp.log2_error[small] / cmp.centers[small] ** 2
    assert np.all(rel_log <= (2**0.5 - 1) ** 2 + 1e-9)
    assert np.all(rel_lin > 0.5)
    # but in absolute terms the large values dominate, where linear is far finer
    assert cmp.linear_mse < cmp.log2_mse


def test_bad_input() -> None:
    with pytest.raises(QuantvizError, match="zero everywhere"):
        log2_quantization_error(stats_of(np.zeros(10)))
    with pytest.raises(QuantvizError):
        log2_quantization_error(TensorAccumulator("e").result())
    with pytest.raises(QuantvizError, match="finite"):
        log2_quantization_error(np.array([np.nan, np.inf]))
    with pytest.raises(QuantvizError, match="threshold"):
        log2_quantization_error(np.array([1.0, 2.0]), threshold=-1.0)
    with pytest.raises(QuantvizError, match="signed"):
        log2_quantization_error(stats_of(np.array([1.0, -2.0])).signed_hist)
