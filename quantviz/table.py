"""The calibration table: the chosen range and scale of every tensor, and where each came from.

calibrate() applies one method to every tensor of a statistics set; the app mixes methods and
overrides per tensor with with_choice(). Writers and readers live in quantviz/export/.

All-zero tensors (threshold 0): a tensor whose range is [0, 0] in the calibration data (a zero
state, a padding branch, a ReLU that never fires) has no int8 scale: T / 127 = 0 divides by zero, and
the placeholder scale 1.0 the methods return (quantviz.fakequant.ZERO_TENSOR_SCALE) read back from a
TensorRT cache as T = 127. Every entry with threshold 0 is therefore kept in float, whoever made it
(a method, an override, a reader of any format): TensorEntry sets float_kept and the note
ZERO_TENSOR_NOTE itself. Each format then says "float" its own way: the quantviz JSON and CSV write
the float flag with threshold 0, the TensorRT cache and onnxruntime's tables leave the tensor out
(those engines keep a tensor without a range in float), the ncnn table writes it commented out as
"#layer 0", and the QDQ model has no Q/DQ pair on it (quantviz.qdq keeps the nodes that read or
write it in float). Reading any of them back gives threshold 0 kept in float, or no entry.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from quantviz.calib import MethodConfig, Threshold, method
from quantviz.errors import QuantvizError
from quantviz.fold import node_key
from quantviz.fusion import requant_points
from quantviz.model import LoadedModel
from quantviz.outputs import graph_inputs, output_feeders, protect_outputs
from quantviz.profiles import DEFAULT_PROFILE, Placement, placement
from quantviz.requant import layer_requant
from quantviz.stats import CalibrationStats
from quantviz.weights import WeightQuant

log = logging.getLogger(__name__)
ZERO_TENSOR_NOTE = "all zero in the calibration data: kept in float (a threshold of 0 has no int8 scale)"
CALIBRATE_THREADS = 4  # at most; os.cpu_count() decides below


# Facts TensorEntry keeps in typed fields that the JSON file writes under "extra" (FORMATS.md), in this order.
TYPED_EXTRA = ("observed_min", "observed_max", "scale_from", "folded_into")


@dataclass(frozen=True)
class TensorEntry:
    """One row of the table (the JSON keys method/min/max/threshold/scale are a contract).

    observed_min/observed_max: the range the statistics saw (before any method clipped it);
    scale_from: the tensor whose scale this one takes (a Conv output fused with its ReLU-like
    activation); folded_into: for the Conv output of a folded BatchNormalization, the tensor that
    replaces it. On disk these four sit in "extra" as before; an `extra` given with any of them (a
    file read, an older caller) has them moved into the fields. What remains in `extra` is
    method-specific (EQ's "eq", best method's "best", "unshared": the fused tensor's own range).
    """

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
    observed_min: float | None = None
    observed_max: float | None = None
    scale_from: str | None = None
    folded_into: str | None = None

    def __post_init__(self) -> None:
        if self.threshold == 0:  # all zero: kept in float in every format (module docstring)
            object.__setattr__(self, "float_kept", True)
            if not self.note:
                object.__setattr__(self, "note", ZERO_TENSOR_NOTE)
        lifted = {k: self.extra[k] for k in TYPED_EXTRA if k in self.extra}
        if not lifted:
            return
        object.__setattr__(self, "extra", {k: v for k, v in self.extra.items() if k not in TYPED_EXTRA})
        for key, value in lifted.items():
            if getattr(self, key) is not None:
                continue
            if key.startswith("observed_"):
                try:
                    value = float(value)  # the JSON writer keeps infinities as "inf" / "-inf"
                except (TypeError, ValueError):
                    raise QuantvizError(f"extra.{key} must be a number, not {value!r}.") from None
            elif not isinstance(value, str):
                raise QuantvizError(f"extra.{key} must be a tensor name, not {value!r}.")
            object.__setattr__(self, key, value)

    def extra_fields(self) -> dict[str, Any]:
        """What a file keeps under "extra": the typed facts that are set, then the rest of `extra`."""
        typed = {k: getattr(self, k) for k in TYPED_EXTRA if getattr(self, k) is not None}
        return {**typed, **self.extra}

    @property
    def all_zero(self) -> bool:
        """Threshold 0: the tensor was all zero (module docstring); it is kept in float."""
        return self.threshold == 0


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
        observed_min=float(stats_min),
        observed_max=float(stats_max),
    )


def calibrate(stats: CalibrationStats, method_name: str, config: MethodConfig | None = None) -> CalibrationTable:
    """Apply one method to every tensor. Tensors a method cannot calibrate (empty, NaN only) are
    listed in table.skipped with the reason instead of getting a made-up range."""
    config = config or MethodConfig()
    fn = method(method_name)
    tensors: dict[str, TensorEntry] = {}
    skipped: dict[str, str] = {}
    usable = [(name, t) for name, t in stats.tensors.items() if not t.empty]
    for name, t in stats.tensors.items():
        if t.empty:
            skipped[name] = "no finite values in the calibration data"
    # The methods are numpy-bound (KL: a few ms of array work per tensor, the GIL released inside),
    # so threads split the tensors over the cores: KL for 432 tensors of digits_resnet goes from
    # about 1.5 s to under 1 s on 2 cores. Results are identical and in the statistics' order.
    workers = min(os.cpu_count() or 1, CALIBRATE_THREADS)
    if workers > 1 and len(usable) >= 2 * workers:
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(lambda item: fn(item[1], config), usable))
    else:
        results = [fn(t, config) for _, t in usable]
    for (name, t), result in zip(usable, results, strict=True):
        tensors[name] = entry_from(result, t.min, t.max)
    tensors = {n: tensors[n] for n in stats.tensors if n in tensors}
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


# How many unknown names an error message lists before "and N more".
NAMES_IN_MESSAGE = 5
REQUANT_ROUNDING = "gemmlowp"


def _name_list(names: list[str]) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:NAMES_IN_MESSAGE])
    return shown + (f" (and {len(names) - NAMES_IN_MESSAGE} more)" if len(names) > NAMES_IN_MESSAGE else "")


def check_table_against_model(table: CalibrationTable, model: LoadedModel) -> None:
    """Raise QuantvizError when the table names tensors, weights or layers the model lacks."""
    known = set(model.tensor_names)
    tensors = [n for n in [*table.tensors, *table.skipped] if n not in known]
    weights = [n for n in table.weights if n not in model.initializers]
    if weights:  # weights of folded layers may be new initializers of the folded model
        folded = model.folded.proto
        names = {i.name for i in folded.graph.initializer} | {n.output[0] for n in folded.graph.node if n.op_type == "Constant" and n.output}
        weights = [n for n in weights if n not in names]
    nodes = {node_key(n) for n in model.proto.graph.node}
    layers = [n for n in table.requant if n not in nodes]
    problems = [
        f"{len(found)} {what} that model '{model.name}' lacks: {_name_list(found)}"
        for what, found in (("tensors", tensors), ("weights", weights), ("layers", layers))
        if found
    ]
    if problems:
        raise QuantvizError(
            f"The table (made for '{table.model_name}') names {'; and '.join(problems)}. "
            "It was probably calibrated for another model: calibrate this model, or open the model the table was made for."
        )


def calibrate_model(
    model: LoadedModel,
    stats: CalibrationStats,
    method_name: str,
    config: MethodConfig | None = None,
    per_channel: bool = True,
    *,
    profile: str | None = None,
    clip_outputs: bool = False,
) -> CalibrationTable:
    """calibrate() plus what the model's structure decides: see apply_model()."""
    unknown = [n for n in stats.tensors if n not in set(model.tensor_names)]
    if unknown:
        raise QuantvizError(
            f"The statistics (gathered on '{stats.model_name}') name {len(unknown)} tensors that model "
            f"'{model.name}' lacks: {_name_list(unknown)}. Collect statistics on this model."
        )
    return apply_model(calibrate(stats, method_name, config), model, per_channel, profile=profile, clip_outputs=clip_outputs)


def apply_model(
    table: CalibrationTable,
    model: LoadedModel,
    per_channel: bool = True,
    weight_overrides: Mapping[str, Sequence[float]] | None = None,
    weight_method: str = "override",
    *,
    profile: str | None = None,
    clip_outputs: bool | None = None,
) -> CalibrationTable:
    """Fusion-aware scales, weight scales and requantization multipliers for a table of this model.

    0. The engine profile (quantviz.profiles; `profile`, else settings["profile"], else onnxruntime's)
       marks the tensors the engine keeps in float: float_kept with extra["profile_float"] (the
       reason), unless the entry carries extra["profile_override"] (the user quantizes it anyway);
       settings["profile"] and settings["profile_float_nodes"] (nodes of decomposed LayerNorm /
       Softmax / Sigmoid that run in float) record it. Then graph inputs and tensors that feed
       graph outputs (quantviz.outputs) take their MinMax range when the method's threshold would clip them,
       unless clip_outputs (or settings["clip_outputs"]); a typed threshold that clips one is kept and
       named in settings["output_clip_warnings"].
    1. BatchNormalization is folded into its Conv (quantviz.fold); the pre-BN tensors stay in the table
       (the plots show them) with TensorEntry.folded_into naming the tensor that replaces them.
    2. Conv/Gemm -> Relu/ReLU-like Clip (quantviz.fusion): the Conv output takes the post-activation
       entry's range and scale; TensorEntry.shared_with links both ways; TensorEntry.scale_from names
       the source and extra["unshared"] keeps the tensor's own range. Call again after changing a
       post-activation entry to re-share (a change to the pre-activation entry is overridden).
    3. weights: per-channel (or per-tensor) abs-max scales of the folded weights (quantviz.weights).
       weight_overrides: weight initializer -> scales (one per output channel, or one) that replace
       the abs-max ones (EQ's search, a review's choice); entries whose length does not fit the
       weight are left at abs-max and listed in settings["weight_overrides_ignored"]. Replaced
       entries carry "method" (weight_method) and "absmax_scales".
    3b. int32 bias: a bias quantizes to round(b / (s_x * s_w[c])) in int32; where that overflows
       (a tiny input scale, a large bias) the weight scale of that channel is raised to
       |b| / (s_x * BIAS_INT32_LIMIT) so it fits (fit_bias_int32; the weights lose a little
       resolution, the bias stays exact), listed in settings["bias_overflow"] (weight -> layer,
       channels, scales before and after, a sentence the CLI and the app show).
    4. requant: M = s_x * s_w / s_y per output channel as (M0, k) per layer (quantviz.requant).
    5. settings["requant_points"]: Add/Concat inputs and whether their scales differ.
    """
    check_table_against_model(table, model)
    folded, report, info = model.folded.proto, model.folded.fold, model.folded.fusion
    tensors = dict(table.tensors)
    profile_key = profile or table.settings.get("profile") or DEFAULT_PROFILE
    place = placement(model.proto, profile_key)
    tensors = _apply_profile(tensors, place)
    clip = bool(table.settings.get("clip_outputs", False)) if clip_outputs is None else clip_outputs
    tensors, clip_warnings = protect_outputs(tensors, output_feeders(model.proto), table.settings, clip, graph_inputs(model.proto))
    for p in report.folded:
        if p.removed_tensor in tensors:
            e = tensors[p.removed_tensor]
            tensors[p.removed_tensor] = replace(e, folded_into=p.output)
    for g in info.groups:
        pre, post = tensors.get(g.pre_activation), tensors.get(g.post_activation)
        if pre is None or post is None or pre.float_kept or post.float_kept:
            continue
        own = pre.extra.get("unshared") or {
            "method": pre.method, "min": pre.min, "max": pre.max,
            "threshold": pre.threshold, "scale": pre.scale, "zero_point": pre.zero_point,
        }  # fmt: skip
        tensors[g.pre_activation] = replace(
            pre,
            method=post.method,
            min=post.min,
            max=post.max,
            threshold=post.threshold,
            scale=post.scale,
            zero_point=post.zero_point,
            shared_with=tuple(dict.fromkeys((*pre.shared_with, g.post_activation))),
            scale_from=g.post_activation,
            extra={**pre.extra, "unshared": own},
        )
        tensors[g.post_activation] = replace(post, shared_with=tuple(dict.fromkeys((*post.shared_with, g.pre_activation))))
    usable = {n: e for n, e in tensors.items() if not e.float_kept and is_finite_entry(e)}
    scales = {n: e.scale for n, e in usable.items()}
    weights = dict(model.folded.weights(per_channel))  # a copy: overrides replace entries below
    replaced: dict[str, WeightQuant] = {}
    ignored: dict[str, str] = {}
    for wname, values in (weight_overrides or {}).items():
        w = weights.get(wname)
        arr = np.asarray(values, dtype=np.float32).reshape(-1)
        if w is None:
            ignored[wname] = "no such quantized weight in the model"
        elif arr.shape != w.scales.shape or not np.all(np.isfinite(arr) & (arr > 0)):
            ignored[wname] = f"{arr.size} scales given, {w.scales.size} positive ones needed"
        else:
            replaced[wname] = w
            weights[wname] = replace(w, scales=arr)
    weights, overflow = fit_bias_int32(folded, scales, weights)
    layers, left_out = layer_requant(folded, scales, weights, info, {n: e.zero_point for n, e in usable.items()})
    weight_dicts: dict[str, Any] = {n: w.to_dict() for n, w in weights.items()}
    for wname, old_w in replaced.items():
        weight_dicts[wname] = {**weight_dicts[wname], "method": weight_method, "absmax_scales": [float(v) for v in old_w.scales]}
    settings = {
        **table.settings,
        "per_channel_weights": per_channel,
        "folded_batchnorm": [p.to_dict() for p in report.folded],
        "fusion_groups": [g.to_dict() for g in info.groups],
        "requant_points": [r.to_dict() for r in requant_points(info, scales)],
        "requant_rounding": REQUANT_ROUNDING,
        "requant_left_out": left_out,
        "profile": profile_key,
        "profile_float_nodes": _float_nodes(model, place, tensors),
        "clip_outputs": clip,
        "output_clip_warnings": clip_warnings,
    }
    if ignored:
        settings["weight_overrides_ignored"] = ignored
    settings["bias_overflow"] = overflow
    for wname, ov in overflow.items():
        weight_dicts[wname] = {**weight_dicts[wname], "bias_overflow": {k: ov[k] for k in ("channels", "scales_before")}}
    return replace(
        table,
        tensors=tensors,
        settings=settings,
        weights=weight_dicts,
        requant={k: v.to_dict() for k, v in layers.items()},
    )


def _apply_profile(tensors: dict[str, TensorEntry], place: Placement) -> dict[str, TensorEntry]:
    """Mark the tensors the profile keeps in float (module doc of apply_model, step 0); undo the
    marks of an earlier profile on tensors this one quantizes. A tensor the user keeps in float
    (float_kept without a profile reason) stays so."""
    out: dict[str, TensorEntry] = {}
    for name, e in tensors.items():
        why = place.float_tensors.get(name)
        was = e.extra.get("profile_float")
        if why is not None and not e.extra.get("profile_override") and (not e.float_kept or was):
            e = replace(e, float_kept=True, extra={**e.extra, "profile_float": why})
        elif was is not None and (why is None or e.extra.get("profile_override")):
            e = replace(e, float_kept=False, extra={k: v for k, v in e.extra.items() if k != "profile_float"})
        out[name] = e
    return out


def _float_nodes(model: LoadedModel, place: Placement, tensors: Mapping[str, TensorEntry]) -> dict[str, str]:
    """The profile's float nodes, less those with an output the user quantizes anyway."""
    forced = {n for n, e in tensors.items() if e.extra.get("profile_override")}
    outputs = {node_key(n): set(n.output) for n in model.proto.graph.node}
    return {n: why for n, why in place.float_nodes.items() if not (outputs.get(n, set()) & forced)}


# The largest int32 bias magnitude used: 2**31 - 1 less a margin, so float32 rounding of the raised
# scale never puts round(b / (s_x * s_w)) past the int32 range.
BIAS_INT32_LIMIT = float(2**31 - 1) * (1 - 1e-6)


def fit_bias_int32(
    folded: Any, scales: Mapping[str, float], weights: dict[str, WeightQuant]
) -> tuple[dict[str, WeightQuant], dict[str, dict[str, Any]]]:
    """Raise the weight scale of each output channel whose int32 bias would overflow (apply_model 3b).

    For a Conv / Gemm with a constant bias b, input scale s_x (from the table) and weight scales s_w:
    the quantized bias b / (s_x * s_w[c]) must fit int32. Where it does not, s_w[c] becomes
    |b[c]| / (s_x * BIAS_INT32_LIMIT). Returns the weights (changed ones replaced) and, per weight
    changed, what was done.
    """
    from quantviz.fold import constant_values

    consts = constant_values(folded.graph)
    out = dict(weights)
    report: dict[str, dict[str, Any]] = {}
    for node in folded.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or not node.input[2]:
            continue
        w = out.get(node.input[1])
        b = consts.get(node.input[2])
        s_x = scales.get(node.input[0])
        if w is None or b is None or not s_x or not np.issubdtype(np.asarray(b).dtype, np.floating):
            continue
        bias = np.abs(np.asarray(b, dtype=np.float64).reshape(-1))
        s_w = np.asarray(w.scales, dtype=np.float64).reshape(-1)
        if s_w.size not in (1, bias.size):
            continue
        need = bias / (float(s_x) * BIAS_INT32_LIMIT)  # the smallest weight scale that fits
        if s_w.size == 1:
            need = np.array([need.max()])
        over = need > s_w
        if not over.any():
            continue
        new = np.where(over, need, s_w).astype(np.float32)
        out[w.name] = replace(w, scales=new)
        chans = [int(c) for c in np.flatnonzero(over)]
        worst = float(np.max(need[over] / s_w[over]))
        report[w.name] = {
            "layer": node_key(node),
            "bias": node.input[2],
            "channels": chans,
            "scales_before": [float(v) for v in s_w[over]],
            "scales_after": [float(v) for v in new[over]],
            "text": (
                f"The int32 bias '{node.input[2]}' of layer '{node_key(node)}' overflows with input scale {float(s_x):.3g}: "
                f"the weight scale of {len(chans)} output channel(s) was raised (up to {worst:.3g} times) so the bias fits int32."
            ),
        }
    return out, report
