"""Layers taken out of int8 in a QDQ model: float, or int16 activations with int8 weights.

A fallback of layer L (a node of the QDQ model quantviz.qdq builds, as quantviz.sensitivity_plan names
layers) changes only what L computes with:
- its activation inputs read through a QuantizeLinear/DequantizeLinear pair are read in float (the
  tensor before the pair) or through an int16 pair of the same threshold (T / 32767 instead of T / 127;
  uint16 with the zero point times 257 for an asymmetric uint8 table);
- its weights and bias: float (the float model's values) for a float fallback, the int8 weights and
  int32 bias unchanged for int16;
- its output: int8 readers of the output still read it through the table's int8 pair (an engine
  quantizes a tensor where an int8 layer reads it); readers that fall back too read it as in the first
  point; a graph output fed by L comes out in float (or through the int16 pair).
The caller passes whole fused-scale groups (quantviz.mixed does): a Conv and the ReLU sharing its
scale leave int8 together.

int16 QuantizeLinear/DequantizeLinear: the ONNX domain accepts int16 from opset 21; the installed
onnxruntime (1.31) runs both that and its own com.microsoft QuantizeLinear/DequantizeLinear (int16 at
any opset). The QDQ models quantviz builds are at opset 13 to 17, and raising a whole model's opset
changes the meaning of other ops (Split, Reduce*, Pad, Resize), so int16 pairs use the com.microsoft
domain below opset 21 and the ONNX domain from 21 (int16_domain). onnxruntime's own quantizer makes the
same choice for 16-bit activations.

MACs (multiply-accumulates per sample) of Conv, ConvTranspose, Gemm and MatMul from the inferred
shapes, so a configuration can say what share of the arithmetic it leaves out of int8.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from quantviz.errors import QuantvizError
from quantviz.graph import consumers, producers

FLOAT = "float"
INT16 = "int16"
PRECISIONS = (FLOAT, INT16)
MS_DOMAIN = "com.microsoft"
INT16_STANDARD_OPSET = 21  # ONNX QuantizeLinear/DequantizeLinear accept int16 from this opset
INT8_MAX, INT16_MAX = 127, 32767
UINT16_PER_UINT8 = 257  # 65535 / 255: a uint8 zero point in uint16 steps
FLOAT_SUFFIX = "::qv_float"
INT16_SUFFIX = "::qv_int16"


def default_opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def int16_domain(proto: onnx.ModelProto) -> str:
    """The domain of the int16 Q/DQ nodes for this model (module doc)."""
    return "" if default_opset(proto) >= INT16_STANDARD_OPSET else MS_DOMAIN


def _const(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {i.name: i for i in graph.initializer}


class _Editor:
    """Edits one copy of the QDQ model; every added name is unique to what it stands for."""

    def __init__(self, proto: onnx.ModelProto, float_weights: Mapping[str, onnx.TensorProto]) -> None:
        self.proto = proto
        self.graph = proto.graph
        self.inits = _const(self.graph)
        self.producer = producers(self.graph.node)
        self.readers = consumers(self.graph.node)
        self.float_weights = float_weights
        self.domain = int16_domain(proto)
        self.added: dict[str, str] = {}  # (what) -> tensor name already made
        self.new_nodes: list[onnx.NodeProto] = []

    def _array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.inits[name])

    def float_weight(self, dq: onnx.NodeProto) -> str | None:
        """The float model's initializer behind a weight or bias DequantizeLinear (None: not found)."""
        src = str(dq.input[0])
        for cand in (src.removesuffix("_quantized"), str(dq.output[0])):
            t = self.float_weights.get(cand)
            if t is not None:
                name = cand + FLOAT_SUFFIX
                if name not in self.inits:
                    copy = onnx.TensorProto()
                    copy.CopyFrom(t)
                    copy.name = name
                    self.graph.initializer.append(copy)
                    self.inits[name] = copy
                return name
        return None

    def int16_pair(self, x: str, q8: onnx.NodeProto) -> str:
        """x through an int16 Q/DQ pair with the int8 pair q8's threshold; made once per tensor."""
        key = INT16 + ":" + x
        if key in self.added:
            return self.added[key]
        scale = self._array(q8.input[1]).astype(np.float32)
        zp8 = self._array(q8.input[2]) if len(q8.input) > 2 and q8.input[2] else np.zeros((), np.int8)
        if zp8.dtype == np.uint8:
            s16 = scale * np.float32(255 / 65535)
            zp16 = (zp8.astype(np.int64) * UINT16_PER_UINT8).astype(np.uint16)
        else:
            s16 = scale * np.float32(INT8_MAX / INT16_MAX)
            zp16 = (zp8.astype(np.int64) * 0).astype(np.int16)  # symmetric: zero point 0
        base = x + INT16_SUFFIX
        self.graph.initializer.extend(
            [
                numpy_helper.from_array(s16.astype(np.float32), base + "/scale"),
                numpy_helper.from_array(zp16, base + "/zero_point"),
            ]
        )
        q = helper.make_node(
            "QuantizeLinear", [x, base + "/scale", base + "/zero_point"], [base + "/q"], name=base + "/Q", domain=self.domain
        )
        dq = helper.make_node(
            "DequantizeLinear",
            [base + "/q", base + "/scale", base + "/zero_point"],
            [base],
            name=base + "/DQ",
            domain=self.domain,
        )
        self.new_nodes.extend([q, dq])
        self.added[key] = base
        return base


