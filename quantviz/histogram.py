"""Histograms with power-of-two bin widths: built in one streaming pass, merged exactly.

Why power-of-two widths (the design choice ALGORITHMS.md asks us to document): the range of a
tensor is unknown until the whole calibration set has been seen, and we stream the set through the
model once. A histogram here always has ``bins`` bins of width ``w = 2**e`` with ``e`` the smallest
integer such that the histogram covers the largest |x| seen so far (strictly: bins * w > abs-max for
|x|; bins/2 * w > abs-max for the signed histogram). When a larger value arrives, e grows and every
group of 2**(e_new - e_old) adjacent bins is summed into one: no count moves between bins by
interpolation, so

* the result does not depend on the order of batches, and
* histograms of shards (of the data set, of workers) merge EXACTLY into the histogram of the whole:
  floor(x / 2**E) == floor(floor(x / 2**e) / 2**(E - e)) for E >= e, and x * 2**-e is exact in
  floating point.

The price: the populated part of the histogram [0, abs-max] spans between bins/2 and bins bins
(pytorch-quantization's growing histogram pays a similar price by keeping its first width).
Collect with more bins where resolution matters. Exact zeros are counted like any value (in bin 0 of
|x|, and in the bin right of 0 of the signed histogram); calibration methods that must ignore them
(KL) subtract TensorStats.zero_count from bin 0 on a copy.
"""

from __future__ import annotations

import math
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from quantviz import kernels
from quantviz.errors import QuantvizError

# Bin widths 2**e for e in [MIN_EXPONENT, MAX_EXPONENT]. x * 2**-e is exact in float32 wherever the
# product is >= 1 (the only place a bin index depends on it), also when 2**-e itself is subnormal
# (2**-128 is). MAX_EXPONENT = 128 covers every float32 value, -FLT_MAX included (attention masks).
MIN_EXPONENT = -100
MAX_EXPONENT = 128
# Right shifts beyond this many bits leave 0 (or -1) for every index we can hold.
_MAX_SHIFT = 62


@dataclass(frozen=True)
class Histogram:
    """Counts over equal-width bins: counts[i] counts values in [edges[i], edges[i+1])."""

    counts: npt.NDArray[np.int64]
    edges: npt.NDArray[np.float64]

    @property
    def bins(self) -> int:
        return int(self.counts.size)

    @property
    def width(self) -> float:
        return float(self.edges[1] - self.edges[0])

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def signed(self) -> bool:
        return bool(self.edges[0] < 0)

    @property
    def centers(self) -> npt.NDArray[np.float64]:
        return (self.edges[:-1] + self.edges[1:]) / 2

    def used(self) -> Histogram:
        """The histogram cut after its last non-empty bin (|x| histograms; at least one bin)."""
        nz = np.flatnonzero(self.counts)
        last = int(nz[-1]) + 1 if nz.size else 1
        return Histogram(self.counts[:last].copy(), self.edges[: last + 1].copy())


def _check_bins(bins: int) -> None:
    if bins < 2 or bins % 2:
        raise QuantvizError(f"The number of histogram bins must be an even number of at least 2, not {bins}.")


def exponent_for(absmax: float, bins: int, min_exponent: int = MIN_EXPONENT) -> int:
    """Smallest e in [min_exponent, MAX_EXPONENT] with bins * 2**e > absmax."""
    if not np.isfinite(absmax):
        raise QuantvizError("A histogram range cannot be built from an infinite or NaN value.")
    if absmax <= 0:
        return min_exponent
    e = int(np.ceil(np.log2(absmax / bins)))
    while np.ldexp(float(bins), e) <= absmax:
        e += 1
    while e - 1 >= min_exponent and np.ldexp(float(bins), e - 1) > absmax:
        e -= 1
    if e > MAX_EXPONENT:
        raise QuantvizError(f"Values as large as {absmax:g} cannot be histogrammed (beyond 2**{MAX_EXPONENT}).")
    return max(e, min_exponent)


# The shared edge arrays kept, by bytes: hostile files with many exponents and large bin counts must not
# make the cache grow without bound (1024 arrays of 2**18 + 1 edges would be 2 GB).
EDGES_CACHE_BYTES = 64 << 20
_edges_cache: OrderedDict[tuple[int, int, bool], npt.NDArray[np.float64]] = OrderedDict()
_edges_bytes = 0
_edges_lock = threading.Lock()


