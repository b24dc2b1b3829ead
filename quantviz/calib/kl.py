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
which costs O(128) per candidate instead of O(i): about 1 ms for 2048 bins.
"""

from __future__ import annotations

import functools
import threading

import numpy as np
import numpy.typing as npt

from quantviz.calib.result import Curve, MethodConfig, Threshold, make_threshold, require_data
from quantviz.config import KL_BINS
from quantviz.histogram import Histogram, resample
from quantviz.stats import TensorStats


def _xlogx(v: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    out = np.zeros_like(v, dtype=np.float64)
    pos = v > 0
    out[pos] = v[pos] * np.log(v[pos])
    return out


@functools.lru_cache(maxsize=4)
def _group_bounds(n: int, target: int) -> npt.NDArray[np.intp]:
    """a_g = ceil(g i / target) for g = 0..target, one row per candidate i = 1..n. It depends on the
    sizes only, so one read-only table serves every tensor (rows are sliced per histogram)."""
    i = np.arange(1, n + 1, dtype=np.int64)[:, None]
    g = np.arange(target + 1, dtype=np.int64)[None, :]
    out = ((g * i + target - 1) // target).astype(np.intp)
    out.flags.writeable = False
    return out


def kl_curve(counts: npt.ArrayLike, start: int, target: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Candidates i (numbers of bins kept) and KL(P_i || Q_i) for each, vectorised (see module doc)."""
    h = np.asarray(counts, dtype=np.float64)
    n = h.size
    first = max(start, target, 1)
    if n < first:
        return np.array([n], dtype=np.int64), np.array([0.0])
    cand = np.arange(first, n + 1, dtype=np.int64)
    total = h.sum()
    cum = np.concatenate(([0.0], np.cumsum(h)))
    cum_nz = np.concatenate(([0.0], np.cumsum(h > 0, dtype=np.float64)))
    cum_hlogh = np.concatenate(([0.0], np.cumsum(_xlogx(h))))
    bounds = _group_bounds(max(n, _SHARED_ROWS), target)[first - 1 : n]
    m = cand.size
    plogq = np.empty(m)
    q_last = np.empty(m)
    for lo in range(0, m, _BLOCK):  # blocks of candidates: the buffers stay in the CPU's caches
        hi = min(m, lo + _BLOCK)
        rows = bounds[lo:hi]
        edges, mass, ratio = _scratch(hi - lo, target)
        np.take(cum, rows, out=edges)  # one gather per prefix sum, then differences
        np.subtract(edges[:, 1:], edges[:, :-1], out=mass)
        np.take(cum_nz, rows, out=edges)
        np.subtract(edges[:, 1:], edges[:, :-1], out=ratio)  # non-zero bins per group
        q_last[lo:hi] = mass[:, -1] / np.maximum(ratio[:, -1], 1.0)
        # An empty group has mass 0 and no non-zero bin: TINY added to both makes its ratio 1 and its
        # term TINY * log(1) = 0; every other mass (>= the smallest count, far above TINY) and count
        # (>= 1) is left unchanged by adding TINY in floating point.
        mass += _TINY
        ratio += _TINY
        np.divide(mass, ratio, out=ratio)
        plogq[lo:hi] = np.einsum("ij,ij->i", mass, np.log(ratio, out=ratio))
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


_SHARED_ROWS = 2048  # the default bin count: one bounds table serves every histogram up to it
_TINY = 1e-300
_BLOCK = 256  # candidates a block: three (256 x 129) float64 buffers, about 0.8 MB
_SCRATCH = threading.local()


def _scratch(rows: int, target: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """This thread's (rows, target + 1) and two (rows, target) buffers, reused from tensor to tensor:
    fresh 2 MB temporaries for every tensor cost more (new memory mapped and zeroed) than the search."""
    have = getattr(_SCRATCH, "bufs", None)
    if have is None or have[0].shape[0] < rows or have[0].shape[1] != target + 1:
        have = (np.empty((rows, target + 1)), np.empty((rows, target)), np.empty((rows, target)))
        _SCRATCH.bufs = have
    return have[0][:rows], have[1][:rows], have[2][:rows]


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
