"""Engine profiles: which tensors an int8 engine quantizes, and which it keeps in float, and why.

Collection gathers statistics of every float tensor (the statistics file stays profile-free). A
profile then decides, on the model's graph, which of them are quantization points; the others are
marked float in the table (TensorEntry.float_kept, with extra["profile_float"] giving the reason),
so tables, analyses, best-method, EQ and every export follow the engine the user targets. The user
can still quantize such a tensor (quantviz.review.Choice.quantized) or keep any other in float.

The three profiles (quantviz's reading of each engine's documented behaviour):

ort - onnxruntime's QDQ quantizer (onnxruntime.quantization.quantize_static, QuantFormat.QDQ). Its
    default op list is the union of its QLinear and QDQ operator registries
    (onnxruntime/python/tools/quantization/registry.py: QLinearOpsRegistry, QDQRegistry; quantize_static
    uses both when op_types_to_quantize is empty). The list is read from the installed onnxruntime at
    run time (ort_op_types), not copied here, so it follows the version installed. A node of one of
    those ops gets Q/DQ pairs on its float inputs and its output, so a tensor is a quantization point
    when its producer or one of its consumers is of such an op. Besides the op list, quantviz keeps in
    float what onnxruntime would quantize but no engine runs in int8 (module rules below): the inside
    of a decomposed LayerNorm and the inside of a decomposed Softmax or Sigmoid.
trt - TensorRT, explicit quantization ("Working with Quantized Types", Q/DQ layer-placement
    recommendations: quantize all inputs of weighted operations - Convolution, Deconvolution, GEMM -
    and of the layers TensorRT fuses around them: pooling, element-wise addition of residuals,
    concatenation; outputs of weighted operations are not quantized by default). A tensor is a
    quantization point when one of its consumers is Conv, ConvTranspose, Gemm, MatMul, MaxPool,
    AveragePool, GlobalAveragePool, Add or Concat. Softmax, Sigmoid, LayerNorm, reductions and the
    rest run in float (FP16/FP32) in TensorRT's INT8 engines unless Q/DQ says otherwise.
ncnn - ncnn's int8 path (tools/quantize: ncnn2table writes one scale per bottom blob of the layers
    ncnn2int8 quantizes: Convolution, ConvolutionDepthWise and InnerProduct; net_quantize.h
    quantize_convolution / quantize_convolutiondepthwise / quantize_innerproduct, then fuse_requantize
    keeps a Conv -> (ReLU) -> Conv chain in int8). A tensor is a quantization point when one of its
    consumers is a Conv, or a Gemm / MatMul with a constant weight (InnerProduct).

Rules shared by all profiles:
- Fusions (quantviz.fusion, quantviz.fold): BatchNormalization folds into its Conv; Conv/Gemm ->
  ReLU-like activation share the activation's scale. The pre-activation tensor of such a pair is a
  quantization point whenever the post-activation tensor is one.
- Decomposed LayerNorm: ReduceMean(x) -> Sub -> (Pow | Mul) -> ReduceMean -> Add(eps) -> Sqrt ->
  Div (or Reciprocal -> Mul) -> [Mul(gamma)] -> [Add(beta)], as exported from PyTorch < 1.12 or
  PaddlePaddle. Every tensor inside the chain (the centred values, the variance, its root, the
  normalised values before the affine) stays float and the chain's nodes run in float: the variance
  spans orders of magnitude below the values it normalises, and int8 steps there destroy the output
  (issue 8: a transformer classifier at cosine 0.08 end to end, 0.9997 with its LayerNorms float).
  The chain's input and output are quantization points as the profile says.
- Decision joins (quantviz.outputs.decision_joins): a Concat on the way to a graph output that joins
  probabilities (Sigmoid / Softmax outputs) with other values, as detection heads join class scores
  with box coordinates, and every tensor after it up to the output stay float; the joined inputs keep
  their own scales. One int8 scale for the joined tensor follows the largest values (boxes reach
  hundreds of pixels) and rounds every score to zero (issue 8: a YOLOv8n head's output0 at a step of
  2.5 while its scores reach 0.24; recall 0). onnxruntime's quantizer would quantize that Concat (it
  is in its registry); its maintainers advise excluding a YOLO head's final Mul / Concat nodes from
  quantization (onnxruntime issue 14233), ultralytics' int8 exports leave the head's Concat subgraph
  unquantized (ultralytics PR 22124, NNCF ignored scope) and OpenVINO keeps network outputs
  unquantized. TensorRT and ncnn would not quantize the joined output anyway (nothing int8 reads it).
  The Sigmoid / Softmax outputs and their inputs are output feeders (quantviz.outputs): MinMax unless
  the user allows the clip.
- Decomposed GELU, tanh form x * 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))) (jax2tf, older
  TensorFlow and PyTorch approximate='tanh' exports) and erf form x * 0.5 * (1 + erf(x / sqrt(2)))
  (PyTorch's default GELU before opset 20): every tensor inside stays float, x and the result are
  quantization points as the profile says. onnxruntime's graph optimizer fuses both forms into one
  Gelu / FastGelu kernel (float), which its quantizer does not quantize; TensorRT fuses them into one
  pointwise float kernel; ncnn runs its GELU layer in float. Quantized, the cube and the tanh destroy
  the activation: issue 8's file-type classifier had its Tanh at isolated cosine 0.557, top-1 62.5 %.
- Decomposed Softmax: Exp -> ReduceSum -> Div (optionally after a ReduceMax -> Sub): the exponentials
  and their sum stay float. Decomposed Sigmoid: Neg -> Exp -> Add(1) -> Reciprocal / Div(1, .): the
  inside stays float. Engines run these as one float op.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import onnx

from quantviz.errors import QuantvizError
from quantviz.fold import constant_values, node_key
from quantviz.outputs import decision_joins

DEFAULT_PROFILE = "ort"

TRT_CONSUMER_OPS = frozenset(
    {"Conv", "ConvTranspose", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool", "Add", "Concat"}
)
NCNN_WEIGHTED_OPS = frozenset({"Conv", "Gemm", "MatMul"})
# ops that are folded or fused into a quantized neighbour in every engine (quantviz.fold, quantviz.fusion)
FUSED_OPS = frozenset({"BatchNormalization"})

REASON_NOT_QUANTIZED = "{engine} runs no op that reads or writes it in int8 (producer {producer}, read by {consumers})"
REASON_LAYERNORM = "inside a decomposed LayerNorm ({nodes}): engines run LayerNorm in float"
REASON_SOFTMAX = "inside a decomposed Softmax ({nodes}): engines run Softmax in float"
REASON_GELU = "inside a decomposed GELU ({nodes}): engines run GELU as one float op"
REASON_SIGMOID = "inside a decomposed Sigmoid ({nodes}): engines run Sigmoid in float"


def ort_op_types() -> frozenset[str]:
    """onnxruntime's default QDQ op list: its QLinear and QDQ registries, read from the installed version."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return frozenset(QDQRegistry) | frozenset(QLinearOpsRegistry)


