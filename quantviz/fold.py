"""Fold inference-mode BatchNormalization into the Conv (or Gemm) that feeds it.

An engine never runs a BatchNormalization after a Conv: it folds it into the Conv's weights and bias
(seed notes "Folding BatchNorm ReLU"; Jacob et al. 2018, "Quantization and Training of Neural
Networks for Efficient Integer-Arithmetic-Only Inference", section 3.2), per output channel c:

    s[c]  = gamma[c] / sqrt(var[c] + eps)
    w'[c] = w[c] * s[c]
    b'[c] = (b[c] - mean[c]) * s[c] + beta[c]

Weight scales must be measured on w' (what the engine quantizes), not on w. The folded Conv's output
takes the BatchNormalization's output name, so every tensor downstream keeps its name and statistics
gathered on the original model still apply; only the pre-BN Conv output disappears.

fold_batchnorm() is pure: it returns a new ModelProto and never edits the one it is given.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper

log = logging.getLogger(__name__)

# ONNX BatchNormalization's default epsilon (operator spec, every opset).
BN_DEFAULT_EPSILON = 1e-5
FOLDABLE_PRODUCERS = ("Conv", "Gemm")
FOLDED_SUFFIX = "_bnfolded"


@dataclass(frozen=True)
class FoldedPair:
    """One Conv/Gemm + BatchNormalization pair that was folded.

    conv: the kept node's name; batchnorm: the removed node's name; removed_tensor: the former Conv
    output (gone from the folded graph); output: the BN output, now produced by the Conv;
    weight / bias: the initializers holding w' and b' in the folded model.
    """

    conv: str
    op_type: str
    batchnorm: str
    removed_tensor: str
    output: str
    weight: str
    bias: str

    def to_dict(self) -> dict[str, str]:
        return {
            "conv": self.conv,
            "op_type": self.op_type,
            "batchnorm": self.batchnorm,
            "removed_tensor": self.removed_tensor,
            "output": self.output,
            "weight": self.weight,
            "bias": self.bias,
        }


@dataclass(frozen=True)
class FoldReport:
    """What fold_batchnorm did: the folded pairs, and each BatchNormalization left alone with why."""

    folded: tuple[FoldedPair, ...] = ()
    kept: dict[str, str] = field(default_factory=dict)

    @property
    def renamed(self) -> dict[str, str]:
        """Former Conv output -> the tensor that now carries it (the BN output)."""
        return {p.removed_tensor: p.output for p in self.folded}


def node_key(node: onnx.NodeProto) -> str:
    """A node's name, or a stable label for an unnamed node (ONNX allows empty names)."""
    return node.name or f"{node.op_type}({node.output[0] if node.output else ''})"


def constant_values(graph: onnx.GraphProto) -> dict[str, npt.NDArray[Any]]:
    """Initializers and Constant-node outputs (exporters such as Paddle2ONNX store weights so)."""
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _set_float_attr(node: onnx.NodeProto, name: str, value: float) -> None:
    for a in node.attribute:
        if a.name == name:
            a.f = value
            return
    node.attribute.append(helper.make_attribute(name, value))


def _bias_name(weight: str) -> str:
    """A name for a bias the Conv lacked: 'stem.0.weight' -> 'stem.0.bias' (PyTorch's convention)."""
    return weight[: -len("weight")] + "bias" if weight.endswith("weight") else weight + "_bias"


def _unique(name: str, taken: set[str]) -> str:
    out, i = name, 1
    while out in taken:
        out, i = f"{name}_{i}", i + 1
    taken.add(out)
    return out


@dataclass(frozen=True)
class _Plan:
    conv_index: int
    bn_index: int
    weight: npt.NDArray[Any]
    bias: npt.NDArray[Any]
    gemm_beta_reset: bool


