"""Every default lives once, here: the CLI, the app and the docs read them from these dataclasses."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_BINS = 2048
# The fine |x| histogram KL re-bins to its own 2048 bins over [0, abs-max] (see quantviz.histogram):
# 2**14 bins, so that its populated part spans 8192..16384 bins, 4..8 per KL bin. Measured in
# quantviz/histogram.py's docstring; 769 tensors hold 769 * 16384 * 8 B = 101 MB of it.
DEFAULT_FINE_BINS = 1 << 14
# TensorRT's entropy calibration: 2048 bins over [0, max|x|], candidates from bin 128.
KL_BINS = 2048
MIN_BINS = 128
MAX_BINS = 1 << 16
DEFAULT_BATCH_SIZE = 8
DEFAULT_EMA_CONSTANT = 0.01
KL_START_BIN = 128
KL_TARGET_BINS = 128
INT8_MAX = 127
UINT8_MAX = 255
STATS_FORMAT = "quantviz-stats"
STATS_VERSION = 2  # 2 adds the fine |x| histogram (version 1 files still load: KL then re-bins the 2048-bin one)
TABLE_FORMAT = "quantviz-calibration"
TABLE_VERSION = 1


@dataclass(frozen=True)
class CollectConfig:
    """Settings of one streaming pass over the calibration set.

    samples: how many samples to use (None: all of them).
    bins: bins of each histogram (|x| and signed); must be even.
    batch_size: samples per onnxruntime run; memory holds one batch of activations at a time.
    ema_constant: c in x_min <- (1 - c) x_min + c min(batch) (onnxruntime's averaging_constant).
    fine_bins: bins of the finer |x| histogram that KL re-bins (rounded up to bins times a power of two;
    bins itself: no finer histogram than the |x| one).
    """

    samples: int | None = None
    bins: int = DEFAULT_BINS
    batch_size: int = DEFAULT_BATCH_SIZE
    ema_constant: float = DEFAULT_EMA_CONSTANT
    fine_bins: int = DEFAULT_FINE_BINS
