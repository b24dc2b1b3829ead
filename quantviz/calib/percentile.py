"""Percentile calibration: clip at the p-th percentile of the data instead of its extreme value.

Symmetric: T = the p-th percentile of |x| (p = MethodConfig.percentile, default 99.99; 99.999 is the
other usual choice), read from the cumulative histogram of |x|. Asymmetric: (100 - p) / 2 % is cut
from each tail of the signed histogram, [lo, hi] = [q((100 - p) / 2), q(100 - (100 - p) / 2)].
This is the "percentile" calibrator of NVIDIA's pytorch-quantization / modelopt and of onnxruntime
(CalibrationMethod.Percentile, which also reads a histogram's CDF).

Inside a bin the values are taken as spread uniformly: the CDF is linear between the bin's edges,
and the percentile is found by linear interpolation inside the bin where the CDF crosses p (so it
is within one bin width of numpy.percentile of the raw values). Exact zeros count as values (they
are part of the data, as in numpy.percentile). The result is clamped to the observed range:
symmetric T to [max(0, min, -max), abs-max] (a constant tensor keeps its value exactly),
asymmetric lo and hi to [min, max]. p = 100 gives MinMax.
"""

from __future__ import annotations

import numpy as np

from quantviz.calib.result import Curve, MethodConfig, Threshold, make_threshold, require_data, require_histogram
from quantviz.histogram import Histogram
from quantviz.stats import TensorStats

PERCENT = 100.0


def histogram_quantile(hist: Histogram, fraction: float) -> float:
    """The value below which `fraction` (0..1) of the histogram's mass lies, linear inside the bin.

    With C_i the cumulative count up to edge i and q = fraction * N, the bin i with C_i < q <= C_{i+1}
    gives x = e_i + (q - C_i) / counts_i * w. fraction 0: the lower edge of the first non-empty bin.
    """
    counts = hist.counts
    cum = np.cumsum(counts, dtype=np.float64)
    total = float(cum[-1]) if cum.size else 0.0
    if total == 0:
        return float(hist.edges[0])
    q = min(max(fraction, 0.0), 1.0) * total
    if q <= 0:
        first = int(np.flatnonzero(counts)[0])
        return float(hist.edges[first])
    i = min(int(np.searchsorted(cum, q, side="left")), counts.size - 1)
    before = float(cum[i - 1]) if i > 0 else 0.0
    inside = (q - before) / float(counts[i]) if counts[i] > 0 else 0.0
    return float(hist.edges[i] + min(max(inside, 0.0), 1.0) * hist.width)


def cdf_curve(hist: Histogram, chosen: float, label: str) -> Curve:
    """The histogram's CDF (in %) at its edges, for the UI."""
    cum = np.concatenate(([0.0], np.cumsum(hist.counts, dtype=np.float64)))
    total = max(cum[-1], 1.0)
    return Curve(hist.edges.astype(np.float64), PERCENT * cum / total, label, "cumulative %", chosen)


def _signed_used(hist: Histogram) -> Histogram:
    nz = np.flatnonzero(hist.counts)
    first, last = int(nz[0]), int(nz[-1]) + 1
    return Histogram(hist.counts[first:last].copy(), hist.edges[first : last + 1].copy())


def threshold_percentile(stats: TensorStats, config: MethodConfig) -> Threshold:
    """Clip at the p-th percentile of |x| (symmetric) or at both tails of x (asymmetric); see module doc."""
    p = config.percentile
    require_data(stats, "Percentile")
    require_histogram(stats, "Percentile", signed=not config.symmetric)
    if config.symmetric:
        hist = stats.abs_hist.used()
        floor = max(0.0, stats.min, -stats.max)  # no |x| lies below this
        t = min(max(histogram_quantile(hist, p / PERCENT), floor), stats.absmax)
        curve = cdf_curve(hist, t, "|x|")
        return make_threshold("percentile", -t, t, config, curve, percentile=p)
    hist = _signed_used(stats.signed_hist)
    tail = (PERCENT - p) / 2 / PERCENT
    lo = min(max(histogram_quantile(hist, tail), stats.min), stats.max)
    hi = min(max(histogram_quantile(hist, 1.0 - tail), stats.min), stats.max)
    curve = cdf_curve(hist, hi, "x")
    return make_threshold("percentile", lo, hi, config, curve, percentile=p, lower=lo, upper=hi)
