"""MinMax and moving-average MinMax: T = max |x| (symmetric) or [min, max] (asymmetric).

Moving average: onnxruntime's MinMaxCalibrater(moving_average=True), x <- (1 - c) x + c batch_x.
"""

from __future__ import annotations

from quantviz.calib.result import MethodConfig, Threshold, make_threshold, require_data
from quantviz.stats import TensorStats


def threshold_minmax(stats: TensorStats, config: MethodConfig) -> Threshold:
    require_data(stats, "MinMax")
    return make_threshold("minmax", stats.min, stats.max, config)


def threshold_ema(stats: TensorStats, config: MethodConfig) -> Threshold:
    require_data(stats, "moving-average MinMax")
    return make_threshold("ema", stats.ema_min, stats.ema_max, config)
