"""EQ as a calibration method: model + statistics + data -> CalibrationTable (KL start, EQ's
searched input scales and per-channel weight scales, the settings trace).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from quantviz.calib.result import MethodConfig
from quantviz.collect import effective_batch_size
from quantviz.config import INT8_MAX
from quantviz.data import CalibrationSource
from quantviz.easyquant.evaluator import SUBGRAPH_OPS, ModelEvaluator
from quantviz.easyquant.search import (
    Cancel,
    EQConfig,
    EQLayer,
    EQLayerResult,
    EQResult,
    EQStart,
    Progress,
    eq_search,
)
from quantviz.errors import QuantvizError
from quantviz.fold import constant_values
from quantviz.fusion import analyse
from quantviz.model import LoadedModel
from quantviz.qdq import PreparedModel, prepare_float_model
from quantviz.stats import CalibrationStats
from quantviz.table import CalibrationTable, apply_model, calibrate_model, is_finite_entry
from quantviz.weights import WeightQuant, weight_scales

EQ_LAYER_OPS = ("Conv", "Gemm")


def find_layers(
    prepared: PreparedModel, scales: Mapping[str, float], weights: Mapping[str, WeightQuant]
) -> tuple[list[EQLayer], dict[str, str]]:
    """The Conv/Gemm layers EQ can search, in graph order, and why the others are left out."""
    graph = prepared.proto.graph
    consts = constant_values(graph)
    info = analyse(prepared.proto)
    fused = {g.producer: g for g in info.groups}
    layers: list[EQLayer] = []
    skipped: dict[str, str] = {}
    for node in graph.node:
        if node.op_type not in EQ_LAYER_OPS:
            continue
        if len(node.input) < 2 or node.input[1] not in consts:
            skipped[node.name] = "its weight is not a constant"
            continue
        x, w = node.input[0], node.input[1]
        wq = weights.get(w)
        if wq is None:
            skipped[node.name] = "its weight is not a float constant"
            continue
        if wq.node != node.name:
            skipped[node.name] = f"its weight is shared with {wq.node}, which EQ searches"
            continue
        if node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute):
            skipped[node.name] = "Gemm with transA = 1 (the samples are not on the first axis)"
            continue
        if x in consts:
            skipped[node.name] = "its input is a constant"
            continue
        s = scales.get(x)
        if not s or not np.isfinite(s) or s <= 0:
            skipped[node.name] = f"its input '{x}' has no usable scale in the table"
            continue
        group = fused.get(node.name)
        layers.append(
            EQLayer(
                name=node.name,
                op_type=node.op_type,
                input=x,
                weight=w,
                output=group.post_activation if group else node.output[0],
                activation=group.activation if group else "",
                channels=int(np.asarray(wq.scales).size),
            )
        )
    return layers, skipped


def _usable_scales(table: CalibrationTable) -> dict[str, float]:
    return {n: float(e.scale) for n, e in table.tensors.items() if not e.float_kept and is_finite_entry(e) and e.scale > 0}


def calibrate_eq(
    model: LoadedModel,
    stats: CalibrationStats,
    source: CalibrationSource,
    config: EQConfig | None = None,
    progress: Progress | None = None,
    *,
    cancel: Cancel | None = None,
    method_config: MethodConfig | None = None,
    per_channel: bool = True,
    profile: str | None = None,
    clip_outputs: bool = False,
    cluster: Any = None,
    model_source: Any = None,
) -> CalibrationTable:
    """EasyQuant calibration table: EQ input scales on the layers it searched, KL elsewhere.

    Starts from the KL table of the model (quantviz.table.calibrate_model: fused shared scales, abs-max
    weights on the BatchNorm-folded model), runs eq_search with a ModelEvaluator on the first
    min(N, config.max_samples) samples of `source`, and returns the table with: the searched input
    tensors' entries replaced (method "eq"; extra["eq"] keeps the KL values and the layers), the
    searched weights' per-channel scales in table.weights (FORMATS.md {"axis", "scales", "node"}; "method"
    "eq" and "absmax_scales" added), requantization multipliers recomputed, and settings["eq"] with the
    config and each layer's cosine trace. Symmetric int8 only. progress(done, total) counts layer groups
    over all rounds; cancel: asked before each group (CancelledError, nothing returned).
    cluster (a quantviz.distributed.ClusterConfig), in mode "isolated" only: the layer groups are
    searched by Ray tasks, each over a run of whole groups (a layer's isolated search reads float
    inputs only, so it does not depend on the other groups); the workers open model_source (the model's
    path or bytes) and the source's data. The table is the one of a single process.
    """
    config = config or EQConfig()
    method_config = method_config or MethodConfig()
    if not method_config.symmetric:
        raise QuantvizError("EQ searches symmetric int8 scales; calibrate without --asymmetric to use it.")
    if method_config.power_of_two:
        raise QuantvizError("EQ searches free scales, not powers of two; calibrate without --power-of-two to use it.")
    if source.num_samples < 1:
        raise QuantvizError("EQ needs at least one calibration sample; the data holds none.")
    setup = eq_setup(model, stats, method_config, per_channel, profile, clip_outputs)
    base, skipped = setup.base, setup.skipped
    if cluster is not None and config.mode == "isolated":
        from quantviz.distributed import eq_isolated_on_cluster

        if model_source is None:
            raise QuantvizError("EQ on a cluster needs the model's path or bytes for the workers.")
        result, samples = eq_isolated_on_cluster(
            model, model_source, stats, source, config, method_config, cluster, per_channel=per_channel, profile=profile,
            clip_outputs=clip_outputs, groups=len(eq_groups(setup.layers)), progress=progress, cancel=cancel,
        )  # fmt: skip
        ordered = {layer.name: result.layers[layer.name] for group in eq_groups(setup.layers) for layer in group}
        return eq_table(base, replace(result, layers=ordered), model, per_channel, samples, skipped)
    evaluator = eq_evaluator(model, setup, source, config)
    result = eq_search(
        setup.layers, setup.initial, evaluator, config, on_round=evaluator.start_round, on_fixed=evaluator.fix, progress=progress,
        cancel=cancel,
    )  # fmt: skip
    return eq_table(base, result, model, per_channel, evaluator.samples, skipped)


@dataclass(frozen=True)
class EQSetup:
    """What EQ starts from: the KL table, the prepared float model, the layers it searches (graph
    order) with their starting scales, and the layers it skips with why."""

    base: CalibrationTable
    prepared: PreparedModel
    scales: dict[str, float]
    weights: dict[str, WeightQuant]
    layers: list[EQLayer]
    skipped: dict[str, str]
    initial: dict[str, EQStart]
    fused_pre: frozenset[str]


def eq_groups(layers: Sequence[EQLayer]) -> list[list[EQLayer]]:
    """The layer groups EQ searches together (the layers reading one tensor), in search order."""
    from quantviz.easyquant.search import _groups

    return _groups(layers)


def eq_evaluator(
    model: LoadedModel, setup: EQSetup, source: CalibrationSource, config: EQConfig, layers: Sequence[EQLayer] | None = None
) -> ModelEvaluator:
    """The real evaluate of eq_search for `layers` (default: all that EQ searches)."""
    return ModelEvaluator(
        setup.prepared, list(layers if layers is not None else setup.layers), setup.scales, setup.weights, source, config,
        effective_batch_size(model, config.max_samples, source), setup.fused_pre,
    )  # fmt: skip


def eq_setup(
    model: LoadedModel,
    stats: CalibrationStats,
    method_config: MethodConfig,
    per_channel: bool,
    profile: str | None,
    clip_outputs: bool,
) -> EQSetup:
    """EQ's starting point (see EQSetup); QuantvizError when it finds no layer to search."""
    base = calibrate_model(model, stats, "kl", method_config, per_channel=per_channel, profile=profile, clip_outputs=clip_outputs)
    prepared = prepare_float_model(model)
    scales = _usable_scales(base)
    weights = weight_scales(prepared.proto, per_channel)
    layers, skipped = find_layers(prepared, scales, weights)
    layers, skipped = _outside_control_flow(prepared, layers, skipped)
    if not layers:
        reasons = "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:3]) or "the model has no Conv or Gemm"
        raise QuantvizError(f"EQ found no Conv or Gemm layer it can search ({reasons}); use another method.")
    initial = {
        layer.name: EQStart(scales[layer.input], np.asarray(weights[layer.weight].scales, dtype=np.float32)) for layer in layers
    }
    fused_pre = frozenset(g.pre_activation for g in analyse(prepared.proto).groups)
    return EQSetup(base, prepared, dict(scales), dict(weights), list(layers), dict(skipped), initial, fused_pre)


