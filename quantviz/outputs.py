"""The graph outputs: which tensors feed them, their clipping, and figures that say whether the task survives.

A cosine near 1 can hide a destroyed task (issue 8): a detector whose objectness sigmoids are clipped
at 0.09 finds nothing while its output cosine is 0.993, and the per-sample cosine of a one-value
output (a voice-activity logit) is always +-1. So, per graph output:

- beside cosine: the max and mean absolute error and the share of reference values that saturate
  (fall outside the [min, max] the table gives the output tensor, so int8 clamps them);
- an output after Sigmoid / Softmax (through reshaping ops) is probability-like: judged by decision
  agreement, the share of decisions that stay the same (Sigmoid: p >= DECISION_THRESHOLD per value;
  Softmax: the arg-max along its axis, the last one by default);
- an output with one value per sample is judged across samples: the cosine of the batch's values
  (the float column against the quantized one), never the per-sample cosine.

Tensors that feed graph outputs (output_feeders: the output itself and what reaches it through
Sigmoid, Softmax and reshaping / joining ops, e.g. the logit before a final Sigmoid) take their
MinMax range by default when the method's threshold would clip them (protect_outputs): their tails
are the decisions. Graph inputs are protected the same way (protect_outputs). clip_outputs=True
(the CLI's --clip-outputs) lets the method clip them; every clip that remains on such a tensor is
named in settings["output_clip_warnings"].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import onnx

from quantviz.calib.result import MethodConfig, make_threshold
from quantviz.fold import node_key
from quantviz.metrics import ErrorAccumulator, ErrorFigures

if TYPE_CHECKING:  # quantviz.table calls protect_outputs: a runtime import would be circular
    from quantviz.table import TensorEntry

PROBABILITY_OPS = ("Sigmoid", "Softmax")
# ops between a tensor and a graph output that carry its values unchanged (or join them)
PASS_THROUGH_OPS = frozenset(
    {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Concat", "Slice", "Identity", "Split", "Gather", "Cast", "Expand"}
)
DECISION_THRESHOLD = 0.5
# a threshold below the observed abs-max by more than this (relative) clips the tensor
CLIP_RTOL = 1e-6
OUTPUT_MINMAX = "minmax"


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output if o}


def output_feeders(proto: onnx.ModelProto) -> dict[str, str]:
    """tensor -> the graph output it feeds (module doc), graph outputs included."""
    producer = _producers(proto.graph)
    inits = {i.name for i in proto.graph.initializer}
    out: dict[str, str] = {}
    for o in proto.graph.output:
        stack = [o.name]
        while stack:
            t = stack.pop()
            if t in out or t in inits:
                continue
            out[t] = o.name
            p = producer.get(t)
            if p is None:
                continue
            if p.op_type in PROBABILITY_OPS or p.op_type in PASS_THROUGH_OPS:
                data = p.input[:1] if p.op_type not in ("Concat",) else p.input
                stack.extend(i for i in data if i)
    return out


def probability_tensors(proto: onnx.ModelProto) -> set[str]:
    """Outputs of Sigmoid / Softmax, and what carries them unchanged (reshaping ops, Concat of such tensors only)."""
    graph = proto.graph
    out: set[str] = set()
    changed = True
    while changed:  # nodes are topologically sorted in a valid model; the loop also covers one that is not
        changed = False
        for n in graph.node:
            if not n.output or not n.output[0] or n.output[0] in out:
                continue
            data = [i for i in (n.input if n.op_type == "Concat" else n.input[:1]) if i]
            if n.op_type in PROBABILITY_OPS or (n.op_type in PASS_THROUGH_OPS and data and all(i in out for i in data)):
                out.update(o for o in n.output if o)
                changed = True
    return out


def decision_joins(proto: onnx.ModelProto) -> tuple[dict[str, str], dict[str, str]]:
    """Tensors on the way to a graph output downstream of a Concat that joins probabilities with other
    values (a detection head's scores with its box coordinates), and the nodes that write them:
    (tensor -> a sentence why, node -> the same sentence).

    One int8 scale for the joined tensor is set by the larger values (box coordinates reach hundreds of
    pixels), and the probabilities round to zero: a YOLOv8 head's scores (at most 0.24 on its
    calibration images) share output0 with boxes up to 320, a step of 2.5. quantviz.profiles keeps
    these tensors in float under every profile; the joined inputs keep their own scales.
    """
    feeders = output_feeders(proto)
    probs = probability_tensors(proto)
    inits = {i.name for i in proto.graph.initializer} | {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in proto.graph.node:
        for i in n.input:
            if i:
                consumers.setdefault(i, []).append(n)
    producer = _producers(proto.graph)
    found: dict[str, str] = {}
    nodes: dict[str, str] = {}
    for n in proto.graph.node:
        if n.op_type != "Concat" or not n.output or n.output[0] not in feeders:
            continue
        data = [i for i in n.input if i and i not in inits]
        p = [i for i in data if i in probs]
        other = [i for i in data if i not in probs]
        if not p or not other:
            continue
        why = (
            f"joins probabilities ('{p[0]}') with other values ('{other[0]}') on the way to graph output "
            f"'{feeders[n.output[0]]}': one int8 scale for both rounds the probabilities away, so the join and "
            "what follows it to the output stay float (as advised for YOLO heads in onnxruntime's quantizer, "
            "and as ultralytics' int8 exports leave the head's final Concat)"
        )
        stack = [n.output[0]]
        while stack:
            t = stack.pop()
            if t in found or t not in feeders:
                continue
            found[t] = why
            nodes.setdefault(node_key(producer[t]), why)
            stack.extend(o for c in consumers.get(t, []) for o in c.output if o)
    return found, nodes


def probability_op(proto: onnx.ModelProto, output: str) -> onnx.NodeProto | None:
    """The Sigmoid / Softmax a graph output comes from (through reshaping ops), or None."""
    producer = _producers(proto.graph)
    t, seen = output, set()
    while t in producer and t not in seen:
        seen.add(t)
        p = producer[t]
        if p.op_type in PROBABILITY_OPS:
            return p
        if p.op_type not in PASS_THROUGH_OPS - {"Concat"}:
            return None
        t = p.input[0]
    return None


def clips(entry: TensorEntry) -> bool:
    """Whether an entry's range cuts off part of the observed range (TensorEntry.observed_min/max)."""
    lo, hi = entry.observed_min, entry.observed_max
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return False
    tol = CLIP_RTOL * max(abs(lo), abs(hi), 1e-30)
    return entry.min > lo + tol or entry.max < hi - tol