@dataclass(frozen=True)
class Profile:
    key: str
    title: str
    rule: str  # "producer_or_consumer" or "consumer"
    summary: str
    sources: tuple[str, ...]

    def op_types(self) -> frozenset[str]:
        if self.key == "ort":
            return ort_op_types()
        if self.key == "trt":
            return TRT_CONSUMER_OPS
        return NCNN_WEIGHTED_OPS


PROFILES: dict[str, Profile] = {
    "ort": Profile(
        "ort",
        "onnxruntime QDQ",
        "producer_or_consumer",
        "inputs and outputs of the ops of onnxruntime's quantizer registry (read at run time); "
        "decomposed LayerNorm, Softmax and Sigmoid insides in float",
        ("onnxruntime/python/tools/quantization/registry.py (QLinearOpsRegistry, QDQRegistry)",),
    ),
    "trt": Profile(
        "trt",
        "TensorRT",
        "consumer",
        "inputs of Conv, ConvTranspose, Gemm, MatMul, pooling, Add and Concat; Softmax, Sigmoid, LayerNorm in float",
        ("TensorRT Developer Guide, Working with Quantized Types: Q/DQ layer-placement recommendations",),
    ),
    "ncnn": Profile(
        "ncnn",
        "ncnn",
        "consumer",
        "inputs of Conv and of Gemm/MatMul with a constant weight (Convolution, ConvolutionDepthWise, InnerProduct)",
        ("ncnn tools/quantize/ncnn2table.cpp, net_quantize.h (quantize_convolution, quantize_innerproduct, fuse_requantize)",),
    ),
}


def profile(key: str | None) -> Profile:
    try:
        return PROFILES[key or DEFAULT_PROFILE]
    except KeyError:
        raise QuantvizError(f"Unknown engine profile '{key}'; choose one of: {', '.join(PROFILES)}.") from None


@dataclass(frozen=True)
class Placement:
    """Where a profile quantizes one model: float_tensors (tensor -> reason) and float_nodes
    (node -> reason: nodes of decomposed patterns that run in float although their op is quantizable)."""

    profile: str
    quantized: frozenset[str]
    float_tensors: dict[str, str] = field(default_factory=dict)
    float_nodes: dict[str, str] = field(default_factory=dict)


