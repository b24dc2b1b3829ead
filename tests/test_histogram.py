"""quantviz.histogram: the streamed histogram equals the histogram of all values at once, exactly.

Oracles: histogram_of over the concatenated values, and a plain numpy check of each value's bin
(edges[i] <= x < edges[i+1]) written here.
"""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from quantviz.errors import QuantvizError
from quantviz.histogram import Histogram, HistogramAccumulator, histogram_of, merge
from quantviz.stats import TensorAccumulator

BINS = (16, 64, 2048)


def _feed(batches: list[np.ndarray], bins: int, signed: bool) -> HistogramAccumulator:
    acc = HistogramAccumulator(bins, signed)
    for b in batches:
        f = b[np.isfinite(b)]
        acc.update(f, float(np.abs(f).max()) if f.size else 0.0)
    return acc


def _growing_batches(rng: np.random.Generator) -> list[np.ndarray]:
    """Batches whose range grows by large factors, with negatives, exact zeros and non-finite values."""
    out = []
    for k, scale in enumerate([1e-6, 1e-3, 1.0, 7.5, 1e3, 3e5, 2.0, 1e9]):
        b = (rng.standard_normal(int(rng.integers(1, 300))) * scale).astype(np.float32)
        b[rng.random(b.size) < 0.2] = 0.0
        if k == 3:
            b = np.concatenate([b, np.array([np.nan, np.inf, -np.inf], np.float32)])
        if k == 5:
            b = -np.abs(b)  # a batch of negatives only
        out.append(b)
    return out


def _assert_same(a: Histogram, b: Histogram) -> None:
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.edges, b.edges)
    assert a.counts.dtype == np.int64


def _bin_of(x: float, edges: np.ndarray) -> int:
    """Slow reference: the i with edges[i] <= x < edges[i+1] (plain comparisons, no floor)."""
    hits = [i for i in range(edges.size - 1) if edges[i] <= x < edges[i + 1]]
    assert len(hits) == 1, (x, hits)
    return hits[0]


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("bins", BINS)
def test_streamed_equals_whole(bins: int, signed: bool) -> None:
    rng = np.random.default_rng(bins + signed)
    batches = _growing_batches(rng)
    whole = histogram_of(np.concatenate(batches), bins, signed)
    _assert_same(_feed(batches, bins, signed).result(), whole)
    # the order of the batches does not matter
    _assert_same(_feed(batches[::-1], bins, signed).result(), whole)
    finite = np.concatenate(batches)
    assert whole.total == int(np.isfinite(finite).sum())


@pytest.mark.parametrize("signed", [False, True])
def test_shards_merge_in_any_order(signed: bool) -> None:
    rng = np.random.default_rng(3)
    batches = _growing_batches(rng)
    whole = histogram_of(np.concatenate(batches), 64, signed)
    shards = [_feed(batches[i::3], 64, signed).result() for i in range(3)]
    for order in itertools.permutations(range(3)):
        merged = shards[order[0]]
        for i in order[1:]:
            merged = merge(merged, shards[i])
        _assert_same(merged, whole)
    # the accumulator's merge verb as well
    a, b = _feed(batches[:4], 64, signed), _feed(batches[4:], 64, signed)
    b.merge(a)
    _assert_same(b.result(), whole)


@pytest.mark.parametrize("signed", [False, True])
def test_bin_of_every_value(signed: bool) -> None:
    rng = np.random.default_rng(11)
    x = np.concatenate([rng.standard_normal(400).astype(np.float32) * 3, np.array([0.0, -0.0, 5.0, -5.0], np.float32)])
    h = histogram_of(x, 32, signed)
    expected = np.zeros(32, dtype=np.int64)
    for v in x:
        expected[_bin_of(float(abs(v)) if not signed else float(v), h.edges)] += 1
    np.testing.assert_array_equal(h.counts, expected)
    # width is a power of two and the range covers the largest magnitude
    assert np.frexp(h.width)[0] == 0.5
    absmax = float(np.abs(x).max())
    assert h.edges[-1] > absmax
    if signed:
        assert h.edges[0] <= -absmax and h.edges[0] == -h.edges[-1]
    else:
        assert h.edges[0] == 0.0


def test_zeros_and_empty() -> None:
    zeros = histogram_of(np.zeros(10, np.float32), 16, signed=False)
    assert zeros.counts[0] == 10 and zeros.total == 10
    szeros = histogram_of(np.zeros(10, np.float32), 16, signed=True)
    assert szeros.counts[8] == 10  # the bin [0, w) right of zero
    empty = histogram_of(np.array([np.nan, np.inf], np.float32), 16, signed=False)
    assert empty.total == 0
    acc = HistogramAccumulator(16, signed=False)
    acc.update(np.zeros(0, np.float32), 0.0)
    assert acc.result().total == 0


def test_bad_bins_and_incompatible_merge() -> None:
    with pytest.raises(QuantvizError, match="even number"):
        HistogramAccumulator(15, signed=False)
    a = histogram_of(np.ones(3), 16, signed=False)
    with pytest.raises(QuantvizError, match="same number of bins"):
        merge(a, histogram_of(np.ones(3), 32, signed=False))
    with pytest.raises(QuantvizError, match="same kind"):
        merge(a, histogram_of(np.ones(3), 16, signed=True))


def test_float32_extremes_are_histogrammed() -> None:
    """Attention masks filled with -FLT_MAX (common in exported transformers) must not stop collection."""
    big = np.finfo(np.float32)
    x = np.array([big.min, big.max, 1.0, 0.0, -big.tiny], np.float32)
    for signed in (False, True):
        h = histogram_of(x, 2048, signed)
        assert h.total == x.size
        assert h.edges[-1] > float(big.max)
        expected = np.zeros(2048, np.int64)
        for v in x:
            expected[_bin_of(float(v) if signed else abs(float(v)), h.edges)] += 1
        np.testing.assert_array_equal(h.counts, expected)
    acc = TensorAccumulator("mask", bins=2048)
    acc.update(x)
    assert acc.result().min == float(big.min)


finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)  # the whole float32 range
arrays = hnp.arrays(np.float32, st.integers(0, 40), elements=finite32 | st.sampled_from([0.0, np.nan, np.inf]))


@settings(max_examples=60, deadline=None)
@given(st.lists(arrays, min_size=1, max_size=6), st.sampled_from([16, 128]), st.booleans(), st.randoms())
def test_property_any_split_any_order(batches: list[np.ndarray], bins: int, signed: bool, rnd: random.Random) -> None:
    whole = histogram_of(np.concatenate(batches), bins, signed)
    _assert_same(_feed(batches, bins, signed).result(), whole)
    shuffled = list(batches)
    rnd.shuffle(shuffled)
    parts = [_feed([b], bins, signed).result() for b in shuffled]
    merged = parts[0]
    for p in parts[1:]:
        merged = merge(merged, p)
    _assert_same(merged, whole)
    allv = np.concatenate(batches)
    assert whole.total == int(np.isfinite(allv).sum())
