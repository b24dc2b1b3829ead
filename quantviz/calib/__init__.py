"""Calibration methods: each a pure function (TensorStats, MethodConfig) -> Threshold, in one registry.

Add a method by writing its module and one line in METHODS; the CLI, the app and the docs list the
registry, never a hand-written set of names.
"""

from __future__ import annotations

from collections.abc import Callable

from quantviz.calib.aciq import threshold_aciq
from quantviz.calib.kl import threshold_kl
from quantviz.calib.kl_ncnn import threshold_kl_ncnn
from quantviz.calib.minmax import threshold_ema, threshold_minmax
from quantviz.calib.mse import threshold_mse
from quantviz.calib.percentile import threshold_percentile
from quantviz.calib.result import Curve, MethodConfig, Threshold
from quantviz.errors import QuantvizError
from quantviz.stats import TensorStats

MethodFn = Callable[[TensorStats, MethodConfig], Threshold]

METHODS: dict[str, MethodFn] = {
    "minmax": threshold_minmax,
    "ema": threshold_ema,
    "kl": threshold_kl,
    "kl_ncnn": threshold_kl_ncnn,
    "percentile": threshold_percentile,
    "mse": threshold_mse,
    "aciq": threshold_aciq,
}

METHOD_LABELS: dict[str, str] = {
    "minmax": "MinMax",
    "ema": "Moving-average MinMax",
    "kl": "KL (TensorRT entropy)",
    "kl_ncnn": "KL (ncnn, smoothed)",
    "percentile": "Percentile",
    "mse": "MSE",
    "aciq": "ACIQ",
    "eq": "EasyQuant",
}


def method(name: str) -> MethodFn:
    try:
        return METHODS[name]
    except KeyError:
        raise QuantvizError(f"Unknown calibration method '{name}'; choose one of: {', '.join(METHODS)}.") from None


__all__ = ["METHODS", "METHOD_LABELS", "Curve", "MethodConfig", "MethodFn", "Threshold", "method"]
