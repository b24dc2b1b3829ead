"""Error measures between a float reference and its quantized version, with one shared signature.

Every measure takes (reference, test): two arrays of the same shape whose first axis indexes samples
(ALGORITHMS.md, "Error measures"; the per-sample cosine is EasyQuant's criterion, Wu et al. 2020):

- cosine(a, b): per sample <a, b> / (|a| |b|) over the flattened sample, then the mean over samples;
  0/0 is defined: both samples all zero -> 1 (identical), exactly one all zero -> 0.
- snr_db(a, b): 10 log10(sum a^2 / sum (a - b)^2) over every element of every sample (the SQNR of
  the whole set, not a mean of per-sample SNRs); +inf when a == b everywhere, -inf when a is all
  zero and b is not.
- mse(a, b): mean of (a - b)^2 over every element.

ErrorAccumulator computes the same three from batches (update / merge / result), holding only sums,
so an analysis keeps one batch of activations at a time. Sums are accumulated in float64 (float32
inputs are not copied to float64 first: the products are widened inside einsum).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from quantviz import kernels


@dataclass(frozen=True)
class ErrorFigures:
    """cosine (mean over samples), SNR in dB, MSE, and how many samples they cover."""

    cosine: float
    snr_db: float
    mse: float
    samples: int


def _per_sample(a: npt.ArrayLike, b: npt.ArrayLike) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.floating]]:
    """Both as [samples, elements] arrays, float32 kept as is (the sums are taken in float64)."""
    x, y = np.asarray(a), np.asarray(b)
    dtype = np.float32 if x.dtype == np.float32 and y.dtype == np.float32 else np.float64
    x, y = x.astype(dtype, copy=False), y.astype(dtype, copy=False)
    if x.shape != y.shape:
        raise ValueError(f"reference and test shapes differ: {x.shape} vs {y.shape}")
    if x.ndim == 0:
        x, y = x.reshape(1, 1), y.reshape(1, 1)
    n = x.shape[0]
    return x.reshape(n, -1), y.reshape(n, -1)


def _sums(x: npt.NDArray[np.floating], y: npt.NDArray[np.floating]) -> tuple[npt.NDArray[np.float64], ...]:
    """Per-sample sums of a*a, b*b, a*b and (a-b)*(a-b), accumulated in float64. The last comes from
    a - b, never from aa + bb - 2ab, which cancels catastrophically when b is close to a. float32
    pairs go through one compiled pass (quantviz.kernels.pair_sums); the einsum path below is its
    reference and the fallback."""
    if x.dtype == np.float32 and y.dtype == np.float32 and kernels.available():
        s = kernels.pair_sums(x, y)
        return s[:, 0], s[:, 1], s[:, 2], s[:, 3]
    return _sums_numpy(x, y)


def _sums_numpy(x: npt.NDArray[np.floating], y: npt.NDArray[np.floating]) -> tuple[npt.NDArray[np.float64], ...]:
    d = x - y

    def dot(p: npt.NDArray[np.floating], q: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        out: npt.NDArray[np.float64] = np.einsum("ij,ij->i", p, q, dtype=np.float64)
        return out

    return dot(x, x), dot(y, y), dot(x, y), dot(d, d)


def _cosines(xx: npt.NDArray[np.float64], yy: npt.NDArray[np.float64], xy: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    denom = np.sqrt(xx) * np.sqrt(yy)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(denom > 0, xy / np.where(denom > 0, denom, 1.0), 0.0)
    cos = np.where((xx == 0) & (yy == 0), 1.0, cos)
    return np.clip(cos, -1.0, 1.0)


def sample_cosines(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The cosine of each sample (axis 0), with 0/0 defined as in the module docstring."""
    x, y = _per_sample(a, b)
    xx, yy, xy, _ = _sums(x, y)
    return _cosines(xx, yy, xy)


def _snr_from_sums(signal: float, noise: float) -> float:
    if math.isnan(signal) or math.isnan(noise):
        return math.nan
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def cosine(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Mean over samples of the per-sample cosine similarity."""
    c = sample_cosines(a, b)
    return float(c.mean()) if c.size else math.nan


def snr_db(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """10 log10(sum a^2 / sum (a - b)^2) in dB (+inf when equal)."""
    x, y = _per_sample(a, b)
    xx, _, _, dd = _sums(x, y)
    return _snr_from_sums(float(xx.sum()), float(dd.sum()))


def mse(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Mean squared error over every element."""
    x, y = _per_sample(a, b)
    return float(_sums(x, y)[3].sum() / x.size) if x.size else math.nan


class ErrorAccumulator:
    """Streaming cosine / SNR / MSE: update(reference_batch, test_batch), merge(other), result()."""

    def __init__(self) -> None:
        self.cosine_sum = 0.0
        self.samples = 0
        self.signal = 0.0
        self.noise = 0.0
        self.elements = 0

    def update(self, a: npt.ArrayLike, b: npt.ArrayLike) -> None:
        x, y = _per_sample(a, b)
        xx, yy, xy, dd = _sums(x, y)
        self.cosine_sum += float(_cosines(xx, yy, xy).sum())
        self.samples += x.shape[0]
        self.signal += float(xx.sum())
        self.noise += float(dd.sum())
        self.elements += x.size

    def merge(self, other: ErrorAccumulator) -> None:
        self.cosine_sum += other.cosine_sum
        self.samples += other.samples
        self.signal += other.signal
        self.noise += other.noise
        self.elements += other.elements

    def result(self) -> ErrorFigures:
        if self.samples == 0:
            return ErrorFigures(math.nan, math.nan, math.nan, 0)
        return ErrorFigures(
            cosine=self.cosine_sum / self.samples,
            snr_db=_snr_from_sums(self.signal, self.noise),
            mse=self.noise / self.elements if self.elements else math.nan,
            samples=self.samples,
        )
