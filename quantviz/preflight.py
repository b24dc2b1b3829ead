"""Pre-flight check of a loaded model: what it is, before any sample runs (issue 8, item 1).

preflight(model) is a pure function of the loaded model. It returns frozen records, each a severity and
one sentence the user can read: the batch axis of every input (a dim_param, -1 or 0 as PaddlePaddle and
others declare a dynamic batch, a fixed size, or none), the opset and what it means for the analysis and
the QDQ export, subgraphs (If / Loop / Scan, whose inner tensors are not collected: onnxruntime returns
only main-graph values, so they have no table entry and stay float everywhere), external data,
non-float inputs, inputs that look like a state without a batch axis, operators of custom domains, and
models that are already quantized. A BLOCKING item stops a run with its sentence (CLI exit status 2,
the app's st.error); INFO and WARNING items are shown and the run goes on.

Opset: QuantizeLinear / DequantizeLinear take a per-channel ``axis`` from opset 13 (ONNX Operators.md,
DequantizeLinear-13); onnxruntime's quantizer writes it for per-channel weights and for their int32
biases whatever the model's opset, so at opset 10-12 its QDQ model does not load ("Unrecognized
attribute: axis"). analysis_model() therefore converts a copy of the model with onnx's own version
converter (onnx.version_converter) to ANALYSIS_OPSET, keeping every tensor name; when the converter
cannot, the analysis and the QDQ export use per-tensor weight scales at the model's own opset (which
onnxruntime loads). Collection always runs the model as it is.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import onnx
from onnx import version_converter

from quantviz.model import FLOAT_TYPES, InputSpec, LoadedModel, batch_dim

log = logging.getLogger(__name__)

INFO = "info"
WARNING = "warning"
BLOCKING = "blocking"
SEVERITIES = (BLOCKING, WARNING, INFO)

ANALYSIS_OPSET = 13  # first opset whose Q/DQ nodes take a per-channel axis
MIN_QDQ_OPSET = 10  # QuantizeLinear / DequantizeLinear exist from opset 10
DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})
SUBGRAPH_OPS = frozenset({"If", "Loop", "Scan"})
# Ops that only exist in a model that is already quantized (ONNX and onnxruntime's com.microsoft).
QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
        "QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu",
        "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearConcat", "QLinearSoftmax", "QGemm",
        "QAttention", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "DynamicQuantizeLSTM", "QOrderedMatMul",
    }
)  # fmt: skip
NAMES_SHOWN = 5  # names listed in one sentence before "and N more"


@dataclass(frozen=True)
class PreflightItem:
    """One finding: its severity (INFO, WARNING, BLOCKING), what it is about and one sentence."""

    severity: str
    topic: str
    text: str


@dataclass(frozen=True)
class AnalysisModel:
    """The proto the analysis and the QDQ export quantize, and how it was obtained from the model's.

    converted: the opset was raised with onnx's version converter; per_tensor_only: it could not be,
    so weights take one scale per tensor. note: one sentence saying which, empty when nothing changed.
    """

    proto: onnx.ModelProto
    opset: int
    converted: bool
    per_tensor_only: bool
    note: str


def _names(names: list[str]) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:NAMES_SHOWN])
    return shown + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")


def default_opset(proto: onnx.ModelProto) -> int:
    """The model's ai.onnx opset (0 when it imports none)."""
    return next((int(o.version) for o in proto.opset_import if o.domain in DEFAULT_DOMAINS), 0)


@lru_cache(maxsize=8)
def _convert(serialized: bytes, target: int) -> tuple[bytes | None, str]:
    try:
        converted = version_converter.convert_version(onnx.load_from_string(serialized), target)
        return converted.SerializeToString(), ""
    except Exception as exc:  # noqa: BLE001 - the converter raises many types (RuntimeError, ValueError, C++ errors)
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, text


def analysis_model(proto: onnx.ModelProto) -> AnalysisModel:
    """A copy of proto at ANALYSIS_OPSET or above (onnx.version_converter), or proto itself with
    per-tensor weights when the converter fails (module docstring). Tensor names are kept."""
    opset = default_opset(proto)
    if opset >= ANALYSIS_OPSET:
        return AnalysisModel(proto, opset, False, False, "")
    raw, why = _convert(proto.SerializeToString(), ANALYSIS_OPSET)
    if raw is not None:
        out = onnx.load_from_string(raw)
        try:
            out = onnx.shape_inference.infer_shapes(out, strict_mode=False)
        except Exception as exc:  # noqa: BLE001 - shapes are optional here
            log.warning("Shape inference of the converted model failed: %s", exc)
        note = (
            f"The model is at opset {opset}: the analysis and the QDQ export use a copy converted to opset "
            f"{ANALYSIS_OPSET} with onnx's version converter (per-channel Q/DQ needs {ANALYSIS_OPSET}); collection runs it as it is."
        )
        return AnalysisModel(out, ANALYSIS_OPSET, True, False, note)
    note = (
        f"The model is at opset {opset} and onnx's version converter cannot raise it to {ANALYSIS_OPSET} ({why}): "
        "the analysis and the QDQ export use one scale per weight tensor (per-channel Q/DQ needs opset 13)."
    )
    return AnalysisModel(proto, opset, False, True, note)


def _all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    out: list[onnx.NodeProto] = []
    for node in graph.node:
        out.append(node)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                out.extend(_all_nodes(attr.g))
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    out.extend(_all_nodes(g))
    return out