def _why_not(
    bn: onnx.NodeProto,
    producer: onnx.NodeProto | None,
    consumers: Counter[str],
    graph_outputs: set[str],
    consts: dict[str, npt.NDArray[Any]],
) -> str | None:
    """Why this BatchNormalization cannot be folded (None: it can)."""
    x = bn.input[0]
    if producer is None or producer.op_type not in FOLDABLE_PRODUCERS:
        return f"its input is not produced by {' or '.join(FOLDABLE_PRODUCERS)}"
    if consumers[x] != 1 or x in graph_outputs:
        return f"the {producer.op_type} output '{x}' is used elsewhere too"
    if int(_attr(bn, "training_mode", 0)) != 0 or len([o for o in bn.output if o]) != 1:  # type: ignore[call-overload]
        return "it runs in training mode"
    if int(_attr(bn, "spatial", 1)) != 1:  # type: ignore[call-overload]
        return "it is non-spatial (opset < 9 spatial=0)"
    if any(p not in consts for p in bn.input[1:5]) or len(bn.input) < 5:
        return "its scale, bias, mean or variance is not a constant"
    if len(producer.input) < 2 or producer.input[1] not in consts:
        return f"the {producer.op_type} weight is not a constant"
    if len(producer.input) > 2 and producer.input[2] and producer.input[2] not in consts:
        return f"the {producer.op_type} bias is not a constant"
    channels = consts[bn.input[1]].size
    if producer.op_type == "Gemm":
        trans_b = int(_attr(producer, "transB", 0))  # type: ignore[call-overload]
        w = consts[producer.input[1]]
        if w.ndim != 2 or w.shape[0 if trans_b else 1] != channels:
            return "the Gemm weight does not match the BatchNormalization's channels"
        if len(producer.input) > 2 and producer.input[2] and consts[producer.input[2]].size not in (1, channels):
            return "the Gemm bias C is a full matrix (only a per-column bias folds)"
    elif consts[producer.input[1]].shape[0] != channels:
        return "the Conv weight does not match the BatchNormalization's channels"
    return None


def _folded_params(bn: onnx.NodeProto, producer: onnx.NodeProto, consts: dict[str, npt.NDArray[Any]]) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """w' = w * s, b' = (b - mean) * s + beta with s = gamma / sqrt(var + eps), in float64, cast back."""
    gamma, beta, mean, var = (consts[n].astype(np.float64).reshape(-1) for n in bn.input[1:5])
    eps = float(_attr(bn, "epsilon", BN_DEFAULT_EPSILON))  # type: ignore[arg-type]
    s = gamma / np.sqrt(var + eps)
    w = consts[producer.input[1]]
    dtype = w.dtype
    w64 = w.astype(np.float64)
    has_bias = len(producer.input) > 2 and bool(producer.input[2])
    if producer.op_type == "Gemm":
        trans_b = int(_attr(producer, "transB", 0))  # type: ignore[call-overload]
        gemm_beta = float(_attr(producer, "beta", 1.0))  # type: ignore[arg-type]
        w_new = w64 * (s[:, None] if trans_b else s[None, :])
        c = np.broadcast_to(consts[producer.input[2]].astype(np.float64).reshape(-1), s.shape) if has_bias else np.zeros_like(s)
        # Y = alpha * A B + beta * C: the bias the BN sees is beta * C; alpha stays on the product.
        b_new = (gemm_beta * c - mean) * s + beta
    else:
        w_new = w64 * s.reshape((-1,) + (1,) * (w.ndim - 1))
        b = consts[producer.input[2]].astype(np.float64).reshape(-1) if has_bias else np.zeros_like(s)
        b_new = (b - mean) * s + beta
    return w_new.astype(dtype), b_new.astype(dtype)