def _config(settings: Mapping[str, Any], entry: Any) -> MethodConfig:
    raw = settings.get("method_config")
    return MethodConfig(**raw) if isinstance(raw, dict) else MethodConfig(symmetric=entry.zero_point == 0)


def graph_inputs(proto: onnx.ModelProto) -> list[str]:
    """The model's float inputs that are not initializers (the tensors the user feeds)."""
    inits = {i.name for i in proto.graph.initializer}
    return [i.name for i in proto.graph.input if i.name not in inits and i.type.tensor_type.elem_type in FLOAT_TYPES]


FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16})


def protect_outputs(
    tensors: Mapping[str, Any],
    feeders: Mapping[str, str],
    settings: Mapping[str, Any],
    clip_outputs: bool,
    inputs: Sequence[str] = (),
) -> tuple[dict[str, Any], dict[str, str]]:
    """MinMax on output-feeding tensors and graph inputs the method clips (unless clip_outputs);
    warnings for the rest.

    Graph inputs are protected like outputs: their range is set by the preprocessing (a normalised
    image spans a fixed range) and every layer reads them, so a clip cuts the brightest and darkest
    pixels before the first layer (issue 8: KL clipped an orientation classifier's image input at
    0.18 while it reaches 2.5; top-1 93.8 % with best-per-layer, which picks layer outputs only).
    """
    out = dict(tensors)
    warnings: dict[str, str] = {}
    roles = {name: f"feeds graph output '{o}'" for name, o in feeders.items()}
    for name in inputs:
        roles.setdefault(name, "is a graph input")
    for name, role in roles.items():
        e = out.get(name)
        if e is None or e.float_kept or not clips(e):
            continue
        lo, hi = float(e.observed_min), float(e.observed_max)
        if clip_outputs or e.method == "override":
            why = "the clip was allowed (--clip-outputs)" if clip_outputs else "its threshold was typed"
            cut = "the output's extreme values, often its decisions, are cut" if name in feeders else "the first layers read cut values"
            warnings[name] = (
                f"'{name}' {role} and is clipped to [{e.min:.6g}, {e.max:.6g}] "
                f"while its values reach [{lo:.6g}, {hi:.6g}] ({why}): {cut}."
            )
            continue
        t = make_threshold(OUTPUT_MINMAX, lo, hi, _config(settings, e))
        out[name] = replace(
            e,
            method=t.method,
            min=float(t.min),
            max=float(t.max),
            threshold=float(t.threshold),
            scale=float(t.scale),
            zero_point=int(t.zero_point),
            extra={
                **e.extra,
                "output_minmax": {"was": e.method, "threshold": float(e.threshold), **({"output": feeders[name]} if name in feeders else {"input": name})},
            },
        )
    return out, warnings


