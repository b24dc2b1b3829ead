"""Per-tensor and per-model summaries the pages show: every method side by side, what each clips."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd

from quantviz.calib import METHOD_LABELS, METHODS, Curve, MethodConfig, Threshold
from quantviz.calib.mse import quantization_errors, without_zeros
from quantviz.config import INT8_MAX, UINT8_MAX
from quantviz.errors import QuantvizError
from quantviz.histogram import Histogram
from quantviz.model import TensorInfo
from quantviz.stats import CalibrationStats, TensorStats

log = logging.getLogger(__name__)


def mass_outside(hist: Histogram, lo: float, hi: float, observed: tuple[float, float] | None = None) -> float:
    """Count of values below lo or above hi, reading the histogram as uniform inside each bin
    (each bin first narrowed to the observed [min, max], so a clip at min or max cuts nothing)."""
    edges = hist.edges
    counts = hist.counts.astype(np.float64)
    left, right = edges[:-1], edges[1:]
    if observed is not None:
        left = np.clip(left, observed[0], observed[1])
        right = np.clip(right, observed[0], observed[1])
    width = right - left
    inside_point = width <= 0  # a bin narrowed to a single point
    width = np.where(inside_point, 1.0, width)
    below = np.where(inside_point, left < lo, np.clip((np.minimum(right, lo) - left) / width, 0.0, 1.0))
    above = np.where(inside_point, left > hi, np.clip((right - np.maximum(left, hi)) / width, 0.0, 1.0))
    return float((counts * (below + above)).sum())


def clipped_fraction(t: TensorStats, lo: float, hi: float) -> float:
    """Fraction of the tensor's finite values outside [lo, hi] (0 for an empty tensor)."""
    if t.count == 0:
        return 0.0
    return mass_outside(t.signed_hist, lo, hi, (t.min, t.max)) / t.count


def expected_mse(t: TensorStats, th: Threshold) -> float:
    """Mean squared error quantize-dequantize with th's scale and zero point causes on this tensor,
    integrated over the signed histogram (values uniform within a bin; see quantviz.calib.mse)."""
    if t.count == 0:
        return 0.0
    hist = t.signed_hist
    nz = np.flatnonzero(hist.counts)
    hist = Histogram(hist.counts[nz[0] : nz[-1] + 1].copy(), hist.edges[nz[0] : nz[-1] + 2].copy())
    counts = without_zeros(hist, t.zero_count)
    if th.symmetric:
        qmin, qmax = -float(INT8_MAX), float(INT8_MAX)
    else:
        qmin, qmax = -float(th.zero_point), float(UINT8_MAX - th.zero_point)
    err = quantization_errors(hist, counts, np.array([th.scale]), np.array([qmin]), np.array([qmax]))
    return float(err[0]) / t.count


def all_thresholds(t: TensorStats, config: MethodConfig, methods: Iterable[str] | None = None) -> dict[str, Threshold]:
    """Every registered method's result for one tensor; methods that cannot run on it are left out."""
    out: dict[str, Threshold] = {}
    for name in methods or METHODS:
        try:
            out[name] = METHODS[name](t, config)
        except QuantvizError as exc:
            log.info("%s on %s: %s", name, t.name, exc)
    return out


def method_table(t: TensorStats, results: dict[str, Threshold]) -> pd.DataFrame:
    """One row per method: clip range, threshold, scale, clipped fraction."""
    rows = []
    for name, r in results.items():
        rows.append(
            {
                "method": METHOD_LABELS.get(name, name),
                "threshold": r.threshold,
                "min": r.min,
                "max": r.max,
                "scale": r.scale,
                "zero point": r.zero_point,
                "clipped %": 100 * clipped_fraction(t, r.min, r.max),
                "MSE": expected_mse(t, r),
                "vs MinMax": r.threshold / t.absmax if t.absmax > 0 else 1.0,
            }
        )
    return pd.DataFrame(rows)


def overview(
    stats: CalibrationStats, config: MethodConfig, methods: Iterable[str] | None = None, progress: Callable[[int, int], object] | None = None
) -> pd.DataFrame:
    """One row per tensor: op type, shape (seen, and declared), range, and for each method its
    threshold and clipped %. progress(done, total) is called after each tensor."""
    names = list(methods or METHODS)
    rows = []
    total = len(stats.tensors)
    for done, (name, t) in enumerate(stats.tensors.items()):
        if progress is not None and done:
            progress(done, total)
        info = stats.infos.get(name)
        row: dict[str, object] = {
            "tensor": name,
            "op type": info.op_type if info else "",
            "shape": shape_text(t, info),
            "declared shape": info.shape_text() if info else "",
            "min": t.min,
            "max": t.max,
            "zeros %": 100 * t.zero_count / t.count if t.count else 0.0,
            "NaN/Inf": t.nonfinite,
        }
        if not t.empty:
            for m, r in all_thresholds(t, config, names).items():
                row[f"{m} T"] = r.threshold
                row[f"{m} clip %"] = 100 * clipped_fraction(t, r.min, r.max)
        rows.append(row)
    return pd.DataFrame(rows)


def shape_text(t: TensorStats | None, info: TensorInfo | None) -> str:
    """The shape to show: as seen during collection when recorded (statistics of this version), else
    as the model declares it (may be symbolic: "[batch, 16, h, w]")."""
    if t is not None and t.shape is not None:
        return "[" + ", ".join(str(d) for d in t.shape) + "]"
    return info.shape_text() if info is not None else ""


def curve_value_at(curve: Curve, x: float) -> float:
    """A method's curve read at x (linear interpolation between candidates; inf stays inf)."""
    xs, ys = curve.x, curve.y
    if xs.size == 0:
        return float("nan")
    i = int(np.searchsorted(xs, x))
    if i <= 0:
        return float(ys[0])
    if i >= xs.size:
        return float(ys[-1])
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    if not (np.isfinite(y0) and np.isfinite(y1)):
        return float(y0 if x - x0 <= x1 - x else y1)
    return float(y0 + (y1 - y0) * (x - x0) / (x1 - x0))