def _subgraph_holder(node: onnx.NodeProto) -> onnx.GraphProto:
    """A graph holding the node's subgraphs' nodes (not the node itself), for _all_nodes."""
    g = onnx.GraphProto()
    for attr in node.attribute:
        for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else []):
            g.node.extend(sub.node)
    return g


def batch_axis_text(spec: InputSpec) -> str:
    """What the first dimension of an input is, in words: a dim_param, -1, 0, unnamed, fixed k, or none."""
    if not spec.shape:
        return "none (a scalar)"
    d = spec.shape[0]
    if isinstance(d, str):
        return f"dynamic ('{d}')"
    if d is None:
        return "dynamic (unnamed)"
    if d <= 0:
        return f"dynamic (declared {d})"
    return f"fixed at {d}"


def _input_items(model: LoadedModel) -> list[PreflightItem]:
    items: list[PreflightItem] = []
    dynamic = [s.name for s in model.inputs if s.shape and batch_dim(s) is None]
    for spec in model.inputs:
        kind = batch_axis_text(spec)
        if not spec.shape:
            items.append(PreflightItem(INFO, "batch", f"Input '{spec.name}' is a scalar (0-d {spec.dtype}): give a 0-d array, fed to every run, or one value per sample."))
            continue
        d = spec.shape[0]
        fixed = batch_dim(spec)
        if fixed is not None and dynamic and spec.name not in dynamic:
            items.append(PreflightItem(
                WARNING, "state",
                f"Input '{spec.name}' {spec.shape_text()} has a fixed first dimension ({fixed}) while {_names(dynamic)} has a dynamic one: "
                "if it is a state without a batch axis (recurrent state, audio frames), give it with one more leading axis "
                "(one value per sample) and each sample runs on its own with batch 1.",
            ))  # fmt: skip
        elif fixed is not None:
            items.append(PreflightItem(INFO, "batch", f"Input '{spec.name}' {spec.shape_text()}: batch axis {kind}, so every run takes {fixed} sample{'s' if fixed > 1 else ''}."))
        elif isinstance(d, int):
            items.append(PreflightItem(
                INFO, "batch",
                f"Input '{spec.name}' declares its first dimension as {d}, which onnxruntime reads as dynamic: it is taken as the batch axis.",
            ))  # fmt: skip
        else:
            items.append(PreflightItem(INFO, "batch", f"Input '{spec.name}' {spec.shape_text()}: batch axis {kind}."))
        if spec.dtype not in FLOAT_TYPES.values():
            items.append(PreflightItem(
                INFO, "dtype",
                f"Input '{spec.name}' is {spec.dtype}, not float: it is fed as given and never quantized (synthetic data fills it with zeros).",
            ))  # fmt: skip
    return items


def preflight(model: LoadedModel) -> tuple[PreflightItem, ...]:
    """Every finding about the model, blocking ones first (module docstring)."""
    proto = model.proto
    nodes = _all_nodes(proto.graph)
    items: list[PreflightItem] = []
    quantized = Counter(n.op_type for n in nodes if n.op_type in QUANTIZED_OPS)
    if quantized:
        ops = ", ".join(f"{k} x{v}" for k, v in sorted(quantized.items()))
        items.append(PreflightItem(
            BLOCKING, "quantized",
            f"This model is already quantized (it has {ops}): quantviz calibrates float models; load the float model it was made from.",
        ))  # fmt: skip
    opset = default_opset(proto)
    if opset < ANALYSIS_OPSET:
        items.append(PreflightItem(WARNING, "opset", analysis_model(proto).note))
    else:
        items.append(PreflightItem(INFO, "opset", f"Opset {opset}: the analysis and the QDQ export run at this opset."))
    items.extend(_input_items(model))
    subgraph_nodes = [n for n in proto.graph.node if n.op_type in SUBGRAPH_OPS]
    if subgraph_nodes:
        names = [f"{n.name or n.output[0]} ({n.op_type})" for n in subgraph_nodes]
        inner = len({o for n in subgraph_nodes for i in _all_nodes(_subgraph_holder(n)) if i.op_type != "Constant" for o in i.output if o})
        items.append(PreflightItem(
            WARNING, "subgraph",
            f"{len(subgraph_nodes)} node{'s' if len(subgraph_nodes) > 1 else ''} with subgraphs ({', '.join(names[:NAMES_SHOWN])}): "
            f"the {inner} tensor{'s' if inner != 1 else ''} inside them (If branches, Loop and Scan bodies) are not collected "
            "(onnxruntime cannot return them), so they have no entry in any table and stay float in every export and in the QDQ model; "
            "only the nodes' inputs and outputs are calibrated.",
        ))  # fmt: skip
    custom = sorted({f"{n.domain}:{n.op_type}" for n in nodes if n.domain not in DEFAULT_DOMAINS and n.op_type not in QUANTIZED_OPS})
    if custom:
        items.append(PreflightItem(
            INFO, "ops",
            f"Operators of other domains ({', '.join(custom[:NAMES_SHOWN])}) run as onnxruntime runs them; no engine profile quantizes them, so they stay in float.",
        ))  # fmt: skip
    if model.external_files:
        items.append(PreflightItem(
            INFO, "external",
            f"The weights are in external data ({', '.join(model.external_files)}) beside the model: keep that file next to the .onnx; "
            "an upload of the .onnx alone cannot carry it.",
        ))  # fmt: skip
    order = {s: i for i, s in enumerate(SEVERITIES)}
    return tuple(sorted(items, key=lambda i: order[i.severity]))


def blocking(items: tuple[PreflightItem, ...]) -> PreflightItem | None:
    """The first item that stops a run, or None."""
    return next((i for i in items if i.severity == BLOCKING), None)