def _retype_output(ed: _Editor, dq: onnx.NodeProto, raw: str, q: onnx.NodeProto, precision: str) -> None:
    """The DequantizeLinear of a layer's output becomes an Identity of the raw output (float) or the
    end of an int16 pair with the same threshold; its readers and a graph output keep its name."""
    src = raw if precision == FLOAT else ed.int16_pair(raw, q)
    ident = helper.make_node("Identity", [src], [dq.output[0]], name=dq.name + FLOAT_SUFFIX)
    dq.CopyFrom(ident)


def _activation_pair(ed: _Editor, tensor: str) -> tuple[onnx.NodeProto, onnx.NodeProto] | None:
    """(Q, DQ) when `tensor` is the output of a DequantizeLinear of an activation (not a weight)."""
    dq = ed.producer.get(tensor)
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in ed.inits:
        return None
    q = ed.producer.get(dq.input[0])
    if q is None or q.op_type != "QuantizeLinear":
        return None
    return q, dq


def apply_fallbacks(
    qdq: onnx.ModelProto, fallbacks: Mapping[str, str], float_weights: Mapping[str, onnx.TensorProto] | None = None
) -> onnx.ModelProto:
    """A copy of the QDQ model with each layer of `fallbacks` (node name -> "float" | "int16") out of int8.

    float_weights: the float model's initializers by name (quantviz.qdq.PreparedModel.proto), for the
    float fallback's weights; without it a float layer keeps its dequantized int8 weights.
    """
    bad = sorted(p for p in set(fallbacks.values()) if p not in PRECISIONS)
    if bad:
        raise QuantvizError(f"A fallback precision is one of {', '.join(PRECISIONS)}, not '{bad[0]}'.")
    out = onnx.ModelProto()
    out.CopyFrom(qdq)
    if not fallbacks:
        return out
    ed = _Editor(out, float_weights or {})
    nodes = {n.name: n for n in out.graph.node}
    missing = sorted(set(fallbacks) - set(nodes))
    if missing:
        raise QuantvizError(f"The quantized model has no layer named '{missing[0]}'.")
    for name, precision in fallbacks.items():
        node = nodes[name]
        for k, i in enumerate(node.input):
            if not i:
                continue
            dq = ed.producer.get(i)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            if dq.input[0] in ed.inits:  # a weight or a bias
                if precision == FLOAT:
                    w = ed.float_weight(dq)
                    if w is not None:
                        node.input[k] = w
                continue
            pair = _activation_pair(ed, i)
            if pair is None:
                continue
            q, _ = pair
            node.input[k] = q.input[0] if precision == FLOAT else ed.int16_pair(q.input[0], q)
        # its output leaves int8 for every reader: float (the pair becomes an Identity) or the int16 pair
        for o in node.output:
            for q in [c for c in ed.readers.get(o, []) if c.op_type == "QuantizeLinear"]:
                for dq in [c for c in ed.readers.get(q.output[0], []) if c.op_type == "DequantizeLinear"]:
                    _retype_output(ed, dq, o, q, precision)
    out.graph.node.extend(ed.new_nodes)
    uses_ms = any(n.domain == MS_DOMAIN for n in ed.new_nodes)
    if uses_ms and not any(o.domain == MS_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    _topological(out.graph)
    _drop_unused(out.graph)
    return out


def _topological(graph: onnx.GraphProto) -> None:
    """Reorder the nodes so every node follows the producers of its inputs (onnxruntime requires it)."""
    produced = {o for n in graph.node for o in n.output if o}
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for n in pending:
            if all(i in ready or i not in produced for i in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise QuantvizError("The fallback made a cycle in the quantized model (a bug: please report it).")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove Q/DQ nodes nobody reads any more, and initializers no node reads."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        dead = [
            n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and not any(o in read for o in n.output)
        ]
        if not dead:
            break
        ids = {id(n) for n in dead}
        keep = [n for n in graph.node if id(n) not in ids]
        del graph.node[:]
        graph.node.extend(keep)
    read = {i for n in graph.node for i in n.input} | outputs
    inits = [i for i in graph.initializer if i.name in read]
    if len(inits) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(inits)


# ---------------------------------------------------------------------------------------------
# MACs


def _shape(types: Mapping[str, onnx.TypeProto], inits: Mapping[str, onnx.TensorProto], name: str) -> list[int] | None:
    if name in inits:
        return list(inits[name].dims)
    t = types.get(name)
    if t is None or t.WhichOneof("value") != "tensor_type" or not t.tensor_type.HasField("shape"):
        return None
    dims = []
    for d in t.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1)  # a free batch: per sample
    return dims


