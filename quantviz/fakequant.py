"""Scale and zero-point maths, quantize / dequantize, fixed-point multipliers.

Conventions (ONNX QuantizeLinear): float = scale * (q - zero_point); rounding is round-half-to-even
(numpy and ONNX; TensorRT and many C engines round half away from zero: the two differ only on exact
.5 ties). Symmetric int8 uses -127..127 (TensorRT), so scale = T / 127.
Scales are float32 values, as every engine stores them.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from quantviz.config import INT8_MAX, UINT8_MAX

# The scale of a tensor that is exactly zero everywhere: any scale represents 0 exactly.
ZERO_TENSOR_SCALE = 1.0


def symmetric_scale(threshold: float, qmax: int = INT8_MAX) -> float:
    """s = T / 127 as a float32 value (T = 0: ZERO_TENSOR_SCALE)."""
    if not math.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold must be finite and non-negative, got {threshold}")
    if threshold == 0:
        return ZERO_TENSOR_SCALE
    return float(np.float32(threshold) / np.float32(qmax))


def asymmetric_params(lo: float, hi: float, qmax: int = UINT8_MAX) -> tuple[float, int, float, float]:
    """uint8 scale and zero point for [lo, hi], widened to hold 0 and nudged so 0.0 is exact.

    s = (hi - lo) / 255, zp = round(-lo / s) in 0..255; returns (scale, zp, nudged_lo, nudged_hi).
    """
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi == lo:
        return ZERO_TENSOR_SCALE, 0, 0.0, 0.0
    scale = float(np.float32((hi - lo) / qmax))
    zp = int(np.clip(np.round(-lo / scale), 0, qmax))
    return scale, zp, -zp * scale, (qmax - zp) * scale


def power_of_two_scale(scale: float) -> float:
    """The power of two >= scale (never clips more than the given scale), for shift-only engines."""
    if scale <= 0:
        return scale
    return float(2.0 ** math.ceil(math.log2(scale)))


def quantize(x: npt.ArrayLike, scale: float | npt.NDArray, zero_point: int | npt.NDArray = 0, qmin: int = -INT8_MAX, qmax: int = INT8_MAX) -> npt.NDArray[np.int32]:
    """q = clip(round_half_even(x / s) + zp, qmin, qmax)."""
    q = np.round(np.asarray(x, dtype=np.float64) / scale) + zero_point
    return np.clip(q, qmin, qmax).astype(np.int32)


def dequantize(q: npt.ArrayLike, scale: float | npt.NDArray, zero_point: int | npt.NDArray = 0) -> npt.NDArray[np.float64]:
    return (np.asarray(q, dtype=np.float64) - zero_point) * scale


def fake_quantize(x: npt.ArrayLike, scale: float | npt.NDArray, zero_point: int | npt.NDArray = 0, qmin: int = -INT8_MAX, qmax: int = INT8_MAX) -> npt.NDArray[np.float64]:
    return dequantize(quantize(x, scale, zero_point, qmin, qmax), scale, zero_point)
