"""ACIQ: analytical clipping from a fitted prior (Banner, Nahshan, Soudry 2019, "Post training 4-bit
quantization of convolutional networks for rapid-deployment", NeurIPS; arXiv 1810.05723).

The paper models a tensor as Laplace(mu, b) or Gaussian(mu, sigma) and minimises the expected
clipping + rounding error in closed form; for M bits the optimal clip is alpha* = c_M * b (Laplace)
or c_M * sigma (Gaussian). For 8 bits the paper gives alpha* = 9.89 b and 3.92 sigma; we use the
authors' solver digits, 9.89675982 and 3.92403714 (ncnn2table uses the same Gaussian digits).

What we implement (MethodConfig.aciq_prior):
* "laplace" (default, the paper's main case): mu = mean(x), b = mean |x - mu|, clip [mu - 9.89676 b,
  mu + 9.89676 b];
* "gaussian": sigma = std(x), clip [mu - 3.92404 sigma, mu + 3.92404 sigma];
* "ncnn": ncnn2table's ACIQ (quantize_ACIQ / compute_aciq_gaussian_clip), a Gaussian whose sigma is
  not measured but guessed from the range and the element count N by extreme-value theory,
  sigma = 2 * abs-max * 0.5 * 0.35 * (1 + sqrt(pi * ln 4)) / sqrt(2 ln N), clip [-3.92404 sigma,
  3.92404 sigma] (no mean). For a given abs-max, more elements give a smaller clip.
mu, b and sigma come from the signed histogram, each bin's values spread uniformly over the bin
(exact for that model: the mean |x - mu| of the bin holding mu is ((mu - a)^2 + (b - mu)^2) / 2w),
exact zeros as a point mass at 0. The clip range is intersected with the observed [min, max];
symmetric int8 then uses T = max(|lo|, |hi|) (= 9.89676 b for zero-mean data, |mu| + alpha in
general, at most abs-max). A constant tensor c keeps its value exactly ([min, max] = [c, c]).
The paper's one-sided tables for non-negative (post-ReLU) tensors are not used: a ReLU output
gets the two-sided fit, clipped at its minimum 0.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from quantviz.calib.mse import without_zeros
from quantviz.calib.result import Curve, MethodConfig, Threshold, make_threshold, require_data, require_histogram
from quantviz.histogram import Histogram
from quantviz.stats import TensorStats

# Optimal clip / prior scale for 8 bits (Banner et al. 2019; the authors' solver digits).
ACIQ_LAPLACE_ALPHA_8BIT = 9.89675982
ACIQ_GAUSSIAN_ALPHA_8BIT = 3.92403714
# ncnn2table: sigma ~ range * NCNN_GAUSSIAN_CONST / sqrt(2 ln N), range taken as 2 * abs-max.
NCNN_GAUSSIAN_CONST = 0.5 * 0.35 * (1 + math.sqrt(math.pi * math.log(4)))


def _trimmed(hist: Histogram) -> Histogram:
    nz = np.flatnonzero(hist.counts)
    first, last = int(nz[0]), int(nz[-1]) + 1
    return Histogram(hist.counts[first:last].copy(), hist.edges[first : last + 1].copy())


def prior_moments(hist: Histogram, zero_count: int) -> tuple[float, float, float]:
    """(mu, b, sigma) of a signed histogram: mean, mean absolute deviation, standard deviation.

    Values spread uniformly in each bin; exact zeros (zero_count of them) sit at 0.
    """
    counts = without_zeros(hist, zero_count)
    zeros = float(hist.total) - counts.sum()
    n = counts.sum() + zeros
    a, b_edge = hist.edges[:-1], hist.edges[1:]
    mid = (a + b_edge) / 2
    w = hist.width
    mu = float((counts * mid).sum() / n)
    dev = np.where(mu <= a, mid - mu, np.where(mu >= b_edge, mu - mid, ((mu - a) ** 2 + (b_edge - mu) ** 2) / (2 * w)))
    mad = float(((counts * dev).sum() + zeros * abs(mu)) / n)
    var = float(((counts * ((mid - mu) ** 2 + w**2 / 12)).sum() + zeros * mu**2) / n)
    return mu, mad, math.sqrt(max(var, 0.0))


def _fitted_counts(
    x: npt.NDArray[np.float64], width: float, n: int, prior: str, mu: float, spread: float
) -> npt.NDArray[np.float64]:
    """Expected counts per bin (density at the centre * width * N) under the fitted prior."""
    if spread <= 0:
        return np.zeros_like(x)
    if prior == "laplace":
        density = np.exp(-np.abs(x - mu) / spread) / (2 * spread)
    else:
        density = np.exp(-0.5 * ((x - mu) / spread) ** 2) / (spread * math.sqrt(2 * math.pi))
    return density * width * n


def threshold_aciq(stats: TensorStats, config: MethodConfig) -> Threshold:
    """ACIQ clip range for 8 bits from a Laplace (default) or Gaussian fit; see module doc."""
    require_data(stats, "ACIQ")
    require_histogram(stats, "ACIQ", signed=True)
    prior = config.aciq_prior
    hist = _trimmed(stats.signed_hist)
    mu, mad, sigma = prior_moments(hist, stats.zero_count)
    if prior == "laplace":
        spread, alpha = mad, ACIQ_LAPLACE_ALPHA_8BIT * mad
    elif prior == "gaussian":
        spread, alpha = sigma, ACIQ_GAUSSIAN_ALPHA_8BIT * sigma
    else:  # ncnn2table: zero mean, sigma from the range and the element count
        mu = 0.0
        n = stats.count
        spread = 2 * stats.absmax * NCNN_GAUSSIAN_CONST / math.sqrt(2 * math.log(n)) if n > 1 else math.inf
        alpha = ACIQ_GAUSSIAN_ALPHA_8BIT * spread
    lo = min(max(mu - alpha, stats.min), stats.max)
    hi = min(max(mu + alpha, stats.min), stats.max)
    fitted = _fitted_counts(
        hist.centers,
        hist.width,
        hist.total,
        "laplace" if prior == "laplace" else "gaussian",
        mu,
        spread if math.isfinite(spread) else 0.0,
    )
    chosen = max(abs(lo), abs(hi)) if config.symmetric else hi
    curve = Curve(hist.centers.astype(np.float64), fitted, "x", f"count under the fitted {prior} prior", chosen)
    scale_name = "b" if prior == "laplace" else "sigma"
    return make_threshold("aciq", lo, hi, config, curve, prior=prior, mu=mu, **{scale_name: spread}, alpha=alpha)