def fold_batchnorm(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, FoldReport]:
    """Fold every BatchNormalization whose input comes only from a Conv (or Gemm) into it.

    Conditions (else the BN is kept and FoldReport.kept says why): inference mode; the producer's
    output feeds nothing else and is not a graph output; weight, bias and BN parameters are constants.
    A weight or bias initializer shared with another node is copied under a new name; otherwise it is
    replaced in place (same name). BN parameters no other node uses are removed.
    """
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    nodes = list(graph.node)
    consts = constant_values(graph)
    producer_of = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    consumers: Counter[str] = Counter(i for n in nodes for i in n.input if i)
    graph_outputs = {o.name for o in graph.output}

    plans: list[_Plan] = []
    kept: dict[str, str] = {}
    for bi, bn in enumerate(nodes):
        if bn.op_type != "BatchNormalization":
            continue
        pi = producer_of.get(bn.input[0])
        producer = nodes[pi] if pi is not None else None
        why = _why_not(bn, producer, consumers, graph_outputs, consts)
        if why is not None:
            kept[node_key(bn)] = why
            log.info("BatchNormalization %s not folded: %s", node_key(bn), why)
            continue
        assert producer is not None and pi is not None
        w, b = _folded_params(bn, producer, consts)
        plans.append(_Plan(pi, bi, w, b, producer.op_type == "Gemm"))
    if not plans:
        return out, FoldReport((), kept)

    taken = {i.name for i in graph.initializer} | {o for n in nodes for o in n.output} | {i.name for i in graph.input}
    init_index = {init.name: k for k, init in enumerate(graph.initializer)}
    new_inits: list[onnx.TensorProto] = []
    replaced: dict[int, onnx.NodeProto] = {}
    removed_bn: set[int] = set()
    folded: list[FoldedPair] = []
    for plan in plans:
        conv, bn = nodes[plan.conv_index], nodes[plan.bn_index]
        new = onnx.NodeProto()
        new.CopyFrom(conv)
        w_name = conv.input[1]
        if consumers[w_name] == 1 and w_name in init_index:
            graph.initializer[init_index[w_name]].CopyFrom(numpy_helper.from_array(plan.weight, w_name))
        else:
            w_name = _unique(w_name + FOLDED_SUFFIX, taken)
            new_inits.append(numpy_helper.from_array(plan.weight, w_name))
            new.input[1] = w_name
        b_name = conv.input[2] if len(conv.input) > 2 and conv.input[2] else ""
        if b_name and consumers[b_name] == 1 and b_name in init_index:
            graph.initializer[init_index[b_name]].CopyFrom(numpy_helper.from_array(plan.bias, b_name))
        else:
            b_name = _unique((b_name or _bias_name(conv.input[1])) + FOLDED_SUFFIX, taken)
            new_inits.append(numpy_helper.from_array(plan.bias, b_name))
            if len(new.input) > 2:
                new.input[2] = b_name
            else:
                new.input.append(b_name)
        if plan.gemm_beta_reset:
            _set_float_attr(new, "beta", 1.0)
        removed_tensor = conv.output[0]
        new.output[0] = bn.output[0]
        replaced[plan.conv_index] = new
        removed_bn.add(plan.bn_index)
        folded.append(FoldedPair(node_key(conv), conv.op_type, node_key(bn), removed_tensor, bn.output[0], w_name, b_name))

    graph.initializer.extend(new_inits)
    new_nodes = [replaced.get(i, n) for i, n in enumerate(nodes) if i not in removed_bn]
    del graph.node[:]
    graph.node.extend(new_nodes)
    _drop_unused(graph, {p.removed_tensor for p in folded})
    return out, FoldReport(tuple(folded), kept)


def _drop_unused(graph: onnx.GraphProto, removed_tensors: set[str]) -> None:
    """Remove initializers and Constant nodes nothing uses any more, and stale value_info.

    Old models (IR < 4) also list initializers among the graph inputs: those entries go too.
    """
    used = {i for n in graph.node for i in n.input if i} | {o.name for o in graph.output}
    dropped = {i.name for i in graph.initializer if i.name not in used}
    if dropped:
        keep_inits = [i for i in graph.initializer if i.name not in dropped]
        del graph.initializer[:]
        graph.initializer.extend(keep_inits)
        keep_inputs = [vi for vi in graph.input if vi.name not in dropped]
        del graph.input[:]
        graph.input.extend(keep_inputs)
    keep_nodes = [n for n in graph.node if n.op_type != "Constant" or any(o in used for o in n.output)]
    if len(keep_nodes) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep_nodes)
    keep_vi = [vi for vi in graph.value_info if vi.name not in removed_tensors]
    del graph.value_info[:]
    graph.value_info.extend(keep_vi)
