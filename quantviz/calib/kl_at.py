"""The divergence of either KL method at ANY threshold, not only at its candidates.

The KL page lets a user type a threshold. On the searched grid (2048 bins over [0, abs-max]) a
threshold at or above the first candidate is read as the candidate whose bin it names: the value is
then the curve's own. Below the first candidate the grid has fewer than 128 bins to quantize, so the
histogram is re-binned for this one threshold: `target` bins over [0, T] plus one bin that holds
every value beyond T (the outliers P folds into its last bin), and the method's divergence of keeping
those `target` bins is computed on it. A tiny threshold thus shows the cost of clipping almost
everything, not the value at the first candidate.
"""

from __future__ import annotations

import math

from quantviz.calib.kl import kl_curve, kl_histogram, search_source
from quantviz.calib.kl_ncnn import ncnn_kl_curve
from quantviz.calib.result import MethodConfig
from quantviz.errors import QuantvizError
from quantviz.histogram import resample
from quantviz.stats import TensorStats

KL_METHODS = ("kl", "kl_ncnn")


def kl_at(stats: TensorStats, threshold: float, config: MethodConfig, method: str = "kl") -> float:
    """KL divergence of clipping |x| at `threshold` under `method` ("kl": TensorRT, "kl_ncnn": ncnn)."""
    if method not in KL_METHODS:
        raise QuantvizError(f"kl_at computes the KL methods only ({', '.join(KL_METHODS)}), not '{method}'.")
    if stats.empty or not stats.absmax > 0:
        return 0.0
    if not (threshold > 0 and math.isfinite(threshold)):
        raise QuantvizError(f"A threshold must be a positive number, not {threshold}.")
    t = min(float(threshold), float(stats.absmax))
    target = config.kl_target_bins
    ncnn = method == "kl_ncnn"
    curve = ncnn_kl_curve if ncnn else kl_curve
    offset = 0.5 if ncnn or config.kl_threshold == "center" else 0.0
    bins = config.kl_bins
    width = stats.absmax / bins
    first = max(config.kl_start_bin, target)
    i = int(round(t / width - offset))
    if i >= first:  # on the searched grid: the curve's own value at candidate i
        hist = kl_histogram(stats, bins)
        last = bins - 1 if ncnn else bins
        cand, div = curve(hist.counts, min(i, last), target)
        return float(div[0])
    # below the first candidate: `target` bins over [0, t], the rest in one more bin
    counts = resample(search_source(stats), target + 1, t * (target + 1) / target)
    if counts.sum() == 0:
        return 0.0
    _, div = curve(counts, target, target)
    return float(div[0])
