"""The fine |x| histogram KL re-bins: collected in the same pass, exact under merges, re-binned with a
bounded error.

Oracles: histogram_of (all values at once) for the exact layouts, np.histogram over [0, abs-max] for
the re-binning (the two-pass histogram TensorRT builds), and a version-1 statistics file written
here by hand.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from quantviz import kernels
from quantviz.calib import MethodConfig
from quantviz.calib.kl import kl_histogram, threshold_kl
from quantviz.config import STATS_FORMAT, CollectConfig
from quantviz.errors import QuantvizError
from quantviz.histogram import (
    CHUNK,
    Histogram,
    abs_and_signed_counts,
    add_pair_counts,
    bin_indices,
    coarsened,
    edges_for,
    exponent_for,
    fine_bins_for,
    histogram_of,
    resample,
    update_pair_within,
)
from quantviz.stats import CalibrationStats, TensorAccumulator, TensorStats, load_stats, merge_stats, save_stats


def _batches(rng: np.random.Generator) -> list[np.ndarray]:
    """Ranges that grow by large factors (a first batch of tiny values included), zeros, negatives."""
    out = []
    for scale in (1e-33, 1e-6, 1.0, 40.0, 3e4):
        b = (rng.standard_normal(int(rng.integers(50, 400))) * scale).astype(np.float32)
        b[rng.random(b.size) < 0.2] = 0.0
        out.append(b)
    return out


def _same(a: Histogram, b: Histogram) -> None:
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.edges, b.edges)


@pytest.mark.parametrize(("bins", "fine"), [(2048, 16384), (64, 1024), (16, 16)])
def test_fine_and_coarse_equal_their_whole_histograms(bins: int, fine: int) -> None:
    rng = np.random.default_rng(5)
    batches = _batches(rng)
    allv = np.concatenate(batches)
    acc = TensorAccumulator("t", bins=bins, fine_bins=fine)
    for k, b in enumerate(batches):
        acc.update(b)
        # after every batch, the coarse histograms are those of a plain accumulator of `bins` bins
        seen = np.concatenate(batches[: k + 1])
        r = acc.result()
        _same(r.abs_hist, histogram_of(seen, bins, signed=False))
        _same(r.signed_hist, histogram_of(seen, bins, signed=True))
    r = acc.result()
    assert r.fine_hist is not None and r.fine_hist.bins == fine
    # the fine histogram: every value in its bin, by plain comparisons on the edges
    a = np.abs(allv.astype(np.float64))
    idx = np.searchsorted(r.fine_hist.edges, a, side="right") - 1
    np.testing.assert_array_equal(r.fine_hist.counts, np.bincount(idx, minlength=fine))
    assert r.fine_hist.edges[-1] > a.max() >= r.fine_hist.edges[-1] / 2 or fine == bins


def test_shards_merge_exactly_with_fine_histograms() -> None:
    rng = np.random.default_rng(9)
    batches = _batches(rng)
    whole = TensorAccumulator("t", fine_bins=16384)
    for b in batches:
        whole.update(b)
    parts = []
    for b in reversed(batches):
        acc = TensorAccumulator("t", fine_bins=16384)
        acc.update(b)
        parts.append(acc.result())
    merged = parts[0]
    for p in parts[1:]:
        merged = merge_stats(merged, p)
    w = whole.result()
    assert merged.fine_hist is not None and w.fine_hist is not None
    _same(merged.fine_hist, w.fine_hist)
    _same(merged.abs_hist, w.abs_hist)
    _same(merged.signed_hist, w.signed_hist)


@pytest.mark.parametrize("size", [5000, 2 * CHUNK + 123])  # one pass, and several chunks through reused buffers
@pytest.mark.parametrize("nonnegative", [False, True])
def test_one_bincount_gives_both_histograms_at_any_ratio(nonnegative: bool, size: int) -> None:
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(size) * 3).astype(np.float32)
    x[::7] = np.round(x[::7] * 64) / 64  # values on bin edges, negative ones too
    x[::11] = 0.0
    if nonnegative:
        x = np.abs(x)
    fine, sbins = 16384, 2048
    e = exponent_for(float(np.abs(x).max()), fine)
    a, s, zeros = abs_and_signed_counts(x, e, fine, nonnegative, sbins)
    np.testing.assert_array_equal(a, np.bincount(bin_indices(x, e, fine, False), minlength=fine))
    np.testing.assert_array_equal(s, np.bincount(bin_indices(x, e + 4, sbins, True), minlength=sbins))
    assert zeros == int((x == 0).sum())


def test_coarsened_rejects_what_is_not_exact() -> None:
    h = histogram_of(np.arange(100, dtype=np.float32), 64, signed=False)
    with pytest.raises(QuantvizError, match="coarsened exactly"):
        coarsened(h, 48)
    assert coarsened(h, 16).total == 100
    assert fine_bins_for(2048, 16384) == 16384 and fine_bins_for(2000, 16384) == 32000 and fine_bins_for(2048, 0) == 2048


@pytest.mark.parametrize("dist", ["normal", "heavy", "relu", "sparse"])
def test_resample_misplaces_at_most_one_source_bin_per_edge(dist: str) -> None:
    rng = np.random.default_rng(4)
    x = {
        "normal": rng.standard_normal(200000),
        "heavy": rng.standard_t(2, 200000),
        "relu": np.maximum(rng.standard_normal(200000), 0) * 5,
        "sparse": np.repeat(rng.standard_normal(40) * 3, 500),
    }[dist].astype(np.float32)
    a = np.abs(x.astype(np.float64))
    top = float(a.max())
    fine = histogram_of(x, 16384, signed=False)
    out = resample(fine, 2048, top)
    exact = np.histogram(a, bins=2048, range=(0.0, top))[0]  # the two-pass histogram
    assert out.sum() == pytest.approx(exact.sum(), rel=1e-12)
    # cumulative counts at every target edge differ by at most the count of the source bin holding it
    edges = np.arange(2049) * (top / 2048)
    holding = np.minimum((edges / fine.width).astype(np.int64), fine.bins - 1)
    err = np.abs(np.concatenate(([0.0], np.cumsum(out))) - np.concatenate(([0], np.cumsum(exact))))
    assert np.all(err <= fine.counts[holding] + 1e-6 * a.size)
    # and the fine grid is what makes it small: a source of 2048 power-of-two bins misplaces more
    coarse = resample(histogram_of(x, 2048, signed=False), 2048, top)
    if dist != "sparse":
        err_coarse = np.abs(np.concatenate(([0.0], np.cumsum(coarse))) - np.concatenate(([0], np.cumsum(exact))))
        assert err.max() < err_coarse.max()


def test_resample_is_the_identity_where_edges_coincide() -> None:
    counts = np.array([3, 0, 5, 7, 1, 0, 0, 0], dtype=np.int64)
    h = Histogram(counts, edges_for(-2, 8, signed=False))  # width 0.25, abs-max inside bin 4
    np.testing.assert_allclose(resample(h, 5, 1.25), [3, 0, 5, 7, 1])
    # the bin holding the abs-max ends at it: half of bin 4's mass is below 1.125
    np.testing.assert_allclose(resample(h, 9, 1.125)[-1], 1.0, rtol=1e-12)


def _stats_v1(stats: CalibrationStats) -> bytes:
    """The same statistics as a version-1 file (no fine histograms), written as version 1 did."""
    buf = io.BytesIO()
    save_stats(stats, buf)
    with np.load(io.BytesIO(buf.getvalue())) as z:
        arrays = {k: z[k] for k in z.files if not k.startswith("fine_")}
    header = json.loads(str(arrays["header"]))
    header["version"] = 1
    header["config"].pop("fine_bins")
    arrays["header"] = np.array(json.dumps(header))
    out = io.BytesIO()
    np.savez_compressed(out, **arrays)
    return out.getvalue()


def test_statistics_file_keeps_the_fine_histogram_and_old_files_still_load() -> None:
    rng = np.random.default_rng(1)
    acc = TensorAccumulator("t", fine_bins=16384)
    acc.update((rng.standard_t(3, 30000)).astype(np.float32))
    stats = CalibrationStats("m", "0" * 64, "d", "id", False, 1, CollectConfig(), {"t": acc.result()})
    buf = io.BytesIO()
    save_stats(stats, buf)
    back = load_stats(buf.getvalue())
    t = back.tensors["t"]
    assert t.fine_hist is not None and stats.tensors["t"].fine_hist is not None
    _same(t.fine_hist, stats.tensors["t"].fine_hist)
    assert threshold_kl(t, MethodConfig()).threshold == threshold_kl(stats.tensors["t"], MethodConfig()).threshold
    old = load_stats(_stats_v1(stats))
    assert old.tensors["t"].fine_hist is None and old.config.fine_bins == old.config.bins
    r = threshold_kl(old.tensors["t"], MethodConfig())  # re-bins the 2048-bin histogram instead
    assert r.details["source_bins"] == 2048 and 0 < r.threshold <= old.tensors["t"].absmax
    assert json.loads(str(np.load(io.BytesIO(buf.getvalue()))["header"]))["format"] == STATS_FORMAT


def test_kl_histogram_leaves_zeros_out_and_spans_the_abs_max() -> None:
    x = np.concatenate([np.zeros(5000), np.linspace(-3, 2, 4000)]).astype(np.float32)
    acc = TensorAccumulator("t", fine_bins=16384)
    acc.update(x)
    s = acc.result()
    h = kl_histogram(s, 2048)
    assert h.bins == 2048 and h.edges[-1] == pytest.approx(3.0) and h.total == pytest.approx(4000)
    assert s.fine_hist is not None and s.fine_hist.counts[0] >= 5000  # the stored histogram is untouched


def _edge_heavy(rng: np.random.Generator, size: int, width: float) -> np.ndarray:
    """Normal values plus many exact multiples of the grid (negative edges of every signed group in
    many blocks), exact zeros, -0.0, subnormals and the largest value the grid holds."""
    x = (rng.standard_normal(size) * 3).astype(np.float32)
    on = rng.random(size) < 0.05
    x[on] = (np.round(x[on] / (16 * width)) * 16 * width).astype(np.float32)  # signed-group edges
    x[rng.random(size) < 0.03] = -0.0
    x[rng.random(size) < 0.03] = 0.0
    x[:3] = np.float32(1e-40), np.float32(-1e-40), -np.float32(width)
    return x


@pytest.mark.parametrize("size", [1000, kernels.DIRECT_BELOW + 77, 600_000])
@pytest.mark.parametrize("sbins", [2048, 4096, 32768])  # signed bins of 16, 8 and 1 fine bins
@pytest.mark.parametrize("nonnegative", [False, True])
def test_compiled_counts_equal_numpy_and_the_oracle(size: int, sbins: int, nonnegative: bool) -> None:
    _compare_compiled(size, sbins, nonnegative)


def test_compiled_counts_in_several_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The int32 fine layout is folded every FINE_MAX_VALUES values (2**30 in use): the same counts."""
    monkeypatch.setattr(kernels, "FINE_MAX_VALUES", 50_000)
    _compare_compiled(600_000, 2048, False)