def _index(graph: onnx.GraphProto) -> tuple[dict[str, onnx.NodeProto], dict[str, list[onnx.NodeProto]]]:
    producer: dict[str, onnx.NodeProto] = {}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for o in n.output:
            if o:
                producer[o] = n
        for i in n.input:
            if i:
                consumers.setdefault(i, []).append(n)
    return producer, consumers


def _only(consumers: Mapping[str, list[onnx.NodeProto]], t: str, ops: Iterable[str]) -> onnx.NodeProto | None:
    cs = consumers.get(t, [])
    return cs[0] if len(cs) == 1 and cs[0].op_type in set(ops) else None


def _layernorms(graph: onnx.GraphProto) -> list[tuple[list[onnx.NodeProto], str]]:
    """Decomposed LayerNorms: (the chain's nodes, its output tensor)."""
    producer, consumers = _index(graph)
    consts = constant_values(graph)
    found: list[tuple[list[onnx.NodeProto], str]] = []
    for mean in graph.node:
        if mean.op_type != "ReduceMean":
            continue
        x = mean.input[0]
        subs = [n for n in consumers.get(mean.output[0], []) if n.op_type == "Sub" and x in n.input]
        if not subs:
            continue
        sub = subs[0]
        d = sub.output[0]
        sq = next((n for n in consumers.get(d, []) if n.op_type == "Pow" or (n.op_type == "Mul" and list(n.input) == [d, d])), None)
        div = next((n for n in consumers.get(d, []) if n.op_type in ("Div", "Mul") and n is not sq), None)
        if sq is None or div is None:
            continue
        var = _only(consumers, sq.output[0], ("ReduceMean",))
        if var is None:
            continue
        add = _only(consumers, var.output[0], ("Add",))
        if add is None:
            continue
        root = _only(consumers, add.output[0], ("Sqrt",))
        if root is None:
            continue
        chain = [mean, sub, sq, var, add, root]
        std = root.output[0]
        if div.op_type == "Div":
            if div.input[1] != std:
                continue
        else:  # Sub -> Mul(d, Reciprocal(std))
            rec = _only(consumers, std, ("Reciprocal",))
            if rec is None or rec.output[0] not in div.input:
                continue
            chain.append(rec)
        chain.append(div)
        out = div.output[0]
        for op in ("Mul", "Add"):  # the affine: gamma, then beta (constant operands)
            nxt = _only(consumers, out, (op,))
            if nxt is None or not any(i in consts for i in nxt.input if i != out):
                break
            chain.append(nxt)
            out = nxt.output[0]
        found.append((chain, out))
    del producer
    return found


def _softmaxes(graph: onnx.GraphProto) -> list[tuple[list[onnx.NodeProto], str]]:
    _, consumers = _index(graph)
    found = []
    for exp in graph.node:
        if exp.op_type != "Exp":
            continue
        e = exp.output[0]
        cs = consumers.get(e, [])
        red = next((n for n in cs if n.op_type == "ReduceSum"), None)
        div = next((n for n in cs if n.op_type == "Div" and list(n.input[:1]) == [e]), None)
        if red is None or div is None or red.output[0] not in div.input:
            continue
        found.append(([exp, red, div], div.output[0]))
    return found


def _sigmoids(graph: onnx.GraphProto) -> list[tuple[list[onnx.NodeProto], str]]:
    _, consumers = _index(graph)
    found = []
    for neg in graph.node:
        if neg.op_type != "Neg":
            continue
        exp = _only(consumers, neg.output[0], ("Exp",))
        if exp is None:
            continue
        add = _only(consumers, exp.output[0], ("Add",))
        if add is None:
            continue
        last = _only(consumers, add.output[0], ("Reciprocal", "Div"))
        if last is None or (last.op_type == "Div" and last.input[1] != add.output[0]):
            continue
        found.append(([neg, exp, add, last], last.output[0]))
    return found


GELU_INNER_OPS = frozenset({"Mul", "Add", "Div", "Pow", "Sub"})


