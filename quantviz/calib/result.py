"""Records shared by every calibration method: its settings and its result."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from quantviz.config import KL_BINS, KL_START_BIN, KL_TARGET_BINS
from quantviz.errors import QuantvizError
from quantviz.fakequant import asymmetric_params, power_of_two_scale, symmetric_scale
from quantviz.stats import TensorStats

DEFAULT_PERCENTILE = 99.99
# Bounds of MethodConfig.kl_bins (the candidates run up to it: time grows with it).
KL_MIN_BINS = 16
KL_MAX_BINS = 1 << 14
# MSE: the smallest candidate threshold, in bins of the |x| histogram (1: every edge up to abs-max).
DEFAULT_MSE_MIN_BIN = 1
# ACIQ priors: Banner et al. 2019's Laplace and Gaussian fits, and ncnn2table's Gaussian from the range.
ACIQ_PRIORS = ("laplace", "gaussian", "ncnn")


@dataclass(frozen=True)
class MethodConfig:
    """Settings of every method, with their defaults (one place).

    symmetric: int8 [-T, T] (True) or uint8 [min, max] (False).
    power_of_two: round the scale up to a power of two (engines without a multiplier).
    kl_threshold: "edge" (pytorch-quantization: T = i * width) or "center" (ncnn, the TensorRT
    slides: T = (i + 0.5) * width) for the argmin candidate i.
    kl_bins: bins of the histogram over [0, abs-max] KL searches (TensorRT: 2048); kl_start_bin the
    first candidate, kl_target_bins the quantized bins (128 for int8).
    mse_min_bin: the smallest MSE candidate threshold, in bins of the histogram searched (|x| or x).
    aciq_prior: "laplace" (T = 9.89 b), "gaussian" (T = 3.92 sigma), or "ncnn" (ncnn2table's
    Gaussian, sigma guessed from the abs-max and the element count): see quantviz.calib.aciq.
    """

    symmetric: bool = True
    power_of_two: bool = False
    percentile: float = DEFAULT_PERCENTILE
    kl_threshold: str = "edge"
    kl_bins: int = KL_BINS
    kl_start_bin: int = KL_START_BIN
    kl_target_bins: int = KL_TARGET_BINS
    mse_min_bin: int = DEFAULT_MSE_MIN_BIN
    aciq_prior: str = "laplace"

    def __post_init__(self) -> None:
        if not 0 < self.percentile <= 100:
            raise QuantvizError(f"The percentile must be in (0, 100], not {self.percentile}.")
        if self.kl_threshold not in ("edge", "center"):
            raise QuantvizError(f"The KL threshold position must be 'edge' or 'center', not '{self.kl_threshold}'.")
        if not KL_MIN_BINS <= self.kl_bins <= KL_MAX_BINS:
            raise QuantvizError(f"KL's histogram must have between {KL_MIN_BINS} and {KL_MAX_BINS} bins, not {self.kl_bins}.")
        if isinstance(self.mse_min_bin, bool) or not isinstance(self.mse_min_bin, (int, np.integer)) or self.mse_min_bin < 1:
            raise QuantvizError(f"The smallest MSE candidate must be a whole number of bins, at least 1, not {self.mse_min_bin}.")
        if self.aciq_prior not in ACIQ_PRIORS:
            raise QuantvizError(f"The ACIQ prior must be one of {', '.join(ACIQ_PRIORS)}, not '{self.aciq_prior}'.")


@dataclass(frozen=True)
class Curve:
    """What a method minimised or traced, for the UI: y(x) with the chosen x marked."""

    x: npt.NDArray[np.float64]
    y: npt.NDArray[np.float64]
    x_label: str
    y_label: str
    chosen: float


@dataclass(frozen=True)
class Threshold:
    """A method's result for one tensor. Symmetric: min = -threshold, max = threshold, zero_point 0."""

    method: str
    threshold: float
    min: float
    max: float
    scale: float
    zero_point: int
    symmetric: bool
    curve: Curve | None = None
    details: dict[str, Any] = field(default_factory=dict)


def require_data(stats: TensorStats, method: str) -> None:
    if stats.empty:
        raise QuantvizError(
            f"Tensor '{stats.name}' has no finite values in the calibration data (empty, or only NaN/Inf): "
            f"{method} cannot calibrate it."
        )


def require_histogram(stats: TensorStats, method: str, signed: bool = False) -> None:
    """A clear error when the statistics hold no histogram of this tensor's values (method needs one)."""
    hist = stats.signed_hist if signed else stats.abs_hist
    if hist is None or hist.bins == 0 or hist.total == 0:
        kind = "signed histogram of x" if signed else "histogram of |x|"
        raise QuantvizError(
            f"The statistics of tensor '{stats.name}' have no {kind}: {method} needs it. "
            "Collect the statistics again with quantviz (collect keeps both histograms)."
        )


def make_threshold(method: str, lo: float, hi: float, config: MethodConfig, curve: Curve | None = None, **details: Any) -> Threshold:
    """Scale and zero point for a clip range: symmetric uses T = max(|lo|, |hi|)."""
    if config.symmetric:
        t = max(abs(lo), abs(hi))
        scale = symmetric_scale(t)
        if config.power_of_two:
            scale = power_of_two_scale(scale)
            t = scale * 127
        return Threshold(method, t, -t, t, scale, 0, True, curve, dict(details))
    scale, zp, nlo, nhi = asymmetric_params(lo, hi)
    if config.power_of_two:
        scale = power_of_two_scale(scale)
        zp = int(np.clip(np.round(-min(lo, 0.0) / scale), 0, 255))
        nlo, nhi = -zp * scale, (255 - zp) * scale
    return Threshold(method, max(abs(nlo), abs(nhi)), nlo, nhi, scale, zp, False, curve, dict(details))


def finite_or(value: float, fallback: float) -> float:
    return value if math.isfinite(value) else fallback