def edges_for(exponent: int, bins: int, signed: bool) -> npt.NDArray[np.float64]:
    """Bin edges k * 2**exponent. One shared READ-ONLY array per (exponent, bins, kind): a collection
    of hundreds of tensors holds a few dozen edge arrays instead of two per tensor (14 MB for 432
    tensors at 2048 bins). Copy before editing (nothing in quantviz edits edges). The cache holds at
    most EDGES_CACHE_BYTES (least recently used arrays go first)."""
    global _edges_bytes
    key = (int(exponent), int(bins), bool(signed))
    with _edges_lock:
        hit = _edges_cache.get(key)
        if hit is not None:
            _edges_cache.move_to_end(key)
            return hit
    start = -(bins // 2) if signed else 0
    edges = np.ldexp(np.arange(start, start + bins + 1, dtype=np.float64), exponent)
    edges.flags.writeable = False
    with _edges_lock:
        if key not in _edges_cache and edges.nbytes <= EDGES_CACHE_BYTES:
            _edges_cache[key] = edges
            _edges_bytes += edges.nbytes
            while _edges_bytes > EDGES_CACHE_BYTES:
                _, old = _edges_cache.popitem(last=False)
                _edges_bytes -= old.nbytes
    return edges


def edges_cache_bytes() -> int:
    """Bytes the shared edge arrays hold now."""
    return _edges_bytes


def exponent_of(hist: Histogram) -> int:
    """The e of a histogram built here (width == 2**e)."""
    mantissa, e = np.frexp(hist.width)
    if mantissa != 0.5:
        raise QuantvizError("This histogram does not have a power-of-two bin width; it cannot be merged exactly.")
    return int(e) - 1


def bin_indices(values: npt.NDArray[np.floating], exponent: int, bins: int, signed: bool) -> npt.NDArray[np.int64]:
    """Bin index of each finite value for a histogram of width 2**exponent (exact, see module doc)."""
    scale = np.float32(np.ldexp(1.0, -exponent)) if values.dtype == np.float32 else np.ldexp(1.0, -exponent)
    if signed:
        scaled = values * scale
        idx = np.floor(scaled).astype(np.int64)
        if exponent > 0:
            # A tiny negative x can underflow to -0.0 when scaled (x = -1e-30 with a width of 2**56):
            # its bin is the one left of zero, floor would say the one right of it.
            idx[(scaled == 0) & (values < 0)] = -1
        idx += bins // 2
    else:
        idx = (np.abs(values) * scale).astype(np.int64)  # truncation == floor for |x| >= 0
    out: npt.NDArray[np.int64] = idx
    return out


def coarsen(counts: npt.NDArray[np.int64], shift: int, signed: bool) -> npt.NDArray[np.int64]:
    """Counts re-binned to a width 2**shift times larger: old bin groups summed, no interpolation."""
    if shift == 0:
        return counts.copy()
    bins = counts.size
    idx = np.arange(bins, dtype=np.int64)
    s = min(shift, _MAX_SHIFT)
    if signed:
        new_idx = ((idx - bins // 2) >> s) + bins // 2
    else:
        new_idx = idx >> s
    out = np.zeros(bins, dtype=np.int64)
    np.add.at(out, new_idx, counts)
    return out


def merge(a: Histogram, b: Histogram) -> Histogram:
    """Exact merge of two power-of-two-width histograms of the same kind and bin count."""
    if a.bins != b.bins or a.signed != b.signed:
        raise QuantvizError("Only histograms with the same number of bins and the same kind can be merged.")
    ea, eb = exponent_of(a), exponent_of(b)
    e = max(ea, eb)
    counts = coarsen(a.counts, e - ea, a.signed) + coarsen(b.counts, e - eb, b.signed)
    return Histogram(counts, edges_for(e, a.bins, a.signed))


def histogram_of(values: npt.ArrayLike, bins: int, signed: bool) -> Histogram:
    """The histogram of all finite values at once (reference for the streaming accumulator)."""
    x = np.asarray(values).ravel()
    x = x[np.isfinite(x)]
    _check_bins(bins)
    absmax = float(np.abs(x).max()) if x.size else 0.0
    e = exponent_for(absmax, bins // 2 if signed else bins)
    counts = np.bincount(bin_indices(x, e, bins, signed), minlength=bins).astype(np.int64)
    return Histogram(counts, edges_for(e, bins, signed))


def abs_and_signed_counts(
    values: npt.NDArray[np.floating], exponent: int, bins: int, nonnegative: bool, signed_bins: int | None = None
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], int]:
    """Counts of |x| (bins bins of width 2**exponent) and of x (signed_bins bins, default bins, of
    width 2**(exponent + s) with 2**s = 2 * bins / signed_bins), in one bincount.

    The collection hot spot: equal to bin_indices + bincount done twice (tests compare), for about
    half the cost. Requires finite values with every |x| < bins * 2**exponent. With u = x / 2**exponent
    (exact, see the module doc) and k = floor(u), one bincount over k in [-bins, bins) gives
    * the signed counts: floor(x / 2**(exponent + s)) = floor(k / 2**s) = k >> s, i.e. runs of 2**s
      fine bins summed;
    * the |x| counts: bin a holds k = a (x >= 0) and k = -(a + 1) (x < 0), except that a negative x
      lying exactly on an edge (u = -m, an integer) has k = -m but |x| in bin m: those few values are
      counted apart and moved.
    nonnegative (the caller knows min(x) >= 0: ReLU outputs) skips the signed half: k = trunc(u).
    The third result is the number of exact zeros, read off the values on the grid where no product
    can underflow (exponent <= 0: u == 0 only for x == 0), else counted; 0 when bin 0 is empty.

    Speed: float32 values on a grid of width <= 1 (all activations but the huge ones) go through
    one compiled loop instead (quantviz.kernels.add_counts, same counts: the tests compare both):
    1.7-2.5x faster on a real OCR recogniser's activations (bench/README.md). The numpy path
    below takes the values CHUNK at a time through per-thread scratch buffers that are reused from
    call to call (quantviz.histogram._scratch). Fresh temporaries of each tensor's size cost more
    than the arithmetic: every one is new memory the kernel must map and zero. Measured on a real
    OCR recogniser's 403 activations of one sample (50 M values): the elementwise product alone took
    0.23 s into new arrays and 0.035 s into a reused buffer; every tensor's update went from 0.65 to
    0.35 s (bench/README.md has the whole collection against float inference).
    """
    signed_bins = bins if signed_bins is None else signed_bins
    abs_total = np.zeros(bins, dtype=np.int64)
    signed_total = np.zeros(signed_bins, dtype=np.int64)
    zeros = add_pair_counts(values, exponent, bins, nonnegative, signed_bins, abs_total, signed_total)
    return abs_total, signed_total, zeros


def add_pair_counts(
    values: npt.NDArray[np.floating], exponent: int, bins: int, nonnegative: bool, signed_bins: int,
    abs_out: npt.NDArray[np.int64], signed_out: npt.NDArray[np.int64], compiled: bool = True,
) -> int:  # fmt: skip
    """abs_and_signed_counts added into abs_out and signed_out (int64, updated in place); returns the
    number of exact zeros. float32 values on a grid of width <= 1 go through the compiled loop of
    quantviz.kernels (same counts, about 3x faster); the rest, or compiled=False, through
    numpy."""
    values = values.reshape(-1)
    group = 2 * bins // signed_bins
    if (
        compiled and values.dtype == np.float32 and exponent <= 0 and kernels.available()
        and group >= 1 and group * signed_bins == 2 * bins and group & (group - 1) == 0
    ):  # fmt: skip
        shift = group.bit_length() - 1
        scale = np.float32(math.ldexp(1.0, -exponent))
        return kernels.add_counts(np.ascontiguousarray(values), scale, bins, shift, abs_out, signed_out, _fine_scratch(bins))[1]
    zeros = 0
    for i in range(0, max(values.size, 1), CHUNK):
        a, sc, z = _counts_chunk(values[i : i + CHUNK], exponent, bins, nonnegative, signed_bins)
        abs_out += a
        signed_out += sc
        zeros += z
    return zeros


def _fine_scratch(bins: int) -> npt.NDArray[np.int32]:
    """This thread's 2 * bins int32 of scratch for the compiled loop (all zero: each use leaves it so)."""
    have = getattr(_SCRATCH, "fine", None)
    if have is None or have.size != 2 * bins:
        have = np.zeros(2 * bins, np.int32)
        _SCRATCH.fine = have
    return have


# Values per pass of abs_and_signed_counts: its scratch buffers (4 + 4 + 1 + 8 bytes a value, 4.5 MB)
# stay in the caches and are never re-allocated.
CHUNK = 1 << 18
_SCRATCH = threading.local()


def _scratch(n: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.bool_], npt.NDArray[np.intp]]:
    """This thread's reusable buffers, cut to n values (n <= CHUNK)."""
    bufs = getattr(_SCRATCH, "bufs", None)
    if bufs is None:
        bufs = (np.empty(CHUNK, np.float32), np.empty(CHUNK, np.float32), np.empty(CHUNK, np.bool_), np.empty(CHUNK, np.intp))
        _SCRATCH.bufs = bufs
    return bufs[0][:n], bufs[1][:n], bufs[2][:n], bufs[3][:n]


def _counts_chunk(
    values: npt.NDArray[np.floating], exponent: int, bins: int, nonnegative: bool, signed_bins: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], int]:
    """abs_and_signed_counts of at most CHUNK values (the arithmetic of its docstring)."""
    group = 2 * bins // signed_bins  # fine bins per signed bin, a power of two
    scale = math.ldexp(1.0, -exponent)
    half = signed_bins // 2
    n = values.size
    if values.dtype == np.float32:
        f1, f2, flag, idx = _scratch(n)
        scaled = np.multiply(values, np.float32(scale), out=f1)
    else:  # float64 (or other) input: plain temporaries, as before
        scaled = values * scale
        f2, flag, idx = np.empty_like(scaled), np.empty(n, np.bool_), np.empty(n, np.intp)
    if nonnegative:
        np.copyto(idx, scaled, casting="unsafe")  # truncation == floor for x >= 0
        abs_counts = np.bincount(idx, minlength=bins)
        signed_counts = np.zeros(signed_bins, dtype=np.int64)
        signed_counts[half:] = abs_counts.reshape(half, group).sum(axis=1)
        zeros = int(np.count_nonzero(np.equal(values, 0, out=flag))) if abs_counts[0] else 0
        return abs_counts.astype(np.int64, copy=False), signed_counts, zeros
    k = np.floor(scaled, out=f2)
    if exponent > 0:
        # A tiny negative x can underflow to -0.0 when scaled: its k is -1 (see bin_indices).
        k[(scaled == 0) & (values < 0)] = -1
    on_grid = np.equal(k, scaled, out=flag)  # x an exact multiple of the width (zeros included): usually few
    grid = k[on_grid] if on_grid.any() else k[:0]
    k += bins  # exact: k holds integers in [-bins, bins)
    np.copyto(idx, k, casting="unsafe")
    fine = np.bincount(idx, minlength=2 * bins)
    abs_counts = fine[bins:] + fine[bins - 1 :: -1]
    edge = grid[grid < 0]  # negative x on an edge: k = -m, |x| in bin m, not m - 1
    if edge.size:
        m = np.bincount((-edge).astype(np.intp), minlength=bins + 1)
        abs_counts += m[:bins] - m[1:]
    signed_counts = fine.reshape(signed_bins, group).sum(axis=1)
    if not abs_counts[0]:
        zeros = 0
    elif exponent <= 0:
        zeros = int(np.count_nonzero(grid == 0))
    else:
        zeros = int(np.count_nonzero(values == 0))
    return abs_counts.astype(np.int64, copy=False), signed_counts.astype(np.int64, copy=False), zeros


def update_pair(
    abs_acc: HistogramAccumulator, signed_acc: HistogramAccumulator, finite_values: npt.NDArray[np.floating],
    absmax: float, nonnegative: bool,
) -> int | None:  # fmt: skip
    """abs_acc.update(...) and signed_acc.update(...) in one pass where their widths allow it.

    Both cover the same running abs-max, so the signed width is normally 2 * abs_bins / signed_bins
    times the |x| width (signed_bins/2 * 2**(e+s) == abs_bins * 2**e); when it is not (clamped at
    their smallest exponent) the two are updated separately. Counts are identical either way.
    Returns the number of exact zeros among the values when the one pass found it (see
    abs_and_signed_counts), else None.
    """
    if finite_values.size == 0:
        return 0
    abs_acc._cover(absmax)  # noqa: SLF001 - same module
    signed_acc._cover(absmax)  # noqa: SLF001
    if _pair_shift(abs_acc, signed_acc) is not None:
        return add_pair_counts(
            finite_values, abs_acc._exponent, abs_acc.bins, nonnegative, signed_acc.bins,  # noqa: SLF001
            abs_acc._counts, signed_acc._counts,  # noqa: SLF001
        )  # fmt: skip
    abs_acc.update(finite_values, absmax)
    signed_acc.update(finite_values, absmax)
    return None


def _pair_shift(abs_acc: HistogramAccumulator, signed_acc: HistogramAccumulator) -> int | None:
    """The s of update_pair's one-pass layout (signed width = 2**s |x| widths) when the pair is in it."""
    ratio = 2 * abs_acc.bins // signed_acc.bins
    if (
        not abs_acc.signed
        and signed_acc.signed
        and 2 * abs_acc.bins % signed_acc.bins == 0
        and ratio & (ratio - 1) == 0
        and signed_acc._exponent == abs_acc._exponent + ratio.bit_length() - 1  # noqa: SLF001
    ):
        return ratio.bit_length() - 1
    return None


_FLOAT_BITS_IN = struct.Struct("<f")
_FLOAT_BITS = struct.Struct("<I")


def update_pair_within(
    abs_acc: HistogramAccumulator, signed_acc: HistogramAccumulator, values: npt.NDArray[np.floating]
) -> tuple[int, int, float, float] | None:
    """update_pair without knowing the values' min and max first: the leading values that lie on the
    pair's CURRENT grid (every |x| below its top, all finite) are counted in one compiled pass that
    also finds their min and max (quantviz.kernels.add_counts with a limit), saving the two numpy
    reductions update_pair's caller runs before it (about a quarter of the pass). Once a running
    range has been seen, later batches rarely exceed it. Returns (values counted, exact zeros among
    them, their min, their max), or None where the pass does not apply (float64 values, a grid wider
    than 1, the pair out of its one-pass layout, nothing counted): then the
    caller counts the rest, e.g. with update_pair, which widens the grid first if it must. Counting
    the two parts on two grids gives the counts of one pass on the wider one, exactly (see the module
    docstring: widening only sums whole bins)."""
    values = values.reshape(-1)
    shift = _pair_shift(abs_acc, signed_acc)
    e = abs_acc._exponent  # noqa: SLF001
    if shift is None or e > 0 or values.dtype != np.float32 or not kernels.available():
        return None
    values = np.ascontiguousarray(values)
    limit = _FLOAT_BITS.unpack(_FLOAT_BITS_IN.pack(math.ldexp(float(abs_acc.bins), e)))[0]  # exact: a power of two times bins
    scale = np.float32(math.ldexp(1.0, -e))
    counted, zeros, lo, hi = kernels.add_counts(
        values, scale, abs_acc.bins, shift, abs_acc._counts, signed_acc._counts, _fine_scratch(abs_acc.bins), limit  # noqa: SLF001
    )
    return (counted, zeros, lo, hi) if counted else None


class HistogramAccumulator:
    """Streaming histogram of |x| (signed=False) or x (signed=True); update / merge / result."""

    def __init__(self, bins: int, signed: bool, min_exponent: int = MIN_EXPONENT) -> None:
        """min_exponent: the narrowest width 2**min_exponent; a histogram with 2**k times more bins
        than another starts k lower, so that it coarsens exactly into it (see coarsened)."""
        _check_bins(bins)
        self.bins = bins
        self.signed = signed
        self._span = bins // 2 if signed else bins
        self._min_exponent = min_exponent
        self._exponent = min_exponent
        self._counts = np.zeros(bins, dtype=np.int64)

    def update(self, finite_values: npt.NDArray[np.floating], absmax: float) -> None:
        """Add finite values whose largest magnitude is absmax (computed once by the caller)."""
        if finite_values.size == 0:
            return
        self._cover(absmax)
        idx = bin_indices(finite_values, self._exponent, self.bins, self.signed)
        self._counts += np.bincount(idx, minlength=self.bins)

    def _cover(self, absmax: float) -> None:
        """Widen the bins (whole-bin merges) until they cover absmax."""
        if math.ldexp(self._span, self._exponent) <= absmax:
            e = max(exponent_for(absmax, self._span, self._min_exponent), self._min_exponent)
            self._counts = coarsen(self._counts, e - self._exponent, self.signed)
            self._exponent = e

    def merge(self, other: HistogramAccumulator) -> None:
        merged = merge(self.result(), other.result())
        self._counts = merged.counts
        self._exponent = exponent_of(merged)

    def result(self) -> Histogram:
        return Histogram(self._counts.copy(), edges_for(self._exponent, self.bins, self.signed))


def resample(hist: Histogram, bins: int, top: float) -> npt.NDArray[np.float64]:
    """Counts of an |x| histogram re-binned to `bins` equal bins over [0, top] (top = abs-max).

    The cumulative count is interpolated linearly inside the source bin that holds a target edge
    (values spread evenly over a bin, the only assumption a histogram allows); the source bin that
    holds `top` is taken to end at `top` (no value lies beyond it), and the last target edge gets the
    whole total. So the mass misplaced at each target edge is at most the count of the one source bin
    that holds it, and the result sums exactly to the total (tests check both against np.histogram).
    """
    if hist.signed:
        raise QuantvizError("Only histograms of |x| can be re-binned over [0, abs-max].")
    counts = hist.counts.astype(np.float64)
    total = float(counts.sum())
    if bins < 1 or not (top > 0) or not math.isfinite(top) or total == 0:
        out = np.zeros(max(bins, 1))
        out[-1] = total
        return out
    width = hist.width
    cum = np.concatenate(([0.0], np.cumsum(counts)))
    # Source edges, the bin holding `top` cut at `top` (bins beyond it are empty).
    last = min(int(top // width), counts.size - 1)
    src = np.arange(counts.size + 1, dtype=np.float64) * width
    src[last + 1 :] = top
    targets = np.arange(bins + 1, dtype=np.float64) * (top / bins)
    j = np.clip(np.searchsorted(src, targets, side="right") - 1, 0, counts.size - 1)
    span = src[j + 1] - src[j]
    frac = np.divide(targets - src[j], span, out=np.ones_like(targets), where=span > 0)
    c = cum[j] + np.clip(frac, 0.0, 1.0) * counts[j]
    c[0] = 0.0
    c[-1] = total
    return np.diff(c)


def coarsened(hist: Histogram, bins: int) -> Histogram:
    """The same |x| histogram with `bins` bins, 2**k times wider (runs of 2**k bins summed; exact).

    This is how the 2048-bin |x| histogram every method reads comes out of the finer one KL searches:
    a HistogramAccumulator of 2**k * bins bins whose smallest exponent is MIN_EXPONENT - k coarsens
    into exactly the histogram an accumulator of `bins` bins would have built (same values, same
    edges), for any data: both choose the smallest width that covers the abs-max.
    """
    ratio = hist.bins // bins if bins else 0
    if hist.signed or ratio < 1 or hist.bins % bins or ratio & (ratio - 1):
        raise QuantvizError(f"A histogram of {hist.bins} bins cannot be coarsened exactly into {bins} bins.")
    if ratio == 1:
        return hist
    shift = ratio.bit_length() - 1
    counts = hist.counts.reshape(bins, ratio).sum(axis=1)
    return Histogram(counts, edges_for(exponent_of(hist) + shift, bins, False))


def fine_bins_for(bins: int, fine_bins: int) -> int:
    """The smallest power-of-two multiple of bins that is at least fine_bins (the fine |x| histogram
    must coarsen exactly into the bins-bin one)."""
    out = bins
    while out < fine_bins:
        out *= 2
    return out