def _outside_control_flow(
    prepared: PreparedModel, layers: Sequence[EQLayer], skipped: Mapping[str, str]
) -> tuple[list[EQLayer], dict[str, str]]:
    """The layers whose input the node-by-node walk can reach without running an If/Loop/Scan (the walk
    runs one node at a time and cannot step into a subgraph); the others keep KL, with the reason."""
    nodes = list(prepared.proto.graph.node)
    keep: list[EQLayer] = []
    out = dict(skipped)
    for layer in layers:
        flow = [n.name for n in ModelEvaluator._needed_nodes(nodes, {layer.input}) if n.op_type in SUBGRAPH_OPS]  # noqa: SLF001
        if flow:
            out[layer.name] = f"its input comes through control flow ({', '.join(flow)}), which EQ's walk cannot run"
        else:
            keep.append(layer)
    return keep, out


def eq_table(
    base: CalibrationTable,
    result: EQResult,
    model: LoadedModel,
    per_channel: bool,
    samples: int,
    skipped: Mapping[str, str] | None = None,
) -> CalibrationTable:
    """The KL table with EQ's scales put in (see calibrate_eq)."""
    tensors = dict(base.tensors)
    by_input: dict[str, list[EQLayerResult]] = {}
    for r in result.layers.values():
        by_input.setdefault(r.layer.input, []).append(r)
    for name, rs in by_input.items():
        e = tensors[name]
        s = float(np.float32(rs[0].input_scale))
        t = s * INT8_MAX
        kl = {"method": e.method, "threshold": e.threshold, "scale": e.scale, "min": e.min, "max": e.max}
        tensors[name] = replace(
            e,
            method="eq",
            min=-t,
            max=t,
            threshold=t,
            scale=s,
            zero_point=0,
            extra={
                **e.extra,
                "eq": {
                    "start": kl,
                    "layers": [r.layer.name for r in rs],
                    "cosine": float(np.mean([r.cosine for r in rs])),
                    "initial_cosine": float(np.mean([r.initial_cosine for r in rs])),
                },
            },
        )
    table = apply_model(
        replace(base, tensors=tensors),
        model,
        per_channel,
        weight_overrides={r.layer.weight: r.weight_scales.tolist() for r in result.layers.values()},
        weight_method="eq",
    )
    settings = {
        **table.settings,
        "method": "eq",
        "eq": {
            **asdict(result.config),
            "start": "kl activations, abs-max weights",
            "samples": samples,
            "evaluations": result.evaluations,
            "not_searched": dict(skipped or {}),
            "layers": {name: _layer_settings(r) for name, r in result.layers.items()},
        },
    }
    return replace(table, settings=settings)


def _layer_settings(r: EQLayerResult) -> dict[str, Any]:
    return {
        "op_type": r.layer.op_type,
        "input": r.layer.input,
        "weight": r.layer.weight,
        "output": r.layer.output,
        "shared_input": list(r.shared_input),
        "initial_input_scale": r.initial_input_scale,
        "input_scale": r.input_scale,
        "initial_cosine": r.initial_cosine,
        "cosine": r.cosine,
        "weight_channels_changed": int(np.sum(r.weight_scales != r.initial_weight_scales)),
        "trace": [t.to_dict() for t in r.trace],
        "input_search": {"scales": [float(v) for v in r.input_curve.x], "cosines": [float(v) for v in r.input_curve.y]},
        "weight_search": {"factors": [float(v) for v in r.weight_curve.x], "cosines": [float(v) for v in r.weight_curve.y]},
    }
