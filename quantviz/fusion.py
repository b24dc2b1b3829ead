"""Which tensors share one scale, and where an engine must requantize (seed "Folding BatchNorm ReLU").

- Conv / Gemm followed by Relu (or a ReLU-like Clip: min = 0, e.g. ReLU6) when the Conv output has
  no other consumer: the engine runs them as one op whose int8 output is the post-activation tensor,
  so both tensors share ONE scale, taken from the post-activation tensor; the quantizer's clip at the
  zero point does the ReLU (Jacob et al. 2018, section 2.4; TensorRT and TFLite fuse the same way).
  Calibrating the pre-ReLU tensor separately wastes half the int8 range on negatives the ReLU drops.
- BatchNormalization is folded first (quantviz.fold): after folding the Conv's output is the former
  BN output, so Conv -> BN -> Relu fuses like Conv -> Relu.
- Add and Concat join tensors that may have different scales: engines requantize the inputs to a
  common scale (often the output's). requant_points() lists them with their scales.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper

from quantviz.fold import FoldReport, constant_values, fold_batchnorm, node_key
from quantviz.graph import consumers as graph_consumers

FUSABLE_PRODUCERS = ("Conv", "Gemm")
RELU_LIKE = ("Relu", "Clip")
JOIN_OPS = ("Add", "Concat")
# Scales closer than this (relative) count as equal: they come from the same float32 arithmetic.
SAME_SCALE_RTOL = 1e-6


@dataclass(frozen=True)
class ShareGroup:
    """A Conv/Gemm and the ReLU-like activation fused into it: tensors share the scale of scale_from."""

    producer: str
    producer_op: str
    activation: str
    activation_op: str
    pre_activation: str
    post_activation: str
    # the activation's output range: (0, inf) for Relu, Clip's (min, max); the fused op's output is
    # the producer's clipped to it (what an engine computes, quantviz.sensitivity compares)
    bounds: tuple[float, float] = (0.0, math.inf)

    @property
    def tensors(self) -> tuple[str, str]:
        return (self.pre_activation, self.post_activation)

    @property
    def scale_from(self) -> str:
        return self.post_activation

    def to_dict(self) -> dict[str, str]:
        return {
            "producer": self.producer,
            "producer_op": self.producer_op,
            "activation": self.activation,
            "activation_op": self.activation_op,
            "pre_activation": self.pre_activation,
            "post_activation": self.post_activation,
        }


@dataclass(frozen=True)
class JoinNode:
    """An Add or Concat with its non-constant inputs (tensor names of the folded graph)."""

    node: str
    op_type: str
    inputs: tuple[str, ...]
    output: str


@dataclass(frozen=True)
class FusionInfo:
    """Result of analyse(): fused groups, join nodes and the BatchNorm folding it was computed on."""

    groups: tuple[ShareGroup, ...]
    joins: tuple[JoinNode, ...]
    fold: FoldReport

    def shared(self) -> dict[str, tuple[str, ...]]:
        """tensor -> the tensors it shares its scale with (both directions)."""
        out: dict[str, tuple[str, ...]] = {}
        for g in self.groups:
            out[g.pre_activation] = (*out.get(g.pre_activation, ()), g.post_activation)
            out[g.post_activation] = (*out.get(g.post_activation, ()), g.pre_activation)
        return out

    def scale_source(self) -> dict[str, str]:
        """pre-activation tensor -> the post-activation tensor whose scale it takes."""
        return {g.pre_activation: g.post_activation for g in self.groups}

    def activation_of(self, producer: str) -> ShareGroup | None:
        return next((g for g in self.groups if g.producer == producer), None)


def _clip_bounds(node: onnx.NodeProto, consts: Mapping[str, Any]) -> tuple[float, float]:
    """Clip's (min, max): inputs 1 and 2 from opset 11, attributes before; absent = -inf / +inf."""
    lo, hi = -math.inf, math.inf
    for a in node.attribute:
        if a.name == "min":
            lo = float(helper.get_attribute_value(a))
        elif a.name == "max":
            hi = float(helper.get_attribute_value(a))
    if len(node.input) > 1 and node.input[1]:
        v = consts.get(node.input[1])
        lo = float(np.asarray(v).reshape(-1)[0]) if v is not None else math.nan
    if len(node.input) > 2 and node.input[2]:
        v = consts.get(node.input[2])
        hi = float(np.asarray(v).reshape(-1)[0]) if v is not None else math.nan
    return lo, hi


