"""Planning a sensitivity analysis: the isolated and accumulated models derived from the QDQ model.

quantviz.sensitivity runs them (its module doc says how and what each figure means). Here: which nodes
are layers (find_layers), the isolated model (the float model plus a quantized copy of every layer fed
from float tensors), the accumulated model (the QDQ model with every layer output exposed), and plan(),
which builds the QDQ model once and both models from it. Both builders also make pruned models for some
layers only (prune=True: only the nodes their outputs need): a Ray task's run of layers
(quantviz.distributed) and analyze's runs of layers when one sample's outputs exceed its memory budget
(quantviz.layer_runs).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper

from quantviz.errors import QuantvizError
from quantviz.fusion import analyse_folded
from quantviz.graph import consumers, producers
from quantviz.model import LoadedModel
from quantviz.qdq import PreparedModel, QdqBuild, build
from quantviz.table import CalibrationTable

ISOLATED_SUFFIX = "::qv_isolated"
ISOLATED_PREFIX = "qv_isolated::"
PARTS = ("input", "weights", "output")  # the error decomposition's parts, in LayerSpec.part_tensors' order
PART_SUFFIXES = tuple(f"::qv_{p}_only" for p in PARTS)
OUTPUT_SUFFIX = "_QuantizeLinear_Input"  # onnxruntime's name for a graph output feeding its Q
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class LayerSpec:
    """One analysed layer: node name and op, its float output tensor, and where each version lives.

    accumulated_tensor: the dequantized output in the QDQ model; isolated_tensor: the dequantized
    output of the layer's isolated copy in the isolated model.
    """

    name: str
    op_type: str
    output_tensor: str
    accumulated_tensor: str
    isolated_tensor: str
    quantized_inputs: tuple[str, ...]
    # the error decomposition (plan(parts=True)): the layer's copies with only its input activations,
    # only its weights and bias, only its output quantized; "" where that part quantizes nothing
    part_tensors: tuple[str, str, str] = ("", "", "")
    # a Conv/Gemm fused with the ReLU-like activation that reads it (quantviz.fusion): the engine runs
    # them as one op whose output is clipped to the activation's range and shares its scale, so the
    # layer's float and quantized outputs are compared after that clip (a negative pre-activation value
    # the ReLU drops is no error, nor is a value the shared [0, max] range cannot hold)
    activation: tuple[float, float] | None = None

    def as_engine(self, values: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """The layer's output as the engine's fused op gives it (clipped to a fused activation's range)."""
        if self.activation is None:
            return values
        lo, hi = self.activation
        return np.asarray(np.clip(values, lo if math.isfinite(lo) else None, hi if math.isfinite(hi) else None))


@dataclass(frozen=True)
class AnalysisPlan:
    """The two models an analysis runs, built once per (model, table)."""

    qdq: QdqBuild
    layers: tuple[LayerSpec, ...]
    isolated: onnx.ModelProto
    accumulated: onnx.ModelProto
    model_outputs: tuple[str, ...]


# ---------------------------------------------------------------------------------------------
# Building the isolated and accumulated models from the QDQ model


def _index(graph: onnx.GraphProto) -> tuple[dict[str, onnx.NodeProto], dict[str, list[onnx.NodeProto]]]:
    return producers(graph.node), consumers(graph.node)


def _float_name(name: str, float_tensors: set[str]) -> str:
    """The float-model name of a QDQ-model tensor (onnxruntime renames graph outputs it quantizes)."""
    if name not in float_tensors and name.endswith(OUTPUT_SUFFIX) and name[: -len(OUTPUT_SUFFIX)] in float_tensors:
        return name[: -len(OUTPUT_SUFFIX)]
    return name


def find_layers(qdq: QdqBuild) -> list[LayerSpec]:
    """The quantized layers: QDQ-model nodes (not Q/DQ) whose first output goes through a Q/DQ pair."""
    graph = qdq.proto.graph
    producer, consumers = _index(graph)
    float_graph = qdq.prepared.proto.graph
    float_tensors = {o for n in float_graph.node for o in n.output if o} | {i.name for i in float_graph.input}
    float_ops = {n.name: n.op_type for n in float_graph.node}
    inits = {i.name for i in graph.initializer}
    fused = {g.pre_activation: g.bounds for g in analyse_folded(qdq.prepared.proto, qdq.prepared.fold).groups}
    layers: list[LayerSpec] = []
    for node in graph.node:
        if node.op_type in QDQ_OPS or node.name not in float_ops or not node.output or not node.output[0]:
            continue
        q = next((c for c in consumers.get(node.output[0], []) if c.op_type == "QuantizeLinear"), None)
        dq = next((c for c in consumers.get(q.output[0], []) if c.op_type == "DequantizeLinear"), None) if q is not None else None
        float_out = False
        if dq is None:
            # an int8 layer whose output the engine profile leaves in float (TensorRT, ncnn: a Conv whose
            # reader is not an int8 op): quantized inputs and weights, float output; still a layer
            weight_dq = any(
                producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" and producer[i].input[0] in inits
                for i in node.input[1:2]
            )
            if not weight_dq:
                continue
            float_out = True
        quantized_inputs = []
        for i in node.input:
            p = producer.get(i)
            if p is not None and p.op_type == "DequantizeLinear" and p.input[0] not in inits:
                quantized_inputs.append(
                    _float_name(producer[p.input[0]].input[0], float_tensors) if p.input[0] in producer else i
                )
        out = _float_name(node.output[0], float_tensors)
        acc = node.output[0] if float_out or dq is None else dq.output[0]
        layers.append(
            LayerSpec(node.name, node.op_type, out, acc, out + ISOLATED_SUFFIX, tuple(quantized_inputs), activation=fused.get(out))
        )
    return layers


def _copy_node(node: onnx.NodeProto, inputs: Sequence[str], outputs: Sequence[str], name: str) -> onnx.NodeProto:
    new = onnx.NodeProto()
    new.CopyFrom(node)
    del new.input[:]
    new.input.extend(inputs)
    del new.output[:]
    new.output.extend(outputs)
    new.name = name
    return new


def _isolated_copy(
    spec: LayerSpec,
    qdq_graph: onnx.GraphProto,
    producer: dict[str, onnx.NodeProto],
    consumers: dict[str, list[onnx.NodeProto]],
    qdq_inits: dict[str, onnx.TensorProto],
    float_tensors: set[str],
    float_inits: dict[str, onnx.TensorProto],
    *,
    mask: tuple[bool, bool, bool] = (True, True, True),
    out_name: str | None = None,
    tag: str | None = None,
    float_node: onnx.NodeProto | None = None,
) -> tuple[list[onnx.NodeProto], set[str]]:
    """The nodes of one layer's isolated copy and the QDQ-model initializers they use (to be prefixed).

    mask (input activations, weights and bias, output): which parts are quantized; a part left out
    reads the float tensor (its input activation, or the float model's initializer: float_node gives
    the float node's input names) or leaves the output unquantized. The default quantizes all three:
    the layer's isolated copy, whose output is spec.isolated_tensor (out_name names another)."""
    node = next(n for n in qdq_graph.node if n.name == spec.name)
    q_in, q_w, q_out = mask
    tag = tag or ISOLATED_SUFFIX + "/" + spec.name
    final = out_name or spec.isolated_tensor
    nodes: list[onnx.NodeProto] = []
    used: set[str] = set()

    def init_ref(name: str) -> str:
        if not name:
            return name
        if name in qdq_inits:
            f = float_inits.get(name)
            if f is not None and f == qdq_inits[name]:
                return name
            used.add(name)
            return ISOLATED_PREFIX + name
        return name

    inputs: list[str] = []
    for k, i in enumerate(node.input):
        p = producer.get(i) if i else None
        if p is None or p.op_type != "DequantizeLinear":
            inputs.append(init_ref(i) if i in qdq_inits else _float_name(i, float_tensors))
            continue
        src = p.input[0]
        new_out = f"{i}{tag}/{k}"
        if src in qdq_inits:  # a quantized weight or bias: the same DequantizeLinear on the same int8/int32 data
            if not q_w:
                if float_node is None:
                    raise QuantvizError(f"The float node of layer '{spec.name}' is missing.")
                inputs.append(float_node.input[k])
                continue
            nodes.append(_copy_node(p, [init_ref(x) for x in p.input], [new_out], f"{p.name}{tag}/{k}"))
        else:
            q = producer.get(src)
            if q is None or q.op_type != "QuantizeLinear":
                raise QuantvizError(f"Unexpected QDQ structure at the input '{i}' of layer '{spec.name}'.")
            x = _float_name(q.input[0], float_tensors)
            if not q_in:
                inputs.append(x)
                continue
            q_out_name = f"{src}{tag}/{k}"
            nodes.append(_copy_node(q, [x, *[init_ref(v) for v in q.input[1:]]], [q_out_name], f"{q.name}{tag}/{k}"))
            nodes.append(_copy_node(p, [q_out_name, *[init_ref(v) for v in p.input[1:]]], [new_out], f"{p.name}{tag}/{k}"))
        inputs.append(new_out)
    raw = node.output[0] + tag + "/raw"
    q = next((c for c in consumers.get(node.output[0], []) if c.op_type == "QuantizeLinear"), None)
    dq = next((c for c in consumers.get(q.output[0], []) if c.op_type == "DequantizeLinear"), None) if q is not None else None
    if q is None or dq is None or not q_out:  # the layer's output stays float (find_layers) or is not asked for
        raw = final
    outputs = [raw] + [f"{o}{tag}/out{j}" if o else "" for j, o in enumerate(node.output[1:], 1)]
    nodes.append(_copy_node(node, inputs, outputs, spec.name + tag))
    if q is None or dq is None or not q_out:
        return nodes, used
    nodes.append(_copy_node(q, [raw, *[init_ref(v) for v in q.input[1:]]], [raw + "/q"], q.name + tag))
    nodes.append(_copy_node(dq, [raw + "/q", *[init_ref(v) for v in dq.input[1:]]], [final], dq.name + tag))
    return nodes, used


def _quantized_parts(
    node: onnx.NodeProto,
    producer: dict[str, onnx.NodeProto],
    consumers: dict[str, list[onnx.NodeProto]],
    qdq_inits: dict[str, onnx.TensorProto],
) -> tuple[bool, bool, bool]:
    """Whether the layer quantizes any input activation, any weight or bias, its output."""
    dqs = [producer[i] for i in node.input if i and i in producer and producer[i].op_type == "DequantizeLinear"]
    q = next((c for c in consumers.get(node.output[0], []) if c.op_type == "QuantizeLinear"), None)
    dq = next((c for c in consumers.get(q.output[0], []) if c.op_type == "DequantizeLinear"), None) if q is not None else None
    return (
        any(p.input[0] not in qdq_inits for p in dqs),
        any(p.input[0] in qdq_inits for p in dqs),
        dq is not None,
    )


def _prune(graph: onnx.GraphProto, keep_outputs: Iterable[str]) -> None:
    """Drop nodes and initializers that none of keep_outputs depends on."""
    producer = {o: n for n in graph.node for o in n.output if o}
    needed: set[str] = set()
    stack = list(keep_outputs)
    live_nodes: set[int] = set()
    while stack:
        t = stack.pop()
        if t in needed:
            continue
        needed.add(t)
        n = producer.get(t)
        if n is not None and id(n) not in live_nodes:
            live_nodes.add(id(n))
            stack.extend(i for i in n.input if i)
    kept = [n for n in graph.node if id(n) in live_nodes]
    del graph.node[:]
    graph.node.extend(kept)
    inits = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def _value_info(name: str, elem: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, None)


def isolated_outputs(layers: Sequence[LayerSpec], model_outputs: Sequence[str]) -> list[tuple[str, str]]:
    """The isolated model's outputs in order, each with the float tensor it stands for (same shape and
    type): every layer's float output, isolated output and parts, then the model's own outputs."""
    names: list[str] = []
    for spec in layers:
        for n in (spec.output_tensor, spec.isolated_tensor, *(t for t in spec.part_tensors if t)):
            if n not in names:
                names.append(n)
    names += [o for o in model_outputs if o not in names]
    return [(n, _float_of(n)) for n in names]


def isolated_model(
    qdq: QdqBuild, layers: Sequence[LayerSpec], prune: bool = False, copies: bool = True, *, with_outputs: bool = True
) -> onnx.ModelProto:
    """The float model plus each layer's isolated quantized copy; outputs: float and isolated layer
    outputs, then the model's own outputs (with_outputs False: not those). copies False: the float
    model alone, exposing the layers' float outputs and the model's outputs (the references, when
    other processes run the copies). prune: only the nodes those outputs depend on."""
    prepared: PreparedModel = qdq.prepared
    out = onnx.ModelProto()
    out.CopyFrom(prepared.proto)
    del out.opset_import[:]
    out.opset_import.extend(qdq.proto.opset_import)  # the quantizer may have raised the opset
    out.ir_version = max(out.ir_version, qdq.proto.ir_version)
    g = out.graph
    qgraph = qdq.proto.graph
    producer, consumers = _index(qgraph)
    qdq_inits = {i.name: i for i in qgraph.initializer}
    float_inits = {i.name: i for i in g.initializer}
    float_tensors = {o for n in g.node for o in n.output if o} | {i.name for i in g.input}
    used: set[str] = set()
    float_nodes = {n.name: n for n in g.node}
    for spec in layers if copies else ():
        nodes, u = _isolated_copy(spec, qgraph, producer, consumers, qdq_inits, float_tensors, float_inits)
        g.node.extend(nodes)
        used |= u
        for k, part in enumerate(spec.part_tensors):
            if not part:
                continue
            mask = (k == 0, k == 1, k == 2)
            nodes, u = _isolated_copy(
                spec, qgraph, producer, consumers, qdq_inits, float_tensors, float_inits,
                mask=mask, out_name=part, tag=PART_SUFFIXES[k] + "/" + spec.name, float_node=float_nodes.get(spec.name),
            )  # fmt: skip
            g.node.extend(nodes)
            used |= u
    for name in sorted(used):
        t = onnx.TensorProto()
        t.CopyFrom(qdq_inits[name])
        t.name = ISOLATED_PREFIX + name
        g.initializer.append(t)
    model_outputs = [o.name for o in prepared.proto.graph.output]
    elem = prepared.float_types
    del g.output[:]
    outputs = isolated_outputs(layers, model_outputs if with_outputs else ())
    if not copies:
        outputs = [(n, f) for n, f in outputs if n == f]
    names = [n for n, _ in outputs]
    for n, f in outputs:
        g.output.append(_value_info(n, elem.get(f, onnx.TensorProto.FLOAT)))
    if prune:
        _prune(g, names)
    return out


def _float_of(name: str) -> str:
    """The float tensor an isolated output (or one of its parts) stands for."""
    for suffix in (ISOLATED_SUFFIX, *PART_SUFFIXES):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def with_parts(qdq: QdqBuild, layers: Sequence[LayerSpec]) -> list[LayerSpec]:
    """The layers with their decomposition's output names (LayerSpec.part_tensors): one per part the
    layer quantizes (a Relu has no weights, a Conv whose output the engine keeps in float no output)."""
    graph = qdq.proto.graph
    producer, consumers = _index(graph)
    inits = {i.name: i for i in graph.initializer}
    nodes = {n.name: n for n in graph.node}
    out: list[LayerSpec] = []
    for spec in layers:
        has = _quantized_parts(nodes[spec.name], producer, consumers, inits)
        names = tuple(spec.output_tensor + suffix if h else "" for h, suffix in zip(has, PART_SUFFIXES, strict=True))
        out.append(replace(spec, part_tensors=(names[0], names[1], names[2])))
    return out


def accumulated_model(
    qdq: QdqBuild, layers: Sequence[LayerSpec], prune: bool = False, *, with_outputs: bool = True
) -> onnx.ModelProto:
    """The QDQ model with each layer's dequantized output exposed, then the model outputs (with_outputs
    False: not those). prune: only the nodes those outputs depend on (a run of layers, quantviz.layer_runs)."""
    out = onnx.ModelProto()
    out.CopyFrom(qdq.proto)
    g = out.graph
    model_outputs = [o.name for o in g.output] if with_outputs else []
    elem = qdq.prepared.float_types
    del g.output[:]
    names: list[str] = []
    for spec in layers:
        if spec.accumulated_tensor not in names:
            names.append(spec.accumulated_tensor)
    names += [o for o in model_outputs if o not in names]
    for n in names:
        g.output.append(_value_info(n, elem.get(n, onnx.TensorProto.FLOAT)))
    if prune:
        _prune(g, names)
    return out


def plan(
    model: LoadedModel,
    table: CalibrationTable,
    *,
    per_channel: bool = True,
    float_nodes: Iterable[str] = frozenset(),
    only_layers: Iterable[str] | None = None,
    parts: bool = False,
    copies: bool = True,
) -> AnalysisPlan:
    """Build the QDQ model once and derive the isolated and accumulated models from it; parts: the
    isolated model also holds each layer's error decomposition (with_parts). copies False: the isolated
    model is the float model alone with the layers' float outputs (isolated_model), the layers' isolated
    copies being run elsewhere (quantviz.distributed)."""
    qdq = build(model, table, per_channel=per_channel, float_nodes=float_nodes)
    layers = find_layers(qdq)
    if only_layers is not None:
        wanted = set(only_layers)
        layers = [s for s in layers if s.name in wanted]
    if parts:
        layers = with_parts(qdq, layers)
    return AnalysisPlan(
        qdq=qdq,
        layers=tuple(layers),
        isolated=isolated_model(qdq, layers, prune=only_layers is not None, copies=copies),
        accumulated=accumulated_model(qdq, layers),
        model_outputs=tuple(o.name for o in qdq.prepared.proto.graph.output),
    )
