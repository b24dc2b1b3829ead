"""quantviz.calib.kl_ncnn: the vectorised curve equals a literal per-candidate computation of ncnn's
quantize_KL (ncnn2table.cpp), written here with an explicit bin-by-group overlap matrix."""

from __future__ import annotations

import numpy as np
import pytest

from quantviz.calib import METHODS, MethodConfig
from quantviz.calib.kl import kl_histogram
from quantviz.calib.kl_ncnn import KL_EPS, ncnn_kl_curve, threshold_kl_ncnn
from quantviz.stats import TensorAccumulator

TARGET = 128


def literal(h: np.ndarray, t: int, eps: float = KL_EPS) -> float:
    """ncnn's divergence of candidate t: overlap[k, j] = length of bin [k, k+1) inside group j."""
    h = h / h.sum()
    w = t / TARGET
    k = np.arange(t)[:, None]
    j = np.arange(TARGET)[None, :]
    overlap = np.clip(np.minimum(k + 1, (j + 1) * w) - np.maximum(k, j * w), 0.0, None)
    q = overlap.T @ h[:t] / w  # each group's mean over all its (fractional) bins
    expand = eps + overlap @ q
    clip = eps + h[:t].copy()
    clip[t - 1] += h[t:].sum()
    return float(np.sum(clip * np.log(clip / expand)))


def _histograms() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    bell = np.histogram(np.abs(rng.standard_normal(20000)), bins=300)[0]
    tail = np.histogram(np.abs(rng.standard_t(2, 30000)), bins=517)[0]
    sparse = rng.poisson(30, 400) * (rng.random(400) < 0.15)
    sparse[-1] = 2
    return [bell, tail, sparse.astype(np.int64)]


@pytest.mark.parametrize("k", range(3))
def test_curve_equals_literal_loop(k: int) -> None:
    h = _histograms()[k].astype(np.float64)
    cand, div = ncnn_kl_curve(h, TARGET, TARGET)
    np.testing.assert_array_equal(cand, np.arange(TARGET, h.size))  # ncnn stops before the last bin
    want = np.array([literal(h, int(t)) for t in cand])
    np.testing.assert_allclose(div, want, rtol=1e-9, atol=1e-12)


def test_threshold_is_center_of_first_argmin_and_registered() -> None:
    rng = np.random.default_rng(2)
    acc = TensorAccumulator("t", bins=2048, fine_bins=16384)
    x = np.maximum(rng.standard_t(3, 60000), 0).astype(np.float32)
    acc.update(x)
    stats = acc.result()
    r = METHODS["kl_ncnn"](stats, MethodConfig())
    hist = kl_histogram(stats)
    cand = np.arange(TARGET, 2048)
    div = np.array([literal(hist.counts.astype(np.float64), int(t)) for t in cand])
    best = int(cand[np.argmin(div)])
    assert r.details["candidate_bins"] == best
    assert r.threshold == pytest.approx((best + 0.5) * hist.width, rel=1e-6)
    assert r.curve is not None and r.curve.chosen == r.threshold
    # finite everywhere (eps smoothing), unlike the TensorRT search on a sparse histogram
    assert np.isfinite(r.curve.y).all()


def test_all_zero_gives_zero_threshold() -> None:
    acc = TensorAccumulator("t", bins=256)
    acc.update(np.zeros(50, np.float32))
    assert threshold_kl_ncnn(acc.result(), MethodConfig()).threshold == 0.0
