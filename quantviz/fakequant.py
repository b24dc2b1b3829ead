"""Scale and zero-point maths, quantize / dequantize, fixed-point multipliers.

Conventions (ONNX QuantizeLinear): float = scale * (q - zero_point); rounding is round-half-to-even
(numpy and ONNX; TensorRT and many C engines round half away from zero: the two differ only on exact
.5 ties). Symmetric int8 uses -127..127 (TensorRT), so scale = T / 127.
Scales are float32 values, as every engine stores them.
"""

from __future__ import annotations

import math
from typing import Any

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


def quantize(x: npt.ArrayLike, scale: float | npt.NDArray[Any], zero_point: int | npt.NDArray[Any] = 0, qmin: int = -INT8_MAX, qmax: int = INT8_MAX) -> npt.NDArray[np.int32]:
    """q = clip(round_half_even(x / s) + zp, qmin, qmax)."""
    q = np.round(np.asarray(x, dtype=np.float64) / scale) + zero_point
    return np.clip(q, qmin, qmax).astype(np.int32)


def dequantize(q: npt.ArrayLike, scale: float | npt.NDArray[Any], zero_point: int | npt.NDArray[Any] = 0) -> npt.NDArray[np.float64]:
    return (np.asarray(q, dtype=np.float64) - zero_point) * scale


def fake_quantize(x: npt.ArrayLike, scale: float | npt.NDArray[Any], zero_point: int | npt.NDArray[Any] = 0, qmin: int = -INT8_MAX, qmax: int = INT8_MAX) -> npt.NDArray[np.float64]:
    return dequantize(quantize(x, scale, zero_point, qmin, qmax), scale, zero_point)


# Fixed-point multipliers (gemmlowp / TFLite convention): M = M0 * 2^-k with M0 an int32 in
# [2^30, 2^31), so the engine computes (acc * M0) >> k with rounding. Sources: gemmlowp
# fixedpoint.h (SaturatingRoundingDoublingHighMul, RoundingDivideByPOT), TFLite
# kernels/internal/quantization_util.cc QuantizeMultiplier and common.h MultiplyByQuantizedMultiplier;
# Jacob et al. 2018, section 2.2.
MULTIPLIER_BITS = 31
MULTIPLIER_MIN = 1 << (MULTIPLIER_BITS - 1)
MULTIPLIER_MAX = (1 << MULTIPLIER_BITS) - 1
# Largest right shift kept: |acc| < 2^31 and M0 < 2^31, so acc * M0 + 2^(k-1) fits an int64 for k <= 62.
# A smaller multiplier (M < 2^-31) maps every int32 accumulator to 0: it becomes (0, 0), as in TFLite.
MAX_SHIFT = 62
INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
ROUNDING_MODES = ("gemmlowp", "single")


def quantize_multiplier(m: float) -> tuple[int, int]:
    """(M0, k) with M = M0 * 2^-k, M0 in [2^30, 2^31) (TFLite QuantizeMultiplier).

    frexp gives M = q * 2^e with q in [0.5, 1); M0 = round_half_away(q * 2^31) (2^31 after rounding
    becomes 2^30 with e + 1); k = 31 - e. M = 0 or M < 2^-31 gives (0, 0). k < 0 (M >= 2^31) is
    refused: no engine uses such a multiplier.
    """
    if not math.isfinite(m) or m < 0:
        raise ValueError(f"a requantization multiplier must be finite and >= 0, got {m}")
    if m == 0:
        return 0, 0
    q, e = math.frexp(m)
    m0 = math.floor(q * (1 << MULTIPLIER_BITS) + 0.5)  # q * 2^31 is exact in a double
    if m0 == 1 << MULTIPLIER_BITS:
        m0, e = m0 // 2, e + 1
    k = MULTIPLIER_BITS - e
    if k > MAX_SHIFT:
        return 0, 0
    if k < 0:
        raise ValueError(f"the requantization multiplier {m} is too large (>= 2^31)")
    return int(m0), int(k)


def quantize_multipliers(ms: npt.ArrayLike) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """quantize_multiplier for each value (one per output channel)."""
    pairs = [quantize_multiplier(float(m)) for m in np.asarray(ms, dtype=np.float64).reshape(-1)]
    return np.array([p[0] for p in pairs], dtype=np.int64), np.array([p[1] for p in pairs], dtype=np.int64)


