"""KL / entropy calibration (TensorRT's "entropy calibration", GTC 2017, "8-bit Inference with TensorRT").

For each candidate i in [start, n] over the histogram h of |x| (n = bins up to the last non-empty one):
    P = h[0:i], with the outliers sum(h[i:]) added to P[i-1]
    Q = h[0:i] cut into 128 groups (bin j in group floor(128 j / i), as pytorch-quantization's
        linspace grouping), each group's mass spread evenly over its NON-ZERO bins (zero bins stay 0)
    KL(P || Q) over the normalised P and Q, terms with P = 0 skipped.
Where P > 0 but Q = 0 (the last bin empty while outliers exist) the divergence is infinite: that
candidate cannot win (no smoothing epsilon, so no free parameter).
The threshold is the right edge of bin i-1, T = i * width (pytorch-quantization, the default) or
(i + 0.5) * width (ncnn, the slides). Ties go to the largest i (pytorch-quantization's last argmin).

Exact zeros are left out of bin 0 (as ncnn does when it builds its histogram): ReLU outputs and
padding pile millions of zeros there, and the search would then favour tiny thresholds. The stored
histogram is never modified: we work on a copy.

Speed: the divergence of every candidate is computed at once from prefix sums. With S_g the mass and
z_g the non-zero bin count of group g, and C_i = sum h[0:i], N = sum h:
    sum_j P_j log Q_j = sum_g S_g log(S_g / z_g) + O_i log Q_{i-1}
    KL_i = (sum_j P_j log P_j - sum_j P_j log Q_j) / N + log(C_i / N)
which costs O(128) per candidate instead of O(i). The group terms S_g log(S_g / z_g) are shared:
group [lo, lo + w) is the same for every candidate that uses it, and with 2048 bins and 128 target
bins w <= 16, so 2048 * 16 terms (logarithms) serve all 1921 * 128 (candidate, group) pairs; each
candidate then sums its 128 from that table. About 0.4 ms for 2048 bins (1.8 ms computing every
pair's logarithm).

Two paths compute this: quantviz.kernels.kl_curve, one compiled loop that releases the GIL (so
calibrate's threads use every core) and computes a group's term only when a candidate first reads
it, and the numpy code below, which is its reference and the fallback without numba; tests compare
both with a literal loop of the algorithm.
"""

from __future__ import annotations

import functools
import threading

import numpy as np
import numpy.typing as npt

from quantviz import kernels
from quantviz.calib.result import Curve, MethodConfig, Threshold, make_threshold, require_data
from quantviz.config import KL_BINS
from quantviz.histogram import Histogram, resample
from quantviz.stats import TensorStats


