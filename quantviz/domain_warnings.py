"""Warnings a quantization expert would give on sight, each with the fix that answers it.

Pure functions of the table (after quantviz.table.apply_model), the statistics and the model's
per-channel weight ranges (quantviz.weights, abs-max per output channel); the app only draws them and
applies the fix (apply_fix for the fixes that are review choices).

- saturating activation: a Softmax or Sigmoid output whose upper clip point lies below the largest value
  seen: its most confident outputs, the ones that decide, are flattened. Fix: MinMax on that tensor.
- non-negative tensor quantized symmetric: x >= 0 everywhere (after Relu, Sigmoid, Softmax...) on
  [-T, T] int8 uses only 0..127, one bit of the eight. Fix: an asymmetric (uint8) table where the
  engine profile quantizes uint8 (onnxruntime); TensorRT and ncnn are symmetric int8 only, so the
  warning says what is lost instead.
- per-tensor weights on a layer whose output channels' abs-max differ by more than WEIGHT_SPREAD: the
  small channels get a few levels. Fix: per-channel weight scales.
- int32 bias overflow (table.settings["bias_overflow"], quantviz.table.fit_bias_int32): the weight
  scales were raised. Fix: MinMax on the layer's input when its method clips it (a larger input scale
  makes the bias fit), otherwise keep the layer in float.
- NaN or Inf in a tensor during collection (left out of every range). Fix: keep it in float (and look
  at the data).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from quantviz.review import Review
from quantviz.stats import CalibrationStats
from quantviz.table import CalibrationTable
from quantviz.weights import WeightQuant

WEIGHT_SPREAD = 10.0  # largest / smallest output channel abs-max beyond which per-tensor weights warn
SATURATING_OPS = ("Softmax", "Sigmoid")
ASYMMETRIC_PROFILES = ("ort",)  # engine profiles that quantize activations as uint8 with a zero point

SATURATING = "saturating activation"
NONNEGATIVE = "non-negative symmetric"
WEIGHT_CHANNELS = "weight channels"
BIAS_OVERFLOW = "bias overflow"
NONFINITE = "NaN/Inf"


@dataclass(frozen=True)
class Fix:
    """One click that answers a warning. kind: "method" (tensor takes method), "float" (keep tensor in
    float), "asymmetric" (the review's table becomes uint8), "per_channel" (weights per channel)."""

    kind: str
    label: str
    tensor: str = ""
    method: str = ""


@dataclass(frozen=True)
class DomainWarning:
    kind: str
    text: str
    tensors: tuple[str, ...] = ()
    layers: tuple[str, ...] = ()
    fix: Fix | None = None


def _saturating(table: CalibrationTable, stats: CalibrationStats) -> list[DomainWarning]:
    out = []
    for name, info in stats.infos.items():
        e, t = table.tensors.get(name), stats.tensors.get(name)
        if info.op_type not in SATURATING_OPS or e is None or t is None or e.float_kept or t.empty:
            continue
        if not (math.isfinite(e.max) and math.isfinite(t.max)) or e.scale <= 0:
            continue
        if e.max < t.max - 0.5 * e.scale:  # clipped beyond rounding
            target = e.scale_from or name
            out.append(
                DomainWarning(
                    SATURATING,
                    f"'{name}' ({info.op_type} output) is clipped at {e.max:.4g} while it reaches {t.max:.4g}: its most "
                    f"confident values, the ones that decide, all read {e.max:.4g}. MinMax keeps the whole range.",
                    (name,),
                    (info.producer,),
                    Fix("method", f"Use MinMax for {target}", tensor=target, method="minmax"),
                )
            )
    return out


def _nonnegative(table: CalibrationTable, stats: CalibrationStats, profile: str) -> list[DomainWarning]:
    if not table.settings.get("symmetric", True):
        return []
    names = []
    for name, e in table.tensors.items():
        t = stats.tensors.get(name)
        if t is None or e.float_kept or t.empty or e.threshold <= 0 or not math.isfinite(t.min):
            continue
        if t.min >= 0 and t.max > 0:
            names.append(name)
    if not names:
        return []
    shown = ", ".join(f"'{n}'" for n in names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    lost = f"{len(names)} tensor(s) never go below 0 ({shown}) but are quantized symmetric: they use 128 of the 255 levels, one bit of the eight."
    if profile in ASYMMETRIC_PROFILES:
        fix = Fix("asymmetric", "Quantize the table asymmetric (uint8 with a zero point)")
        text = lost + " An asymmetric table gives them all 256 levels (twice the resolution)."
    else:
        fix = None
        text = lost + f" The {profile} profile quantizes symmetric int8 only, so that resolution is lost (the step is twice what uint8 would give)."
    layers = tuple(dict.fromkeys(stats.infos[n].producer for n in names if n in stats.infos))
    return [DomainWarning(NONNEGATIVE, text, tuple(names), layers, fix)]


def _weight_channels(channel_ranges: Mapping[str, WeightQuant], per_channel: bool) -> list[DomainWarning]:
    if per_channel:
        return []
    out = []
    for name, w in channel_ranges.items():
        a = [float(v) for v in w.absmax if float(v) > 0]
        if len(a) < 2:
            continue
        spread = max(a) / min(a)
        if spread > WEIGHT_SPREAD:
            out.append(
                DomainWarning(
                    WEIGHT_CHANNELS,
                    f"The weight '{name}' of layer '{w.node}' is quantized per tensor, but its output channels' ranges differ "
                    f"{spread:.0f}x (abs-max {min(a):.3g} to {max(a):.3g}): the smallest channels get about "
                    f"{max(1, round(127 * min(a) / max(a)))} levels of 127. Per-channel scales give each channel all 127.",
                    (name,),
                    (w.node,),
                    Fix("per_channel", "Use per-channel weight scales"),
                )
            )
    return out


def _bias_overflow(table: CalibrationTable, stats: CalibrationStats) -> list[DomainWarning]:
    out = []
    for wname, v in dict(table.settings.get("bias_overflow") or {}).items():
        layer = str(v.get("layer", ""))
        inputs = [n for n, i in stats.infos.items() if layer in i.consumers and n in table.tensors and not table.tensors[n].float_kept]
        outputs = [n for n, i in stats.infos.items() if i.producer == layer and n in table.tensors]
        text = str(v.get("text") or f"The int32 bias of layer '{layer}' overflows: its weight scales were raised.")
        fix = None
        target = (table.tensors[inputs[0]].scale_from or inputs[0]) if inputs else None
        t = stats.tensors.get(target) if target is not None else None
        if target is not None and t is not None and not t.empty and table.tensors[target].threshold < t.absmax:
            # the method clips the input: its full range gives a larger input scale, and the bias fits
            fix = Fix("method", f"Use MinMax for the input {target}", tensor=target, method="minmax")
            text += " The input's threshold clips it: MinMax gives a larger input scale, so the bias fits without touching the weights."
        elif outputs and not table.tensors[outputs[0]].float_kept:
            # the input really is that small: int8 cannot hold both, the layer can stay in float
            fix = Fix("float", f"Keep {layer} in float", tensor=outputs[0])
            text += " The input is that small over its whole range: keeping the layer in float avoids the coarser weights."
        out.append(DomainWarning(BIAS_OVERFLOW, text, (wname,), (layer,), fix))
    return out


def _nonfinite(table: CalibrationTable, stats: CalibrationStats) -> list[DomainWarning]:
    out = []
    for name in stats.nonfinite_tensors:
        t = stats.tensors[name]
        e = table.tensors.get(name)
        info = stats.infos.get(name)
        counts = ", ".join(f"{c} {k}" for c, k in ((t.nan_count, "NaN"), (t.posinf_count, "+Inf"), (t.neginf_count, "-Inf")) if c)
        fix = Fix("float", f"Keep {name} in float", tensor=name) if e is not None and not e.float_kept else None
        out.append(
            DomainWarning(
                NONFINITE,
                f"'{name}' held {counts} during collection (left out of its range): look at the data or the layer that "
                "makes them; int8 cannot hold them.",
                (name,),
                (info.producer,) if info is not None and info.producer else (),
                fix,
            )
        )
    return out


def domain_warnings(
    table: CalibrationTable,
    stats: CalibrationStats,
    channel_ranges: Mapping[str, WeightQuant],
    *,
    per_channel: bool,
    profile: str,
) -> list[DomainWarning]:
    """Every warning that applies, NaN/Inf first, then bias overflow, saturating activations, weights,
    non-negative tensors. channel_ranges: the weights quantized per channel (absmax per output channel),
    whatever per_channel says (per_channel: whether the table's weights are per channel)."""
    return [
        *_nonfinite(table, stats),
        *_bias_overflow(table, stats),
        *_saturating(table, stats),
        *_weight_channels(channel_ranges, per_channel),
        *_nonnegative(table, stats, profile),
    ]


def for_layer(warnings: list[DomainWarning], layer: str, tensors: set[str]) -> list[DomainWarning]:
    """The warnings about one layer (by name) or one of its tensors."""
    return [w for w in warnings if layer in w.layers or tensors & set(w.tensors)]


def apply_fix(review: Review, fix: Fix) -> Review:
    """The review with the fix applied (fixes that are review choices; "per_channel" is a session
    setting the caller changes)."""
    if fix.kind == "method":
        return review.with_choice(fix.tensor, method=None if fix.method == review.default_method else fix.method, override=None)
    if fix.kind == "float":
        return review.with_choice(fix.tensor, float_kept=True)
    if fix.kind == "asymmetric":
        return replace(review, config=replace(review.config, symmetric=False))
    raise ValueError(f"the fix '{fix.kind}' is not a review choice")