def quantize_bias(b: npt.ArrayLike, input_scale: float, weight_scales: npt.ArrayLike) -> npt.NDArray[np.int32]:
    """qb = round_half_even(b / (s_x * s_w[c])) as int32 (saturated), the bias a quantized Conv adds."""
    bias_scale = np.float64(input_scale) * np.asarray(weight_scales, dtype=np.float64)
    q = np.round(np.asarray(b, dtype=np.float64) / bias_scale)
    return np.clip(q, INT32_MIN, INT32_MAX).astype(np.int32)


def _per_channel(values: npt.ArrayLike, ndim: int, axis: int | None) -> npt.NDArray[np.int64]:
    v = np.asarray(values, dtype=np.int64)
    if v.ndim == 1 and v.size > 1:
        if axis is None:
            raise ValueError("per-channel multipliers need the channel axis of the accumulator")
        shape = [1] * ndim
        shape[axis] = v.size
        return v.reshape(shape)
    return v.reshape(()) if v.size == 1 else v


def _srdhm(a: npt.NDArray[np.int64], b: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """gemmlowp SaturatingRoundingDoublingHighMul: a * b / 2^31 to nearest, ties towards +inf."""
    ab = a * b
    nudge = np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    x = ab + nudge
    hi = np.where(x >= 0, x >> 31, -((-x) >> 31))  # C division truncates toward zero
    return np.where((a == INT32_MIN) & (b == INT32_MIN), np.int64(INT32_MAX), hi)


def _rounding_divide_by_pot(x: npt.NDArray[np.int64], e: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """gemmlowp RoundingDivideByPOT: x / 2^e rounded half away from zero (e >= 0)."""
    mask = (np.int64(1) << e) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> e) + (remainder > threshold)


def requantize(
    acc: npt.ArrayLike,
    multiplier: int | npt.ArrayLike,
    shift: int | npt.ArrayLike,
    zero_point: int = 0,
    qmin: int = -INT8_MAX,
    qmax: int = INT8_MAX,
    axis: int | None = None,
    rounding: str = "gemmlowp",
) -> npt.NDArray[np.int32]:
    """Integer requantization of int32 accumulators: q = clip(round(acc * M0 * 2^-k) + zp, qmin, qmax).

    Everything runs in int64, no float. Per-channel M0 and k (1-D arrays) apply along `axis` of acc.
    A fused ReLU is qmin = zero_point.

    rounding="gemmlowp" (default; TFLite's MultiplyByQuantizedMultiplier): two roundings.
    SaturatingRoundingDoublingHighMul(acc << max(31 - k, 0), M0) = acc * M0 / 2^31 rounded to
    nearest with ties towards +inf (its nudge is 2^30 or 1 - 2^30 and C division truncates), then
    RoundingDivideByPOT by max(k - 31, 0), ties away from zero. The double rounding can differ by one
    unit from a single exact rounding.
    rounding="single": one rounding, half away from zero, of the exact product:
    sign(x) * ((|x| + 2^(k-1)) >> k) with x = acc * M0. The result equals round_half_away(acc * M)
    up to the error of representing M with 31 bits.
    """
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"rounding must be one of {ROUNDING_MODES}, got {rounding!r}")
    a = np.asarray(acc)
    if a.size and (a.min() < INT32_MIN or a.max() > INT32_MAX):
        raise ValueError("accumulators must fit in int32")
    a = a.astype(np.int64)
    m0 = _per_channel(multiplier, a.ndim, axis)
    k = _per_channel(shift, a.ndim, axis)
    if np.any(k < 0) or np.any(k > MAX_SHIFT) or np.any(m0 < 0) or np.any(m0 > MULTIPLIER_MAX):
        raise ValueError("multipliers must be in [0, 2^31) and shifts in [0, 62]")
    if rounding == "single":
        x = a * m0
        half = np.where(k > 0, np.int64(1) << np.maximum(k - 1, 0), 0)
        r = np.sign(x) * ((np.abs(x) + half) >> k)
    else:
        left = np.maximum(MULTIPLIER_BITS - k, 0)
        right = np.maximum(k - MULTIPLIER_BITS, 0)
        shifted = np.clip(a << left, INT32_MIN, INT32_MAX)  # TFLite saturates the left shift (M >= 1)
        r = _rounding_divide_by_pot(_srdhm(shifted.astype(np.int64), m0), right)
    out: npt.NDArray[np.int32] = np.clip(r + zero_point, max(qmin, INT32_MIN), min(qmax, INT32_MAX)).astype(np.int32)
    return out  # saturated to int32