def _gelus(graph: onnx.GraphProto) -> list[tuple[list[onnx.NodeProto], str]]:
    """Decomposed GELUs, tanh form x * 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))) and erf form
    x * 0.5 * (1 + erf(x / sqrt(2))), in any order of the constant factors: (the nodes, the output).

    From each Tanh / Erf: forward through single-consumer Add / Mul / Div with a constant operand to
    the Mul that multiplies by a non-constant x (then one more Mul by a constant, PyTorch's 0.5);
    backward from the Tanh / Erf input through Mul / Add / Div / Pow / Sub whose operands are
    constants, x or tensors of the chain: x must be the only non-constant leaf."""
    producer, consumers = _index(graph)
    consts = constant_values(graph)
    found: list[tuple[list[onnx.NodeProto], str]] = []
    for t in graph.node:
        if t.op_type not in ("Tanh", "Erf"):
            continue
        chain, out = [t], t.output[0]
        x: str | None = None
        while x is None:
            nxt = _only(consumers, out, ("Add", "Mul", "Div"))
            if nxt is None:
                break
            others = [i for i in nxt.input if i != out]
            if len(others) != 1:
                break
            chain.append(nxt)
            out = nxt.output[0]
            if others[0] not in consts:
                if nxt.op_type != "Mul":
                    break
                x = others[0]
        if x is None:
            continue
        last = _only(consumers, out, ("Mul",))
        if last is not None and any(i in consts for i in last.input if i != out):
            chain.append(last)
            out = last.output[0]
        inner: list[onnx.NodeProto] = []
        stack, ok, seen = [t.input[0]], True, set()
        while stack and ok:
            u = stack.pop()
            if u == x or u in consts or u in seen:
                continue
            seen.add(u)
            p = producer.get(u)
            if p is None or p.op_type not in GELU_INNER_OPS or len(inner) > 8:
                ok = False
                break
            inner.append(p)
            stack.extend(i for i in p.input if i)
        if ok and inner:
            found.append((inner[::-1] + chain, out))
    return found


def placement(proto: onnx.ModelProto, key: str | None = None) -> Placement:
    """Which float activation tensors of the model the profile quantizes, and why the others are float."""
    prof = profile(key)
    graph = proto.graph
    producer, consumers = _index(graph)
    consts = constant_values(graph)
    ops = prof.op_types() | FUSED_OPS
    float_tensors: dict[str, str] = {}
    float_nodes: dict[str, str] = {}
    patterns = [(REASON_LAYERNORM, p) for p in _layernorms(graph)]
    patterns += [(REASON_SOFTMAX, p) for p in _softmaxes(graph)]
    patterns += [(REASON_SIGMOID, p) for p in _sigmoids(graph)]
    patterns += [(REASON_GELU, p) for p in _gelus(graph)]
    pattern_nodes: set[str] = set()
    for reason, (chain, out) in patterns:
        names = ", ".join(node_key(n) for n in chain[:3]) + (", ..." if len(chain) > 3 else "")
        why = reason.format(nodes=names)
        for n in chain:
            pattern_nodes.add(node_key(n))
            float_nodes.setdefault(node_key(n), why)
            for o in n.output:
                if o and o != out:
                    float_tensors.setdefault(o, why)

    join_tensors, join_nodes = decision_joins(proto)
    for t, why in join_tensors.items():
        float_tensors.setdefault(t, why)
    for key_, why in join_nodes.items():
        pattern_nodes.add(key_)
        float_nodes.setdefault(key_, why)

    def quantizing(n: onnx.NodeProto) -> bool:
        if node_key(n) in pattern_nodes or n.op_type not in ops:
            return False
        if prof.key == "ncnn" and n.op_type in ("Gemm", "MatMul"):
            return len(n.input) > 1 and n.input[1] in consts
        return True

    tensors = [i.name for i in graph.input if i.name not in consts] + [o for n in graph.node for o in n.output if o]
    quantized: set[str] = set()
    for t in tensors:
        if t in consts or t in float_tensors:
            continue
        p = producer.get(t)
        cs = consumers.get(t, [])
        hit = any(quantizing(c) for c in cs)
        if prof.rule == "producer_or_consumer" and p is not None and quantizing(p):
            hit = True
        if hit:
            quantized.add(t)
        else:
            readers = ", ".join(sorted({c.op_type for c in cs})) or "nothing (a graph output)"
            float_tensors[t] = REASON_NOT_QUANTIZED.format(
                engine=prof.title, producer=p.op_type if p is not None else "graph input", consumers=readers
            )
    # fused Conv -> ReLU pairs: the pre-activation tensor shares the activation's scale
    from quantviz.fusion import analyse

    try:
        groups = analyse(proto).groups
    except Exception:  # noqa: BLE001 - a model the fusion analysis cannot read has no fused pairs
        groups = ()
    for g in groups:
        if g.post_activation in quantized and g.pre_activation in float_tensors:
            float_tensors.pop(g.pre_activation)
            quantized.add(g.pre_activation)
    return Placement(prof.key, frozenset(quantized), float_tensors, float_nodes)