def layer_macs(proto: onnx.ModelProto) -> dict[str, int]:
    """Multiply-accumulates per sample of each Conv, ConvTranspose, Gemm and MatMul node (by node name)
    whose shapes are known: output elements x (input channels / group x kernel) for a Conv,
    M x N x K for a product. Other nodes are not counted (their arithmetic is small beside these)."""
    if not proto.graph.value_info:
        # onnx raises many types; without shapes nothing is counted
        with contextlib.suppress(Exception):
            proto = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    g = proto.graph
    types = {vi.name: vi.type for vi in [*g.input, *g.value_info, *g.output]}
    inits = _const(g)
    out: dict[str, int] = {}
    for n in g.node:
        if n.op_type in ("Conv", "ConvTranspose") and len(n.input) > 1:
            w = _shape(types, inits, n.input[1])
            y = _shape(types, inits, n.output[0])
            if w is None or y is None or len(w) < 2:
                continue
            if n.op_type == "Conv":
                out[n.name] = math.prod(y[1:]) * math.prod(w[1:])
            else:  # ConvTranspose: each input element meets C_out/group x kernel weights
                x = _shape(types, inits, n.input[0])
                if x is not None:
                    out[n.name] = math.prod(x[1:]) * math.prod(w[1:])
        elif n.op_type in ("Gemm", "MatMul") and len(n.input) > 1:
            a = _shape(types, inits, n.input[0])
            b = _shape(types, inits, n.input[1])
            y = _shape(types, inits, n.output[0])
            if a is None or b is None or y is None or not a:
                continue
            k = a[-1]
            if n.op_type == "Gemm" and any(at.name == "transA" and at.i for at in n.attribute):
                k = a[0]
            out[n.name] = math.prod(y[1:] if len(y) > 2 else y[-1:]) * k
    return out