# ---------------------------------------------------------------------------------------------
# Figures per graph output


@dataclass(frozen=True)
class OutputFigures:
    """What analyze reports per graph output besides ErrorFigures (module doc).

    kind: "values", "probability" (after Sigmoid/Softmax) or "one per sample".
    decision_agreement: probability outputs; across_cosine: one-value outputs (cosine over the samples).
    """

    max_abs_error: float
    mean_abs_error: float
    saturated_share: float | None
    kind: str
    decision_agreement: float | None = None
    decision: str = ""
    across_cosine: float | None = None


class OutputJudge:
    """Streams one graph output's batches and gives its OutputFigures."""

    def __init__(self, kind: str, prob_op: str = "", axis: int = -1, clip_range: tuple[float, float] | None = None) -> None:
        self.kind = kind
        self.prob_op = prob_op
        self.axis = axis
        self.clip_range = clip_range
        self.max_abs = 0.0
        self.abs_sum = 0.0
        self.elements = 0
        self.saturated = 0
        self.agree = 0
        self.decisions = 0
        self.across = ErrorAccumulator()
        self._ref: list[npt.NDArray[np.float64]] = []
        self._test: list[npt.NDArray[np.float64]] = []

    def update(self, ref: npt.ArrayLike, test: npt.ArrayLike) -> None:
        a = np.asarray(ref, dtype=np.float64)
        b = np.asarray(test, dtype=np.float64)
        d = np.abs(a - b)
        if d.size:
            self.max_abs = max(self.max_abs, float(np.nanmax(d)))
            self.abs_sum += float(np.nansum(d))
            self.elements += d.size
        if self.clip_range is not None:
            lo, hi = self.clip_range
            self.saturated += int(np.count_nonzero((a < lo) | (a > hi)))
        if self.kind == "probability" and a.size:
            if self.prob_op == "Softmax" and a.ndim >= 1 and a.shape[self.axis] > 1:
                da, db = np.argmax(a, axis=self.axis), np.argmax(b, axis=self.axis)
            else:
                da, db = a >= DECISION_THRESHOLD, b >= DECISION_THRESHOLD
            self.agree += int(np.count_nonzero(da == db))
            self.decisions += int(da.size)
        if self.kind == "one per sample":
            self._ref.append(a.reshape(-1))
            self._test.append(b.reshape(-1))

    def result(self) -> OutputFigures:
        across = None
        if self.kind == "one per sample" and self._ref:
            # one value per sample: the cosine of the column of all samples' values (float vs quantized)
            acc = ErrorAccumulator()
            acc.update(np.concatenate(self._ref)[None, :], np.concatenate(self._test)[None, :])
            across = acc.result().cosine
        return OutputFigures(
            max_abs_error=self.max_abs if self.elements else math.nan,
            mean_abs_error=self.abs_sum / self.elements if self.elements else math.nan,
            saturated_share=self.saturated / self.elements if self.clip_range is not None and self.elements else None,
            kind=self.kind,
            decision_agreement=self.agree / self.decisions if self.decisions else None,
            decision=(
                ("arg-max" if self.prob_op == "Softmax" else f"p >= {DECISION_THRESHOLD}") if self.kind == "probability" else ""
            ),
            across_cosine=across,
        )


def output_kind(proto: onnx.ModelProto, output: str, value: npt.ArrayLike) -> tuple[str, str, int]:
    """(kind, probability op, softmax axis) of a graph output, from the graph and a first batch."""
    p = probability_op(proto, output)
    if p is not None:
        axis = next((a.i for a in p.attribute if a.name == "axis"), -1)
        return "probability", p.op_type, int(axis)
    arr = np.asarray(value)
    if arr.ndim >= 1 and arr[0].size == 1:
        return "one per sample", "", -1
    return "values", "", -1


def figures_note(f: OutputFigures, e: ErrorFigures) -> str:
    """One line for the CLI: what judges this output."""
    parts = [f"cosine {e.cosine:.6f}", f"max |err| {f.max_abs_error:.4g}", f"mean |err| {f.mean_abs_error:.4g}"]
    if f.saturated_share is not None:
        parts.append(f"saturated {f.saturated_share:.2%}")
    if f.decision_agreement is not None:
        parts.append(f"decisions ({f.decision}) agree {f.decision_agreement:.2%}")
    if f.across_cosine is not None:
        parts.append(f"cosine across samples {f.across_cosine:.6f} (one value per sample: the per-sample cosine says nothing)")
    return ", ".join(parts)