def _compare_compiled(size: int, sbins: int, nonnegative: bool) -> None:
    assert kernels.available()  # numba is a requirement: the fast path must be the one tested
    rng = np.random.default_rng(size + sbins)
    fine = 16384
    x = _edge_heavy(rng, size, 2.0**-10)
    if nonnegative:
        x = np.abs(x)
    e = exponent_for(float(np.abs(x).max()), fine)
    assert e <= 0
    got_a, got_s = np.zeros(fine, np.int64), np.zeros(sbins, np.int64)
    ref_a, ref_s = np.zeros(fine, np.int64), np.zeros(sbins, np.int64)
    zeros = add_pair_counts(x, e, fine, nonnegative, sbins, got_a, got_s)
    ref_zeros = add_pair_counts(x, e, fine, nonnegative, sbins, ref_a, ref_s, compiled=False)
    np.testing.assert_array_equal(got_a, ref_a)
    np.testing.assert_array_equal(got_s, ref_s)
    assert zeros == ref_zeros == int((x == 0).sum())
    shift = (2 * fine // sbins).bit_length() - 1
    np.testing.assert_array_equal(got_a, np.bincount(bin_indices(x, e, fine, False), minlength=fine))
    np.testing.assert_array_equal(got_s, np.bincount(bin_indices(x, e + shift, sbins, True), minlength=sbins))


def _big_batches(rng: np.random.Generator) -> list[np.ndarray]:
    """Batches above kernels.DIRECT_BELOW that the one pass takes with min and max unknown: within the
    range seen, beyond it from a late block (the range grows mid-tensor), NaN and Inf in a middle
    block, all negative, -0.0 and exact zeros, negative values on signed edges."""
    n = kernels.DIRECT_BELOW + 5000
    first = (rng.standard_normal(n) * 2).astype(np.float32)
    within = (rng.standard_normal(n) * 1.5).astype(np.float32)
    grows = (rng.standard_normal(n) * 2).astype(np.float32)
    grows[-700] = 90.0
    bad = (rng.standard_normal(n) * 2).astype(np.float32)
    bad[kernels.BLOCK * 3 + 5], bad[kernels.BLOCK * 5], bad[-1] = np.nan, np.inf, -np.inf
    negative = -np.abs(rng.standard_normal(n)).astype(np.float32) - np.float32(0.5)
    zeros = _edge_heavy(rng, n, 2.0**-7)
    zeros[: kernels.BLOCK] = -0.0
    small = (rng.standard_normal(n) * 1e-3).astype(np.float32)  # far inside the range: a grid at a large width
    return [first, within, grows, bad, negative, zeros, small]


@pytest.mark.parametrize("same_batch", [False, True])
def test_one_pass_with_min_and_max_unknown_equals_the_two_step_update(monkeypatch: pytest.MonkeyPatch, same_batch: bool) -> None:
    """TensorAccumulator.update counts the values on the grid already seen in one compiled pass that
    finds min and max as it goes (histogram.update_pair_within), the rest after numpy's reductions:
    every statistic equals the update that reduces first (the one-pass path switched off), and the
    histograms those of all finite values at once."""
    rng = np.random.default_rng(11)
    batches = _big_batches(rng)
    calls, a = _one_pass_against_two_step(monkeypatch, batches, same_batch)
    # the one pass ran on every batch after the first, whole or up to the block it stopped at
    n = batches[0].size
    assert calls[0] == n and calls[3] == n  # within the range; the grid grew in batch 2 and holds 90
    assert calls[2] == kernels.BLOCK * 3  # `bad`: stopped at the block holding the NaN
    assert 0 < calls[1] < n and calls[1] % kernels.BLOCK == 0  # `grows`: stopped at its late block
    finite = np.concatenate(batches)
    finite = finite[np.isfinite(finite)]
    assert a.zero_count == int((finite == 0).sum()) and a.min == finite.min() and a.max == finite.max()


def _one_pass_against_two_step(
    monkeypatch: pytest.MonkeyPatch, batches: list[np.ndarray], same_batch: bool = False
) -> tuple[list[int], TensorStats]:
    """The batches through TensorAccumulator.update twice: with the one pass (noting the values it
    counted at each call) and with it switched off. Every statistic must be equal, and the histograms
    those of all finite values at once. Returns the calls' counts and the one-pass statistics."""
    import quantviz.stats as stats_module

    calls: list[int] = []

    def counting(*args: object) -> object:
        got = update_pair_within(*args)  # type: ignore[arg-type]
        calls.append(0 if got is None else got[0])
        return got

    results = []
    for within in (counting, lambda *a: None):
        monkeypatch.setattr(stats_module, "update_pair_within", within)
        acc = TensorAccumulator("t", bins=2048, fine_bins=16384)
        for k, b in enumerate(batches):
            acc.update(b, same_batch=same_batch and k > 0)
        results.append(acc.result())
    a, r2 = results
    for field in ("count", "nan_count", "posinf_count", "neginf_count", "zero_count", "min", "max", "ema_min", "ema_max", "batches"):
        assert getattr(a, field) == getattr(r2, field), field
    np.testing.assert_array_equal(a.batch_ranges, r2.batch_ranges)
    for h in ("abs_hist", "signed_hist", "fine_hist"):
        _same(getattr(a, h), getattr(r2, h))
    finite = np.concatenate(batches)
    finite = finite[np.isfinite(finite)]
    _same(a.abs_hist, histogram_of(finite, 2048, signed=False))
    _same(a.signed_hist, histogram_of(finite, 2048, signed=True))
    return calls, a


def test_min_and_max_read_off_the_bits_of_finite_values() -> None:
    """kernels.add_counts with a limit: the min and max of every sign pattern from the three bit reductions."""
    rng = np.random.default_rng(3)
    cases = [
        rng.standard_normal(kernels.DIRECT_BELOW + 9).astype(np.float32),
        np.abs(rng.standard_normal(kernels.DIRECT_BELOW)).astype(np.float32) + 1,  # all positive
        -np.abs(rng.standard_normal(kernels.DIRECT_BELOW)).astype(np.float32) - 1,  # all negative
        np.zeros(kernels.DIRECT_BELOW, np.float32) - np.float32(0.0),  # -0.0 only
        np.r_[np.full(kernels.DIRECT_BELOW, 3.0, np.float32), np.float32(1e-40)],  # a subnormal smallest
    ]
    for x in cases:
        top = np.array([64.0], np.float32).view(np.uint32)[0]
        counted, _, lo, hi = kernels.add_counts(x, np.float32(256.0), 16384, 3, np.zeros(16384, np.int64), np.zeros(4096, np.int64), np.zeros(32768, np.int32), int(top))
        assert counted == x.size
        assert (lo, hi) == (float(x.min()), float(x.max()))


def test_small_tensors_take_the_one_pass_whole_or_not_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """Below kernels.DIRECT_BELOW values a first look at the bits decides: all counted (with min and
    max) when every |x| lies on the grid, none otherwise (then numpy's reductions and update_pair)."""
    rng = np.random.default_rng(4)
    first = (rng.standard_normal(1000) * 2).astype(np.float32)
    within = (rng.standard_normal(1000) * 1.5).astype(np.float32)
    beyond = within * 50
    bad = within.copy()
    bad[500] = np.nan
    negative = -np.abs(within) - np.float32(0.25)
    batches = [first, within, beyond, bad, negative, np.zeros(1000, np.float32) - np.float32(0.0)]
    calls, _ = _one_pass_against_two_step(monkeypatch, batches)
    assert calls == [1000, 0, 0, 1000, 1000]
