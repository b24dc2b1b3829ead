"""KL as ncnn computes it (tools/quantize/ncnn2table.cpp, QuantNet::quantize_KL): a second KL method.

Histogram: the same grid as `kl` (quantviz.calib.kl.kl_histogram): `bins` bins of |x| over
[0, abs-max], exact zeros left out (ncnn skips them when it counts), normalised to sum 1: h.

For each candidate t in [start, bins) (ncnn stops one short of the last bin; `kl` includes it):
    P_k = h_k + eps for k < t, with the outliers sum(h[t:]) added to P[t-1]
    Q: the range [0, t) cut into 128 groups of equal width w = t / 128 bins, boundaries at fractional
       positions j w; group j's value q_j is its mass (boundary bins counted by the fraction inside)
       divided by w: the mean over ALL its bins, empty ones included;
    E_k = eps + the q_j of the group(s) bin k overlaps, weighted by the overlap (a bin that straddles
       a boundary gets a mix of both groups);
    KL_t = sum_k P_k log(P_k / E_k), P and E NOT renormalised after eps.
eps = 1e-4 (ncnn's kl_eps). The first least KL wins (ncnn's strict <), and the threshold is the
centre of the argmin bin, T = (t + 0.5) * abs-max / bins.

How it differs from `kl` (TensorRT / pytorch-quantization): Q spreads each group over its non-zero
bins only and leaves empty bins at 0, so `kl` sees an infinite divergence where P has mass that Q
cannot represent; ncnn smooths every bin with eps instead, so empty bins cost a finite amount, and its
fractional groups make the curve smoother. On sparse or heavy-tailed histograms ncnn's minimum tends
to sit at a larger threshold.

Speed: with w >= 1 a bin overlaps at most two groups, so E is constant (eps + q_j) on the bins fully
inside group j and each of the <= 127 straddling bins is handled on its own. Prefix sums of h, of
h + eps and of (h + eps) log(h + eps) then give every candidate in O(128), all candidates at once.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from quantviz.calib.kl import kl_histogram
from quantviz.calib.result import Curve, MethodConfig, Threshold, make_threshold, require_data
from quantviz.stats import TensorStats

KL_EPS = 1e-4  # ncnn2table's kl_eps


def ncnn_kl_curve(
    hist: npt.ArrayLike, start: int, target: int, eps: float = KL_EPS
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Candidates t = max(start, target) .. len(hist) - 1 and ncnn's KL for each (see module doc)."""
    counts = np.asarray(hist, dtype=np.float64)
    n = counts.size
    first = max(start, target, 1)
    total = counts.sum()
    if n - 1 < first or total <= 0:
        return np.array([n], dtype=np.int64), np.array([0.0])
    h = counts / total
    cand = np.arange(first, n, dtype=np.int64)
    cum = np.concatenate(([0.0], np.cumsum(h)))
    pe = h + eps
    cum_pe = np.concatenate(([0.0], np.cumsum(pe)))
    pe_log = pe * np.log(pe)
    cum_pelog = np.concatenate(([0.0], np.cumsum(pe_log)))

    t = cand[:, None]
    j = np.arange(target + 1, dtype=np.int64)[None, :]
    num = j * t  # boundary j sits at num / target bins
    whole = num // target  # the bin that holds boundary j
    frac = (num % target) / target  # how far into that bin
    hpad = np.append(h, 0.0)  # boundary j = target sits at bin t: a fraction 0 of a bin past the range
    cum_at = cum[whole] + frac * hpad[whole]  # mass below boundary j
    w = cand / target
    q = (cum_at[:, 1:] - cum_at[:, :-1]) / w[:, None]  # (cand, target)

    # bins fully inside group j: [ceil(b_j), floor(b_{j+1}))
    lo = -(-num[:, :-1] // target)
    hi = whole[:, 1:]
    inner = cum_pe[hi] - cum_pe[lo]  # sum of P over them (before the outliers)
    plogq = np.einsum("ij,ij->i", inner, np.log(eps + q))
    # bins that straddle boundary j (1..target-1): a part a in group j-1, 1 - a in group j
    s = whole[:, 1:-1]
    a = frac[:, 1:-1]
    straddle = a > 0
    e_s = eps + a * q[:, :-1] + (1.0 - a) * q[:, 1:]
    plogq += np.where(straddle, pe[s] * np.log(e_s), 0.0).sum(axis=1)
    # the outliers join P's last bin, which lies inside the last group (w >= 1)
    out = 1.0 - cum[cand]
    plogq += out * np.log(eps + q[:, -1])
    last = pe[cand - 1]
    plogp = cum_pelog[cand - 1] + (last + out) * np.log(last + out)
    return cand, plogp - plogq


def threshold_kl_ncnn(stats: TensorStats, config: MethodConfig) -> Threshold:
    """ncnn's KL threshold with its whole curve (see module doc)."""
    require_data(stats, "KL (ncnn)")
    hist = kl_histogram(stats, config.kl_bins)
    if hist.total == 0:
        return make_threshold("kl_ncnn", 0.0, 0.0, config, note="all values are exactly zero")
    if stats.constant:  # every candidate clips the one value; quantviz keeps it (as `kl` does)
        return make_threshold("kl_ncnn", stats.min, stats.max, config, note="constant tensor: its value kept")
    cand, div = ncnn_kl_curve(hist.counts, config.kl_start_bin, config.kl_target_bins)
    best = int(np.argmin(div))  # the first least, as ncnn's strict <
    xs = (cand + 0.5) * hist.width
    t = float(min(xs[best], stats.absmax))
    curve = Curve(xs.astype(np.float64), div, "threshold", "KL divergence (ncnn)", t)
    lo, hi = (-t, t) if config.symmetric else (max(stats.min, -t), min(stats.max, t))
    return make_threshold("kl_ncnn", lo, hi, config, curve, bins_used=int(hist.bins), candidate_bins=int(cand[best]))
