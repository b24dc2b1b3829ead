"""quantviz.calib.kl: the vectorised KL curve equals a slow, literal loop of TensorRT's algorithm.

The loop below follows ALGORITHMS.md / the kl.py docstring word by word, with Python lists:
for each candidate i: P = h[0:i] with the outliers added to its last bin; Q = h[0:i] in 128 groups
(bin j in group floor(128 j / i)), each group's mass spread evenly over its non-zero bins; both
normalised; KL(P || Q) with P = 0 terms skipped, infinite where P > 0 and Q = 0.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from quantviz.calib import METHODS, MethodConfig
from quantviz.calib.kl import kl_curve, threshold_kl
from quantviz.config import KL_START_BIN, KL_TARGET_BINS
from quantviz.errors import QuantvizError
from quantviz.histogram import Histogram, edges_for
from quantviz.stats import TensorAccumulator, TensorStats

TIE = 1e-12  # KL values closer than this are a tie (floating-point noise), won by the larger i


def slow_kl(h: list[int], start: int = KL_START_BIN, target: int = KL_TARGET_BINS) -> tuple[list[int], list[float]]:
    n = len(h)
    cands, kls = [], []
    for i in range(max(start, target), n + 1):
        p = [float(v) for v in h[:i]]
        p[i - 1] += float(sum(h[i:]))
        mass = [0.0] * target
        nonzero = [0] * target
        for j in range(i):
            g = (target * j) // i
            mass[g] += h[j]
            nonzero[g] += 1 if h[j] != 0 else 0
        q = [0.0] * i
        for j in range(i):
            if h[j] != 0:
                g = (target * j) // i
                q[j] = mass[g] / nonzero[g]
        sp, sq = sum(p), sum(q)
        kl = 0.0
        for pj, qj in zip(p, q, strict=True):
            if pj == 0:
                continue
            if qj == 0:
                kl = math.inf
                break
            kl += (pj / sp) * math.log((pj / sp) / (qj / sq))
        cands.append(i)
        kls.append(kl)
    return cands, kls


def slow_best(cands: list[int], kls: list[float]) -> int:
    """The candidate of least divergence; ties (within TIE) go to the largest i."""
    lowest = min(kls)
    return max(i for i, k in zip(cands, kls, strict=True) if k <= lowest + TIE)


def _histograms() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    out = []
    # a bell shape, a long-tailed one, a sparse one (90 % empty bins), one with a far outlier bin
    x = np.abs(rng.standard_normal(20000))
    out.append(np.histogram(x, bins=400)[0])
    y = np.abs(rng.laplace(size=30000)) ** 1.5
    out.append(np.histogram(y, bins=700)[0])
    sparse = rng.poisson(20, 600) * (rng.random(600) < 0.1)
    sparse[599] = 3
    out.append(sparse)
    far = np.histogram(np.abs(rng.standard_normal(5000)), bins=300, range=(0, 6))[0]
    far[-1] += 1
    out.append(far)
    # a histogram that ends in empty bins, and one with every bin equal
    tail = np.histogram(np.abs(rng.standard_normal(3000)), bins=256, range=(0, 8))[0]
    out.append(tail)
    out.append(np.full(200, 5))
    return [h.astype(np.int64) for h in out]


@pytest.mark.parametrize("k", range(6))
def test_curve_equals_slow_loop(k: int) -> None:
    h = _histograms()[k]
    cand, div = kl_curve(h, KL_START_BIN, KL_TARGET_BINS)
    s_cand, s_div_list = slow_kl(h.tolist())
    np.testing.assert_array_equal(cand, s_cand)
    s_div = np.array(s_div_list)
    np.testing.assert_array_equal(np.isinf(div), np.isinf(s_div))
    fin = np.isfinite(s_div)
    np.testing.assert_allclose(div[fin], s_div[fin], rtol=1e-9, atol=1e-12)


def _stats_with(counts: np.ndarray, zero_count: int = 0, exponent: int = -8) -> TensorStats:
    """TensorStats around a given |x| histogram (width 2**exponent); the abs-max sits on the right edge
    of the last non-empty bin, so that KL's grid over [0, abs-max] with as many bins as are used is
    this very histogram (re-binning is then the identity: its own error is tested in
    test_fine_histogram.py)."""
    counts = np.asarray(counts, dtype=np.int64)
    bins = counts.size
    last = int(np.flatnonzero(counts)[-1])
    w = 2.0**exponent
    hi = (last + 1) * w
    sh = np.zeros(bins, np.int64)
    return TensorStats(
        name="t", count=int(counts.sum()), nan_count=0, posinf_count=0, neginf_count=0, zero_count=zero_count,
        min=-0.5 * w, max=hi, ema_min=-0.5 * w, ema_max=hi, batches=1,
        abs_hist=Histogram(counts, edges_for(exponent, bins, signed=False)),
        signed_hist=Histogram(sh, edges_for(exponent, bins, signed=True)),
    )  # fmt: skip


def _used(counts: np.ndarray, zero_count: int) -> list[int]:
    """Independent of kl.py: bin 0 minus the exact zeros, cut after the last non-empty bin."""
    c = [int(v) for v in counts]
    c[0] -= min(zero_count, c[0])
    while len(c) > 1 and c[-1] == 0:
        c.pop()
    return c


@pytest.mark.parametrize("position", ["edge", "center"])
@pytest.mark.parametrize("k", range(6))
def test_threshold_equals_slow_loop(k: int, position: str) -> None:
    h = np.concatenate([_histograms()[k], np.zeros(60, np.int64)])  # room after the last non-empty bin
    stats = _stats_with(h)
    used = _used(h, 0)
    r = threshold_kl(stats, MethodConfig(kl_threshold=position, kl_bins=len(used)))
    cands, kls = slow_kl(used)
    w = stats.abs_hist.width
    if not cands:  # fewer used bins than 128: nothing to search, the threshold is the abs-max
        assert len(used) < KL_START_BIN and r.threshold == stats.absmax
        return
    best = slow_best(cands, kls)
    expected = min((best + (0.5 if position == "center" else 0.0)) * w, stats.absmax)
    assert r.threshold == pytest.approx(expected, rel=1e-12)
    assert r.details["candidate_bins"] == best and r.details["bins_used"] == len(used)
    assert r.scale == float(np.float32(r.threshold) / np.float32(127))
    # the whole curve is returned, its chosen point marked
    assert r.curve is not None and r.curve.chosen == r.threshold
    assert r.curve.x.size == r.curve.y.size == len(cands)
    np.testing.assert_allclose(r.curve.x, [(i + (0.5 if position == "center" else 0.0)) * w for i in cands])
    fin = np.isfinite(kls)
    np.testing.assert_allclose(r.curve.y[fin], np.array(kls)[fin], rtol=1e-7, atol=1e-10)


def reference_histogram(x: np.ndarray, bins: int = 2048) -> tuple[np.ndarray, float]:
    """Two passes as TensorRT / ncnn: abs-max first, then `bins` bins over [0, abs-max], zeros left out."""
    a = np.abs(x[np.isfinite(x)].astype(np.float64))
    top = float(a.max())
    return np.histogram(a[a != 0], bins=bins, range=(0.0, top))[0], top


def test_zeros_removed_without_mutating_stats() -> None:
    """ReLU-like data: half exact zeros. The search ignores them; the stored histogram keeps them."""
    rng = np.random.default_rng(3)
    x = np.maximum(rng.standard_normal(40000).astype(np.float32), 0)
    acc = TensorAccumulator("t", bins=2048, fine_bins=16384)
    acc.update(x)
    stats = acc.result()
    assert stats.fine_hist is not None
    before = stats.fine_hist.counts.copy()
    assert stats.zero_count == int((x == 0).sum()) > 15000
    r = threshold_kl(stats, MethodConfig())
    np.testing.assert_array_equal(stats.fine_hist.counts, before)
    assert stats.fine_hist.counts[0] >= stats.zero_count
    ref, top = reference_histogram(x)
    cand, div = kl_curve(ref, KL_START_BIN, KL_TARGET_BINS)  # equal to slow_kl: tests above
    best = int(cand[len(div) - 1 - np.argmin(div[::-1])])
    chosen = r.details["candidate_bins"]
    assert abs(chosen - best) <= 1 or div[chosen - cand[0]] <= 1.1 * div.min()
    # with the zeros left in bin 0, the answer would differ: the removal matters
    with_zeros = ref.copy()
    with_zeros[0] += stats.zero_count
    c2, k2 = kl_curve(with_zeros, KL_START_BIN, KL_TARGET_BINS)
    assert abs(int(c2[len(k2) - 1 - np.argmin(k2[::-1])]) - chosen) > 8


def test_fewer_bins_than_target_gives_absmax() -> None:
    acc = TensorAccumulator("t", bins=64)
    acc.update(np.array([0.1, -2.5, 1.7, 0.0, 3.2], np.float32))
    stats = acc.result()
    r = threshold_kl(stats, MethodConfig(kl_bins=64))
    assert r.threshold == float(np.abs(np.array([0.1, -2.5, 1.7, 3.2], np.float32)).max())
    assert r.curve is not None and r.curve.x.size == 1


def test_all_zero_and_empty() -> None:
    acc = TensorAccumulator("t", bins=256)
    acc.update(np.zeros(100, np.float32))
    r = threshold_kl(acc.result(), MethodConfig())
    assert (r.threshold, r.scale) == (0.0, 1.0)
    with pytest.raises(QuantvizError, match="no finite values"):
        METHODS["kl"](TensorAccumulator("t", bins=256).result(), MethodConfig())


def test_asymmetric_kl_clips_observed_range() -> None:
    h = _histograms()[1]
    stats = _stats_with(np.concatenate([h, np.zeros(10, np.int64)]))
    sym = threshold_kl(stats, MethodConfig())
    asym = threshold_kl(stats, MethodConfig(symmetric=False))
    t = sym.threshold
    lo, hi = max(stats.min, -t), min(stats.max, t)
    assert asym.min <= 0 <= asym.max and asym.min == pytest.approx(lo, abs=asym.scale)
    assert asym.max == pytest.approx(hi, abs=asym.scale)


def test_full_2048_bins_against_two_pass_slow_loop() -> None:
    """The independent reference end to end on one heavy-tailed tensor: two passes (abs-max, then an
    exact 2048-bin histogram over [0, abs-max]), the literal loop one candidate at a time; quantviz's
    one streaming pass lands within one bin of it, or on a KL within 2 % of its minimum (this
    tensor's curve is flat: bins 609 and 698 are 1 % apart)."""
    rng = np.random.default_rng(11)
    acc = TensorAccumulator("t", bins=2048, fine_bins=16384)
    batches = [(rng.standard_t(3, 50000) * 0.7).astype(np.float32) for _ in range(4)]
    for b in batches:
        acc.update(b)
    stats = acc.result()
    ref, top = reference_histogram(np.concatenate(batches))
    s_cand, s_div = slow_kl(ref.tolist())
    best = slow_best(s_cand, s_div)
    r = threshold_kl(stats, MethodConfig())
    chosen = r.details["candidate_bins"]
    assert r.details["bins_used"] == 2048 and r.threshold == pytest.approx(chosen * top / 2048)
    assert abs(chosen - best) <= 1 or s_div[chosen - s_cand[0]] <= 1.02 * min(s_div), (chosen, best)


def test_calibrate_over_threads_equals_one_method_call_per_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    """calibrate() spreads tensors over threads: every entry must equal threshold_kl on that tensor,
    in the statistics' order, as with one thread."""
    from pathlib import Path

    import quantviz.table as table_mod
    from quantviz.calib import MethodConfig
    from quantviz.calib.kl import threshold_kl
    from quantviz.collect import collect
    from quantviz.config import CollectConfig
    from quantviz.data import open_source
    from quantviz.model import load_model

    samples = Path(__file__).resolve().parent.parent / "sample_models"
    model = load_model(samples / "digits_cnn.onnx")
    stats = collect(model, open_source(samples / "digits_calib.npz", model.inputs), CollectConfig(samples=64))
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    threaded = table_mod.calibrate(stats, "kl")
    assert list(threaded.tensors) == list(stats.tensors)
    for name, t in stats.tensors.items():
        want = threshold_kl(t, MethodConfig())
        got = threaded.tensors[name]
        assert (got.threshold, got.scale, got.min, got.max) == (want.threshold, want.scale, want.min, want.max), name
    monkeypatch.setattr(table_mod, "CALIBRATE_THREADS", 1)
    assert table_mod.calibrate(stats, "kl").tensors == threaded.tensors


@pytest.mark.parametrize(("n", "target", "start"), [(2048, 128, 128), (1500, 128, 300), (3000, 128, 128), (700, 100, 150), (4096, 128, 128)])
def test_compiled_curve_equals_the_numpy_path(monkeypatch: pytest.MonkeyPatch, n: int, target: int, start: int) -> None:
    """kl_curve runs quantviz.kernels.kl_curve (compiled loops, groups stepped a_g = ceil(g i / target)
    incrementally); the numpy fallback gathers the groups through the plan's index table. Both give the
    same curve (to rounding: numpy's vectorised and libm's scalar logarithms differ in the last bit) and
    the same threshold, on integer counts, fractional re-binned counts, sparse and empty-tailed ones."""
    from quantviz import kernels

    assert kernels.available()
    rng = np.random.default_rng(n + start)
    dense = rng.poisson(np.linspace(400.0, 0.1, n) ** 2).astype(np.float64)
    sparse = np.where(rng.random(n) < 0.2, rng.integers(1, 9, n), 0).astype(np.float64)
    sparse[-1] = 3.0  # a far outlier after a run of empty bins
    fractional = rng.random(n) * np.exp(-np.arange(n) / (n / 8))
    gap = dense.copy()
    gap[n // 2 :] = 0.0
    gap[-1] = 1.0  # the last bin alone after an empty half: candidates there are infinite
    for h in (dense, sparse, fractional, gap):
        cand, compiled = kl_curve(h, start, target)
        with monkeypatch.context() as m:
            m.setattr(kernels, "available", lambda: False)
            cand_np, numpy_path = kl_curve(h, start, target)
        np.testing.assert_array_equal(cand, cand_np)
        np.testing.assert_array_equal(np.isinf(compiled), np.isinf(numpy_path))
        fin = np.isfinite(numpy_path)
        np.testing.assert_allclose(compiled[fin], numpy_path[fin], rtol=1e-9, atol=1e-12)
        assert int(np.argmin(compiled[::-1])) == int(np.argmin(numpy_path[::-1]))


def test_curve_without_the_compiled_loop_equals_the_slow_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The numpy fallback (no numba) gives the same curves."""
    from quantviz import kernels

    monkeypatch.setattr(kernels, "available", lambda: False)
    for h in _histograms():
        cand, div = kl_curve(h, KL_START_BIN, KL_TARGET_BINS)
        s_cand, s_div_list = slow_kl(h.tolist())
        np.testing.assert_array_equal(cand, s_cand)
        s_div = np.array(s_div_list)
        fin = np.isfinite(s_div)
        np.testing.assert_array_equal(np.isinf(div), np.isinf(s_div))
        np.testing.assert_allclose(div[fin], s_div[fin], rtol=1e-9, atol=1e-12)