def is_relu_like(node: onnx.NodeProto, consts: Mapping[str, Any]) -> bool:
    """Relu, or a Clip whose lower bound is exactly 0 (ReLU6 and the like). LeakyRelu is not."""
    if node.op_type == "Relu":
        return True
    if node.op_type == "Clip":
        lo, hi = _clip_bounds(node, consts)
        return lo == 0.0 and hi > 0  # NaN (a non-constant bound) fails both tests
    return False


def analyse(proto: onnx.ModelProto) -> FusionInfo:
    """Fusion groups and join nodes of a model, computed on its BatchNorm-folded form.

    The tensor names in the result are those of the folded graph (a subset of the original's:
    folding removes only the pre-BN Conv outputs, listed in FusionInfo.fold).
    """
    folded, report = fold_batchnorm(proto)
    return analyse_folded(folded, report)


def analyse_folded(folded: onnx.ModelProto, report: FoldReport) -> FusionInfo:
    """analyse() of a model already folded (report: what fold_batchnorm folded)."""
    graph = folded.graph
    consts = constant_values(graph)
    consumers = graph_consumers(graph.node)
    uses = Counter({k: len(v) for k, v in consumers.items()})
    graph_outputs = {o.name for o in graph.output}

    groups: list[ShareGroup] = []
    joins: list[JoinNode] = []
    for n in graph.node:
        if n.op_type in FUSABLE_PRODUCERS and n.output:
            y = n.output[0]
            users = consumers.get(y, [])
            if uses[y] == 1 and y not in graph_outputs and users[0].op_type in RELU_LIKE and is_relu_like(users[0], consts):
                act = users[0]
                bounds = _clip_bounds(act, consts) if act.op_type == "Clip" else (0.0, math.inf)
                groups.append(ShareGroup(node_key(n), n.op_type, node_key(act), act.op_type, y, act.output[0], bounds))
        elif n.op_type in JOIN_OPS and n.output:
            inputs = tuple(i for i in n.input if i and i not in consts)
            joins.append(JoinNode(node_key(n), n.op_type, inputs, n.output[0]))
    return FusionInfo(tuple(groups), tuple(joins), report)


@dataclass(frozen=True)
class RequantPoint:
    """An Add/Concat whose inputs an engine must bring to one scale.

    input_scales[i] is None when the table has no scale for inputs[i] (kept in float, skipped).
    differ: the inputs' scales are not all equal; max_ratio: largest / smallest input scale (how many
    times coarser the common scale is for the finest input when the engine uses the largest).
    """

    node: str
    op_type: str
    inputs: tuple[str, ...]
    input_scales: tuple[float | None, ...]
    output: str
    output_scale: float | None
    differ: bool
    max_ratio: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "op_type": self.op_type,
            "inputs": list(self.inputs),
            "input_scales": [None if s is None else float(s) for s in self.input_scales],
            "output": self.output,
            "output_scale": None if self.output_scale is None else float(self.output_scale),
            "differ": self.differ,
            "max_ratio": float(self.max_ratio),
        }


def requant_points(info: FusionInfo, scales: Mapping[str, float]) -> tuple[RequantPoint, ...]:
    """Every Add/Concat of the model with its inputs' scales (from a table) and whether they differ."""
    out: list[RequantPoint] = []
    for j in info.joins:
        s_in = tuple(scales.get(t) for t in j.inputs)
        known = [s for s in s_in if s is not None and s > 0]
        ratio = max(known) / min(known) if known else 1.0
        differ = len(known) > 1 and not all(math.isclose(s, known[0], rel_tol=SAME_SCALE_RTOL) for s in known)
        out.append(RequantPoint(j.node, j.op_type, j.inputs, s_in, j.output, scales.get(j.output), differ, ratio))
    return tuple(out)