def _xlogx(v: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """v log v, 0 where v <= 0 (masked ufuncs: no boolean gathers and scatters)."""
    v = np.asarray(v, dtype=np.float64)
    pos = v > 0
    out = np.log(v, out=np.zeros_like(v), where=pos)
    np.multiply(out, v, out=out)
    return out


@functools.lru_cache(maxsize=4)
def _plan(rows: int, target: int) -> tuple[npt.NDArray[np.intp], int]:
    """The groups of every candidate i = 1..rows as entries of a (bins, W) table, W = ceil(rows / target).

    Candidate i cuts [0, i) into groups [a_g, a_{g+1}), a_g = ceil(g i / target), of width w <= W.
    Returns (flat, W): flat[i - 1, g] = a_g * W + w - 1 is where group g of candidate i sits in the
    table (row a_g, column w - 1). It depends on the sizes only, so one read-only plan serves every
    tensor (rows are sliced per histogram)."""
    width = -(-rows // target)
    i = np.arange(1, rows + 1, dtype=np.int64)[:, None]
    g = np.arange(target + 1, dtype=np.int64)[None, :]
    a = (g * i + target - 1) // target
    flat = (a[:, :-1] * width + np.maximum(np.diff(a, axis=1), 1) - 1).astype(np.intp)
    flat.flags.writeable = False
    return flat, width


def _windows(cum: npt.NDArray[np.float64], width: int) -> npt.NDArray[np.float64]:
    """out[lo, w - 1] = cum[min(lo + w, n)] - cum[lo] for lo < n = cum.size - 1 and w = 1..width: the
    sums of every window of up to `width` bins, from a prefix sum (a strided view, no gather)."""
    n = cum.size - 1
    padded = np.concatenate((cum, np.full(width, cum[-1])))
    ahead = np.lib.stride_tricks.sliding_window_view(padded[1:], width)[:n]
    return ahead - cum[:n, None]


def kl_curve(counts: npt.ArrayLike, start: int, target: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Candidates i (numbers of bins kept) and KL(P_i || Q_i) for each, vectorised (see module doc)."""
    h = np.asarray(counts, dtype=np.float64)
    n = h.size
    first = max(start, target, 1)
    if n < first:
        return np.array([n], dtype=np.int64), np.array([0.0])
    cand = np.arange(first, n + 1, dtype=np.int64)
    if kernels.available():
        return cand, kernels.kl_curve(np.ascontiguousarray(h), first, target)
    total = h.sum()
    cum = np.concatenate(([0.0], np.cumsum(h)))
    cum_nz = np.concatenate(([0.0], np.cumsum(h > 0, dtype=np.float64)))
    cum_hlogh = np.concatenate(([0.0], np.cumsum(_xlogx(h))))
    # Every group any candidate uses, once: [lo, lo + w) for lo < n and w <= W (n * W entries, 16
    # groups a bin at 2048 bins and 128 target bins, against 128 a candidate), then each candidate's
    # S_g log(S_g / z_g) summed from the table. An empty group has mass 0 and no non-zero bin: TINY
    # added to both makes its ratio 1 and its term TINY * log(1) = 0; every other mass (>= the
    # smallest count, far above TINY) and count (>= 1) is left unchanged by adding TINY.
    flat, width = _plan(max(n, _SHARED_ROWS), target)
    mass = _windows(cum, width)  # mass[lo, w - 1]: bins [lo, lo + w), cut at n
    nonzero = _windows(cum_nz, width)
    q_mean = mass / np.maximum(nonzero, 1.0)
    mass += _TINY
    term = (mass * np.log(mass / (nonzero + _TINY))).ravel()
    rows = flat[first - 1 : n]
    plogq = _group_sums_numpy(term, rows, target)
    q_last = q_mean.ravel()[rows[:, -1]]
    last = h[cand - 1]
    outliers = total - cum[cand]
    p_last = last + outliers
    plogp = cum_hlogh[cand - 1] + _xlogx(p_last)
    q_last = np.where(last > 0, q_last, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogq = plogq + np.where(outliers > 0, outliers * np.log(np.where(q_last > 0, q_last, 1.0)), 0.0)
        kl = (plogp - plogq) / total + np.log(cum[cand] / total)
    kl = np.where((outliers > 0) & (last == 0), np.inf, kl)
    return cand, np.maximum(kl, 0.0)  # rounding can leave -1e-16 where P == Q


def _group_sums_numpy(term: npt.NDArray[np.float64], rows: npt.NDArray[np.intp], target: int) -> npt.NDArray[np.float64]:
    """Each candidate's sum of term over its groups (rows of _plan's flat indices), gathered in blocks
    of candidates into one reused buffer that stays in the caches (the numpy fallback; the compiled
    quantviz.kernels.kl_curve steps through the groups without the 2 MB index table)."""
    plogq = np.empty(rows.shape[0])
    buf = _scratch(min(_BLOCK, rows.shape[0]), target)
    for b in range(0, rows.shape[0], _BLOCK):
        block = rows[b : b + _BLOCK]
        part = np.take(term, block, out=buf[: block.shape[0]])
        np.sum(part, axis=1, out=plogq[b : b + block.shape[0]])
    return plogq


_SHARED_ROWS = 2048  # the default bin count: one plan serves every histogram up to it
_TINY = 1e-300
_BLOCK = 256  # candidates a block: a (256 x 128) float64 buffer, 256 KB
_SCRATCH = threading.local()


def _scratch(rows: int, target: int) -> npt.NDArray[np.float64]:
    """This thread's (rows, target) buffer, reused from tensor to tensor: a fresh 2 MB temporary for
    every tensor costs more (new memory mapped and zeroed) than the sums."""
    have = getattr(_SCRATCH, "buf", None)
    if have is None or have.shape[0] < rows or have.shape[1] != target:
        have = np.empty((max(rows, _BLOCK), target))
        _SCRATCH.buf = have
    return have[:rows]


def kl_histogram(stats: TensorStats, bins: int = KL_BINS) -> Histogram:
    """The histogram KL searches: `bins` bins over [0, abs-max] (TensorRT's grid), re-binned from the
    finest |x| histogram the statistics hold with exact zeros removed from its bin 0 (on a copy).

    Counts are fractional where a source bin straddles a target edge (mass split evenly, at most one
    source bin misplaced per edge: quantviz.histogram.resample)."""
    source = search_source(stats)
    top = stats.absmax if stats.count else 0.0
    if not top > 0:
        top = float(source.edges[-1])
    rebinned = resample(source, bins, top)
    return Histogram(rebinned, np.linspace(0.0, top, bins + 1))  # type: ignore[arg-type]


def search_source(stats: TensorStats) -> Histogram:
    """The finest |x| histogram the statistics hold, exact zeros removed from its bin 0 (a copy)."""
    source = stats.fine_hist if stats.fine_hist is not None else stats.abs_hist
    counts = source.counts.copy()
    counts[0] -= min(stats.zero_count, int(counts[0]))
    return Histogram(counts, source.edges)


def threshold_kl(stats: TensorStats, config: MethodConfig) -> Threshold:
    """TensorRT entropy threshold with the whole KL curve (see module doc)."""
    require_data(stats, "KL")
    hist = kl_histogram(stats, config.kl_bins)
    if hist.total == 0:  # all exact zeros
        return make_threshold("kl", 0.0, 0.0, config, note="all values are exactly zero")
    cand, div = kl_curve(hist.counts, config.kl_start_bin, config.kl_target_bins)
    best = int(len(div) - 1 - np.argmin(div[::-1]))
    offset = 0.5 if config.kl_threshold == "center" else 0.0
    xs = (cand + offset) * hist.width
    t = float(min(xs[best], stats.absmax))  # never beyond what was observed
    curve = Curve(xs.astype(np.float64), div, "threshold", "KL divergence", t)
    lo, hi = (-t, t) if config.symmetric else (max(stats.min, -t), min(stats.max, t))
    source = stats.fine_hist if stats.fine_hist is not None else stats.abs_hist
    return make_threshold(
        "kl", lo, hi, config, curve, bins_used=int(hist.bins), candidate_bins=int(cand[best]), source_bins=int(source.bins)
    )
