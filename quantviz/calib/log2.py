"""Log2 quantization beside linear int8 for one tensor (the seed notes' linear-versus-log contrast).

Log2 scheme (Miyashita, Lee, Murmann 2016, "Convolutional Neural Networks using Logarithmic Data
Representation", arXiv 1603.01025): x -> sign(x) * 2^round(log2 |x|), the exponent clipped to the
top level. With 8-bit codes: 1 sign bit + a 7-bit index; index 0 is zero, indices 1..127 are the
magnitudes 2^(E-126) .. 2^E, where E = round(log2 T) is the level nearest the threshold T in the log
domain (Miyashita's "full scale range"). Rounding happens in the log domain, so the boundary between
2^n and 2^(n+1) is 2^(n + 1/2) (the geometric mean), not the midpoint; |x| >= 2^(E - 1/2) maps to 2^E
(saturation), |x| < 2^(E - 126.5) maps to 0 (underflow).
Linear is the symmetric int8 grid of the same T: s = T / 127 (float32), q = clip(round(x / s), -127, 127).

From a histogram of |x| both errors are integrated exactly for values spread uniformly inside each
bin: each bin is cut at the scheme's rounding boundaries and integral (x - level)^2 is summed over
the pieces. Exact zeros (TensorStats.zero_count) sit at 0, which both schemes represent exactly.
From raw values both errors are computed directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from quantviz.calib.mse import without_zeros
from quantviz.calib.result import require_data, require_histogram
from quantviz.config import DEFAULT_BINS, INT8_MAX
from quantviz.errors import QuantvizError
from quantviz.fakequant import fake_quantize, symmetric_scale
from quantviz.histogram import Histogram, histogram_of
from quantviz.stats import TensorStats

# 8-bit log code: 1 sign bit, index 0 for zero, 127 exponent levels 2^(E-126) .. 2^E.
LOG2_LEVELS = 127

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Log2Comparison:
    """Linear int8 and log2 quantization of one tensor at one threshold.

    linear_mse / log2_mse: mean squared error over all values (exact zeros included).
    centers, counts: the |x| bins; linear_error / log2_error: the mean squared error of a value in
    each bin (NaN where a bin is empty), for the UI to draw both error curves against |x|.
    """

    threshold: float
    scale: float
    top_exponent: int
    linear_mse: float
    log2_mse: float
    centers: FloatArray
    counts: npt.NDArray[np.int64]
    linear_error: FloatArray
    log2_error: FloatArray


def top_exponent(threshold: float) -> int:
    """E = round(log2 T): the log2 level nearest T in the log domain."""
    if not math.isfinite(threshold) or threshold <= 0:
        raise QuantvizError(f"Log2 quantization needs a positive finite threshold, not {threshold}.")
    return int(np.round(np.log2(threshold)))


def log2_quantize(x: npt.ArrayLike, exponent: int) -> FloatArray:
    """sign(x) * 2^clip(round(log2 |x|), E-126, E), 0 where the rounded exponent is below E-126."""
    v = np.asarray(x, dtype=np.float64)
    mag = np.abs(v)
    with np.errstate(divide="ignore"):
        n = np.round(np.log2(np.where(mag > 0, mag, 1.0)))
    n = np.minimum(n, exponent)
    q = np.where((mag > 0) & (n >= exponent - (LOG2_LEVELS - 1)), np.ldexp(1.0, n.astype(np.int64)), 0.0)
    return np.sign(v) * q


def _piecewise_bin_errors(edges: FloatArray, bounds: FloatArray, levels: FloatArray) -> FloatArray:
    """Mean of (x - Q(x))^2 over each bin for x uniform in the bin; Q(x) = levels[#bounds <= x]."""
    inner = bounds[(bounds > edges[0]) & (bounds < edges[-1])]
    cuts = np.union1d(edges, inner)
    u, v = cuts[:-1], cuts[1:]
    mid = (u + v) / 2
    level = levels[np.searchsorted(bounds, mid, side="right")]
    integral = ((v - level) ** 3 - (u - level) ** 3) / 3
    b = edges.size - 1
    which = np.clip(np.searchsorted(edges, mid, side="right") - 1, 0, b - 1)
    return np.bincount(which, weights=integral, minlength=b) / np.diff(edges)


def _linear_scheme(scale: float) -> tuple[FloatArray, FloatArray]:
    n = np.arange(INT8_MAX + 1, dtype=np.float64)
    return (n[:-1] + 0.5) * scale, n * scale


def _log2_scheme(exponent: int) -> tuple[FloatArray, FloatArray]:
    n = np.arange(exponent - (LOG2_LEVELS - 1), exponent + 1, dtype=np.float64)
    bounds = np.exp2(np.concatenate(([n[0] - 0.5], n[:-1] + 0.5)))
    return bounds, np.concatenate(([0.0], np.exp2(n)))


def _from_histogram(hist: Histogram, zero_count: int, threshold: float) -> Log2Comparison:
    if hist.signed:
        raise QuantvizError("Log2 comparison needs the histogram of |x|, not the signed histogram.")
    hist = hist.used()
    e = top_exponent(threshold)  # validates the threshold
    scale = symmetric_scale(threshold)
    lin = _piecewise_bin_errors(hist.edges, *_linear_scheme(scale))
    log = _piecewise_bin_errors(hist.edges, *_log2_scheme(e))
    counts = without_zeros(hist, zero_count)
    n = max(hist.total, 1)
    # bin 0 holds the exact zeros too: its mean error is over all of its values
    share = np.divide(counts, hist.counts, out=np.zeros_like(counts), where=hist.counts > 0)
    empty = hist.counts == 0
    return Log2Comparison(
        threshold=float(threshold),
        scale=scale,
        top_exponent=e,
        linear_mse=float((counts * lin).sum() / n),
        log2_mse=float((counts * log).sum() / n),
        centers=hist.centers,
        counts=hist.counts.copy(),
        linear_error=np.where(empty, np.nan, lin * share),
        log2_error=np.where(empty, np.nan, log * share),
    )


def _from_values(values: npt.ArrayLike, threshold: float | None, bins: int) -> Log2Comparison:
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        raise QuantvizError("Log2 comparison needs at least one finite value.")
    t = float(np.abs(x).max()) if threshold is None else threshold
    e = top_exponent(t)  # validates the threshold
    scale = symmetric_scale(t)
    lin = (x - fake_quantize(x, scale)) ** 2
    log = (x - log2_quantize(x, e)) ** 2
    hist = histogram_of(np.abs(x), bins, signed=False).used()
    idx = np.minimum((np.abs(x) / hist.width).astype(np.int64), hist.bins - 1)
    counts = np.bincount(idx, minlength=hist.bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        lin_bins = np.bincount(idx, weights=lin, minlength=hist.bins) / counts
        log_bins = np.bincount(idx, weights=log, minlength=hist.bins) / counts
    return Log2Comparison(
        t, scale, e, float(lin.mean()), float(log.mean()), hist.centers, counts.astype(np.int64), lin_bins, log_bins
    )


def log2_quantization_error(
    source: TensorStats | Histogram | npt.ArrayLike,
    threshold: float | None = None,
    zero_count: int = 0,
    bins: int = DEFAULT_BINS,
) -> Log2Comparison:
    """Linear int8 versus log2 (Miyashita et al. 2016) error of one tensor at threshold T (module doc).

    source: a tensor's statistics (its |x| histogram and zero count), a histogram of |x| (give
    zero_count, the exact zeros in its bin 0), or the raw values (exact errors; the per-bin curves
    on a `bins`-bin histogram of |x|). threshold: default the abs-max.
    """
    if isinstance(source, TensorStats):
        require_data(source, "The log2 comparison")
        require_histogram(source, "The log2 comparison")
        t = source.absmax if threshold is None else threshold
        if t == 0:
            raise QuantvizError(
                f"Tensor '{source.name}' is zero everywhere: both schemes are exact, there is nothing to compare."
            )
        return _from_histogram(source.abs_hist, source.zero_count, t)
    if isinstance(source, Histogram):
        if source.total == 0:
            raise QuantvizError("Log2 comparison needs a histogram with at least one value.")
        used = source.used()
        t = float(used.edges[-1]) if threshold is None else threshold
        return _from_histogram(source, zero_count, t)
    return _from_values(source, threshold, bins)
