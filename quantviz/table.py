"""The calibration table: the chosen range and scale of every tensor, and where each came from.

calibrate() applies one method to every tensor of a statistics set; the app mixes methods and
overrides per tensor with with_choice(). Writers and readers live in quantviz/export/.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from quantviz.calib import MethodConfig, Threshold, method
from quantviz.errors import QuantvizError
from quantviz.stats import CalibrationStats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorEntry:
    """One row of the table (the JSON keys method/min/max/threshold/scale are a contract)."""

    method: str
    min: float
    max: float
    threshold: float
    scale: float
    zero_point: int
    cosine: float | None = None
    note: str = ""
    float_kept: bool = False
    shared_with: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CalibrationTable:
    model_name: str
    model_sha256: str
    settings: dict[str, Any]
    tensors: dict[str, TensorEntry]
    weights: dict[str, dict[str, Any]] = field(default_factory=dict)
    requant: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def entry(self, name: str) -> TensorEntry:
        try:
            return self.tensors[name]
        except KeyError:
            raise QuantvizError(f"The table has no tensor named '{name}'.") from None

    def with_entry(self, name: str, entry: TensorEntry) -> CalibrationTable:
        return replace(self, tensors={**self.tensors, name: entry})


def entry_from(result: Threshold, stats_min: float, stats_max: float) -> TensorEntry:
    return TensorEntry(
        method=result.method,
        min=float(result.min),
        max=float(result.max),
        threshold=float(result.threshold),
        scale=float(result.scale),
        zero_point=int(result.zero_point),
        extra={"observed_min": float(stats_min), "observed_max": float(stats_max)},
    )


def calibrate(stats: CalibrationStats, method_name: str, config: MethodConfig | None = None) -> CalibrationTable:
    """Apply one method to every tensor. Tensors a method cannot calibrate (empty, NaN only) are
    listed in table.skipped with the reason instead of getting a made-up range."""
    config = config or MethodConfig()
    fn = method(method_name)
    tensors: dict[str, TensorEntry] = {}
    skipped: dict[str, str] = {}
    for name, t in stats.tensors.items():
        if t.empty:
            skipped[name] = "no finite values in the calibration data"
            continue
        tensors[name] = entry_from(fn(t, config), t.min, t.max)
    if skipped:
        log.warning("%d tensors had no finite values and were left out: %s", len(skipped), ", ".join(skipped))
    settings = {
        "dtype": "int8" if config.symmetric else "uint8",
        "symmetric": config.symmetric,
        "method": method_name,
        "method_config": asdict(config),
        "bins": stats.config.bins,
        "samples": stats.samples,
        "data": stats.data_description,
        "synthetic": stats.synthetic,
    }
    return CalibrationTable(stats.model_name, stats.model_sha256, settings, tensors, skipped=skipped)


def is_finite_entry(e: TensorEntry) -> bool:
    return all(math.isfinite(v) for v in (e.min, e.max, e.threshold, e.scale))
