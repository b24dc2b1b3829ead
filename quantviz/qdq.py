"""A quantize-dequantize (QDQ) ONNX model carrying exactly the scales of a calibration table.

One builder serves the export (a QDQ .onnx the user downloads) and the error analysis
(quantviz.sensitivity runs the same model). The quantization itself is onnxruntime's
(onnxruntime.quantization.quantize_static, QuantFormat.QDQ): it decides which ops get Q/DQ pairs, how
weights are quantized per channel and how biases become int32, exactly as for a model quantized with
onnxruntime's own tools. quantviz only fixes the numbers:

- every activation scale / zero point comes from the table, through onnxruntime's
  ``TensorQuantOverrides`` (a scale + zero_point override is used as given, never recomputed);
- the ranges onnxruntime would otherwise calibrate are handed over as a calibration cache built from
  the table (``calibration_cache_path``), so no calibration data is run at all;
- weight scales come from the table's "weights" entries when it has them (per-channel overrides),
  otherwise onnxruntime measures abs-max per output channel (per_channel=True) or per tensor.

Before quantizing, the float model is prepared as an engine would see it (ALGORITHMS.md, "Fusions"):
BatchNormalization after Conv/Gemm is folded (quantviz.fold: the Conv takes the BN output's name, so
the table's scale for that tensor lands on the folded Conv's output; the pre-BN tensor disappears),
Constant nodes become initializers (so weights stored as Constants quantize as weights), and unnamed
nodes get names.

Choices, each so that the scale on every quantized tensor is the table's:
- Ops for which onnxruntime's QDQ quantizer copies the input's scale to the output (MaxPool, Flatten,
  Reshape, Transpose, Resize, Pad, Split, Gather, ...: ``quantize_output_same_as_input``) are not
  quantized; they run in float on dequantized values and their consumer quantizes their output with
  the table's scale for it. (MaxPool and the reshaping ops commute with quantization, so this changes
  no value when both scales agree.)
- Relu / Clip are kept (``QDQKeepRemovableActivations``): onnxruntime would otherwise drop them for
  asymmetric tables and give their output's scale to the producer.
- onnxruntime's automatic enlargement of weight scales for int32 bias overflow is off
  (``QDQDisableWeightAdjustForInt32Bias``): the table's weight scales are kept as they are.
- A node is kept in float when the caller says so (float_nodes), when its output tensor is marked
  float in the table (TensorEntry.float_kept, like a '#' line in an ncnn table), or when one of its
  float activation inputs or outputs has no usable table entry (missing, NaN/Inf, or all zero: threshold
  0, quantviz.table). A float node's
  output is still quantized with its table scale where an int8 consumer reads it, as an engine must.

reduce_range (off by default): 7-bit weights (-63..63; each weight scale multiplied by 127/63, as
onnxruntime's own reduce_range does). Run by onnxruntime on an x86 CPU with AVX2 but no VNNI, the
fused int8 kernels multiply u8 activations by s8 weights with VPMADDUBSW, whose int16 pair sums
saturate with full 8-bit weights: the model then computes something else than its Q/DQ nodes say
(digits_cnn: accuracy 0.81 instead of 0.996 on such a machine, 0.996 with 7-bit weights or with the
Q/DQ nodes run unfused). quantviz's own analysis runs Q/DQ unfused (quantviz.sensitivity), so its
figures are the scales' error on every CPU; int8_kernels_saturate() says whether this machine is one
of those.

Saturation is ONNX QuantizeLinear's: int8 activations use -128..127 (the table's symmetric scales are
T / 127, so only values below -T by more than half a step reach -128); weights are symmetric -127..127.
quantize_static works with files: it gets a private temporary folder, never the working directory,
and the result is read back into memory.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quantviz.errors import QuantvizError
from quantviz.fold import FoldReport, fold_batchnorm, node_key
from quantviz.model import LoadedModel
from quantviz.table import CalibrationTable, TensorEntry, is_finite_entry

log = logging.getLogger(__name__)

# onnxruntime's QDQ quantizer gives these ops' outputs the input's scale (quantize_output_same_as_input):
# they are left unquantized so every Q/DQ carries the table's scale for its own tensor.
SCALE_SHARING_OPS = frozenset(
    {
        "Reshape",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Flatten",
        "Resize",
        "MaxPool",
        "AveragePool",
        "Slice",
        "Pad",
        "Split",
        "Gather",
        "GatherElements",
        "TopK",
    }
)
FLOAT_ELEM_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE})
INT8_RANGE = (-128, 127)
UINT8_RANGE = (0, 255)
# Metadata onnxruntime's quantizer looks for to know the model was prepared (it warns otherwise).
ORT_PREPROCESS_KEY = "onnx.quant.pre_process"
ORT_PREPROCESS_VALUE = "onnxruntime.quant"


@dataclass(frozen=True)
class PreparedModel:
    """The float model as an engine runs it: BN folded, Constants as initializers, every node named."""

    proto: onnx.ModelProto
    fold: FoldReport
    float_types: dict[str, int]  # float tensor (activation or graph input/output) -> ONNX elem type
    per_tensor_only: bool = False  # opset < 13 the converter could not raise: no per-channel Q/DQ
    opset_note: str = ""  # what was done about an opset below 13 (quantviz.preflight.analysis_model)

    @property
    def initializer_names(self) -> frozenset[str]:
        return frozenset(i.name for i in self.proto.graph.initializer)


@dataclass(frozen=True)
class QdqBuild:
    """A built QDQ model and what was decided on the way.

    proto: the QDQ model (runs in onnxruntime). prepared: the float model it was made from.
    kept_float: node name -> why that node stays in float. scales: activation tensor -> (scale, zero
    point) placed on it. symmetric: int8 activations (True) or uint8 with zero points (False).
    """

    proto: onnx.ModelProto
    prepared: PreparedModel
    kept_float: dict[str, str]
    scales: dict[str, tuple[float, int]]
    symmetric: bool
    per_channel: bool
    weight_overrides: tuple[str, ...] = field(default_factory=tuple)


def quantized_op_types(profile_key: str | None = None) -> list[str]:
    """Op types handed to onnxruntime's quantizer: those of the engine profile (quantviz.profiles; for
    onnxruntime its QDQ and QLinear registries) that onnxruntime can quantize, minus SCALE_SHARING_OPS."""
    from quantviz.profiles import ort_op_types, profile

    return sorted((set(profile(profile_key).op_types()) & set(ort_op_types())) - SCALE_SHARING_OPS)


def check_table_names(model: LoadedModel, table: CalibrationTable) -> None:
    """Raise QuantvizError when the table names tensors the model does not have (wrong model?)."""
    known = set(model.tensor_names)
    missing = [n for n in table.tensors if n not in known]
    if missing:
        shown = ", ".join(f"'{n}'" for n in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise QuantvizError(
            f"The table names {len(missing)} tensor(s) that model '{model.name}' does not have ({shown}): "
            "it was made for another model; calibrate this model or give the model the table was made for."
        )


def table_is_symmetric(table: CalibrationTable) -> bool:
    """Symmetric int8 unless the settings say asymmetric or an entry has a non-zero zero point."""
    if table.settings.get("symmetric") is False:
        return False
    return all(e.zero_point == 0 for e in table.tensors.values())


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    """Constant nodes (value attribute) become initializers of the same name."""
    keep: list[onnx.NodeProto] = []
    outputs = {o.name for o in graph.output}
    for node in graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] not in outputs:
            value = next((a for a in node.attribute if a.name == "value"), None)
            if value is not None:
                tensor = onnx.TensorProto()
                tensor.CopyFrom(value.t)
                tensor.name = node.output[0]
                graph.initializer.append(tensor)
                continue
        keep.append(node)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)


def _name_nodes(graph: onnx.GraphProto) -> None:
    """Give unnamed nodes fold.node_key's stable label; make duplicate names unique."""
    seen: set[str] = set()
    for node in graph.node:
        name = node_key(node)
        base, i = name, 1
        while name in seen:
            name, i = f"{base}_{i}", i + 1
        seen.add(name)
        node.name = name


def _float_types(proto: onnx.ModelProto) -> dict[str, int]:
    g = proto.graph
    inits = {i.name for i in g.initializer}
    out: dict[str, int] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.name in inits or vi.type.WhichOneof("value") != "tensor_type":
            continue
        if vi.type.tensor_type.elem_type in FLOAT_ELEM_TYPES:
            out[vi.name] = vi.type.tensor_type.elem_type
    return out


def prepare_float_model(model: LoadedModel) -> PreparedModel:
    """Fold BatchNormalization, turn Constants into initializers, name nodes, infer shapes (a copy).

    A model below opset 13 is first converted with onnx's version converter (quantviz.preflight.analysis_model).
    """
    from quantviz.preflight import analysis_model

    at = analysis_model(model.proto)
    if at.note:
        log.warning("%s", at.note)
    folded, report = fold_batchnorm(at.proto)
    _constants_to_initializers(folded.graph)
    _name_nodes(folded.graph)
    try:
        folded = onnx.shape_inference.infer_shapes(folded, strict_mode=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises many types; shapes are optional here
        log.warning("Shape inference of the folded model failed (%s); using the shapes it had.", exc)
    return PreparedModel(folded, report, _float_types(folded), at.per_tensor_only, at.note)


def _entry_ok(entry: TensorEntry | None) -> bool:
    """A usable activation scale: finite, positive, and not an all-zero tensor (kept in float: quantviz.table)."""
    return entry is not None and is_finite_entry(entry) and entry.scale > 0 and not entry.all_zero


def _kept_float(
    prepared: PreparedModel,
    table: CalibrationTable,
    op_types: set[str],
    float_nodes: Iterable[str],
) -> dict[str, str]:
    """Nodes of quantizable op types that stay in float, with the reason."""

    def profile_float(t: str) -> bool:
        e = table.tensors.get(t)
        return e is not None and bool(e.extra.get("profile_float"))

    def usable(t: str) -> bool:
        return _entry_ok(table.tensors.get(t)) and not profile_float(t)

    kept: dict[str, str] = {n: "kept in float on request" for n in float_nodes}
    names = {n.name for n in prepared.proto.graph.node}
    for n, why in dict(table.settings.get("profile_float_nodes") or {}).items():
        if n in names:
            kept.setdefault(n, f"engine profile: {why}")
    for node in prepared.proto.graph.node:
        if node.op_type not in op_types or node.name in kept:
            continue
        outs = [o for o in node.output if o in prepared.float_types]
        ins = [i for i in node.input if i in prepared.float_types]
        # a tensor the profile keeps in float is simply not quantized where it is written (an engine
        # of that profile writes it in float); one the user marks float keeps its producer in float
        flagged = [
            o for o in outs if o in table.tensors and table.tensors[o].float_kept and not table.tensors[o].extra.get("profile_float")
        ]
        if flagged:
            kept[node.name] = f"its output '{flagged[0]}' is marked float in the table"
            continue
        # an output the profile keeps float is left unquantized (its node still quantizes its inputs)
        lacking = [t for t in ins if not usable(t)] + [t for t in outs if not usable(t) and not profile_float(t)]
        if lacking:
            zero = table.tensors.get(lacking[0])
            kept[node.name] = (
                f"tensor '{lacking[0]}' is all zero in the calibration data (kept in float)"
                if zero is not None and zero.all_zero
                else f"tensor '{lacking[0]}' has no usable scale in the table"
            )
    return kept


def _zero_point(entry: TensorEntry, symmetric: bool, name: str) -> np.ndarray:
    lo, hi = INT8_RANGE if symmetric else UINT8_RANGE
    if not lo <= entry.zero_point <= hi:
        kind = "int8" if symmetric else "uint8"
        raise QuantvizError(
            f"Tensor '{name}' has zero point {entry.zero_point}, outside the {kind} range {lo}..{hi}; "
            "recalibrate it or fix the table."
        )
    return np.asarray(entry.zero_point, dtype=np.int8 if symmetric else np.uint8)


REDUCED_WEIGHT_MAX = 63  # 7-bit weights (onnxruntime's reduce_range)


def int8_kernels_saturate(cpuinfo: str | None = None, machine: str | None = None) -> bool:
    """True on an x86 CPU with AVX2 and no VNNI: onnxruntime's fused u8s8 kernels can saturate there
    (module doc, reduce_range). Reads /proc/cpuinfo and the machine type unless given; False where
    they cannot be read."""
    import platform

    if (machine or platform.machine()).lower() not in ("x86_64", "amd64"):
        return False
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            break
    return "avx2" in flags and not ({"avx512_vnni", "avx_vnni"} & flags)


def _weight_override(
    init: onnx.TensorProto, spec: dict[str, Any], reduce_range: bool = False
) -> list[dict[str, Any]] | None:
    """onnxruntime overrides for one weight from a table "weights" entry {"axis", "scales"} (None: unusable)."""
    scales = spec.get("scales")
    if not isinstance(scales, list | tuple) or not scales:
        return None
    values = [float(s) for s in scales]
    if reduce_range:
        values = [s * INT8_RANGE[1] / REDUCED_WEIGHT_MAX for s in values]
    if not all(math.isfinite(s) and s > 0 for s in values):
        return None
    axis = spec.get("axis")
    dims = list(init.dims)
    if axis is None:
        return [{"scale": np.float32(values[0]), "zero_point": np.int8(0)}] if len(values) == 1 else None
    axis = int(axis)
    if not -len(dims) <= axis < len(dims) or dims[axis] != len(values):
        return None
    out: list[dict[str, Any]] = [{"scale": np.float32(s), "zero_point": np.int8(0)} for s in values]
    out[0]["axis"] = axis
    return out


def build(
    model: LoadedModel,
    table: CalibrationTable,
    *,
    per_channel: bool = True,
    only_nodes: set[str] | None = None,
    float_nodes: Iterable[str] = frozenset(),
    prepared: PreparedModel | None = None,
    reduce_range: bool = False,
) -> QdqBuild:
    """Build the QDQ model and return it with the decisions made (see build_qdq_model)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    check_table_names(model, table)
    prepared = prepared or prepare_float_model(model)
    per_channel = per_channel and not prepared.per_tensor_only
    node_names = {n.name for n in prepared.proto.graph.node}
    unknown = sorted(set(float_nodes) - node_names) + sorted(set(only_nodes or ()) - node_names)
    if unknown:
        raise QuantvizError(f"The model has no node named '{unknown[0]}' (after BatchNormalization folding).")
    symmetric = table_is_symmetric(table)
    from quantviz.profiles import profile as engine_profile

    prof = engine_profile(table.settings.get("profile"))
    op_types = quantized_op_types(prof.key)
    kept = _kept_float(prepared, table, set(op_types), float_nodes)

    ranges: dict[str, Any] = {}
    overrides: dict[str, list[dict[str, Any]]] = {}
    scales: dict[str, tuple[float, int]] = {}
    qmin, qmax = INT8_RANGE if symmetric else UINT8_RANGE
    for name in prepared.float_types:
        entry = table.tensors.get(name)
        if entry is None or not _entry_ok(entry) or entry.extra.get("profile_float"):
            continue
        zp = _zero_point(entry, symmetric, name)
        scale = np.asarray(entry.scale, dtype=np.float32)
        # the range the scale and zero point represent (onnxruntime reads it where no override applies)
        lo, hi = float(scale) * (qmin - int(zp)), float(scale) * (qmax - int(zp))
        ranges[name] = TensorData(lowest=np.float32(lo), highest=np.float32(hi))
        overrides[name] = [{"scale": scale, "zero_point": zp}]
        scales[name] = (float(scale), int(zp))
    inits = {i.name: i for i in prepared.proto.graph.initializer}
    weight_overrides: list[str] = []
    for wname, spec in table.weights.items():
        init = inits.get(wname)
        if init is None or init.data_type not in FLOAT_ELEM_TYPES or not isinstance(spec, dict):
            continue
        if prepared.per_tensor_only and spec.get("axis") is not None:
            continue  # per-channel scales need opset 13; onnxruntime measures this weight per tensor
        ov = _weight_override(init, spec, reduce_range)
        if ov is None:
            log.warning(
                "The table's scales for weight %s do not fit its shape %s; onnxruntime measures them.", wname, list(init.dims)
            )
            continue
        overrides[wname] = ov
        weight_overrides.append(wname)

    src = onnx.ModelProto()
    src.CopyFrom(prepared.proto)
    helper.set_model_props(src, {**{p.key: p.value for p in src.metadata_props}, ORT_PREPROCESS_KEY: ORT_PREPROCESS_VALUE})
    extra = {
        "TensorQuantOverrides": overrides,
        "QDQKeepRemovableActivations": True,
        "QDQDisableWeightAdjustForInt32Bias": True,
        "WeightSymmetric": True,
    }
    if prof.rule == "consumer":  # TensorRT, ncnn: a tensor is quantized where an int8 op reads it
        extra["OpTypesToExcludeOutputQuantization"] = list(op_types)
    quantize_nodes = sorted(only_nodes) if only_nodes is not None else None
    if only_nodes is not None and not only_nodes:
        quantize_nodes = ["\0no node"]  # an empty list means "every node" to onnxruntime
    with tempfile.TemporaryDirectory(prefix="quantviz-qdq-") as tmp:
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, ranges), cache)
        out_path = Path(tmp) / "model_qdq.onnx"
        try:
            quantize_static(
                src,
                out_path,
                calibration_data_reader=None,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types,
                per_channel=per_channel,
                reduce_range=reduce_range,
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_quantize=quantize_nodes,
                nodes_to_exclude=sorted(kept),
                calibrate_method=CalibrationMethod.MinMax,
                extra_options=extra,
                calibration_cache_path=cache,
            )
        except (ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise QuantvizError(f"onnxruntime could not quantize the model with this table: {exc}") from exc
        qdq = onnx.load(str(out_path), load_external_data=True)
    props = {p.key: p.value for p in qdq.metadata_props if p.key != ORT_PREPROCESS_KEY}
    del qdq.metadata_props[:]
    if props:
        helper.set_model_props(qdq, props)
    return QdqBuild(qdq, prepared, kept, scales, symmetric, per_channel, tuple(weight_overrides))


def build_qdq_model(
    model: LoadedModel,
    table: CalibrationTable,
    *,
    per_channel: bool = True,
    only_nodes: set[str] | None = None,
    float_nodes: Iterable[str] = frozenset(),
    reduce_range: bool = False,
) -> onnx.ModelProto:
    """The model quantized with the table's scales as a QDQ ONNX model, in memory.

    per_channel: weight scales per output channel (default) or per tensor, for weights the table does
    not list. only_nodes: quantize these nodes only (None: every quantizable node). float_nodes: keep
    these in float (the table's float-marked tensors and tensors without a scale keep their producer
    in float anyway). Node names are those of the model after BatchNormalization folding (a folded BN
    disappears, its Conv keeps its name). Raises QuantvizError when the table names tensors the model
    lacks. reduce_range: 7-bit weights, for onnxruntime on x86 CPUs without VNNI (module doc).
    """
    return build(
        model, table, per_channel=per_channel, only_nodes=only_nodes, float_nodes=float_nodes, reduce_range=reduce_range
    ).proto


def activation_quantizers(proto: onnx.ModelProto) -> dict[str, tuple[float, int]]:
    """For each QuantizeLinear on an activation: the float tensor it quantizes -> (scale, zero point).

    A graph output is renamed by onnxruntime ("<name>_QuantizeLinear_Input" feeds the Q, the DQ
    produces "<name>"): such names are reported under the output's own name.
    """
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    out: dict[str, tuple[float, int]] = {}
    for node in proto.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits:
            continue
        scale = inits.get(node.input[1])
        zp = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.int8)
        if scale is None or scale.size != 1:
            continue
        name = node.input[0].removesuffix("_QuantizeLinear_Input")
        out[name] = (float(scale.reshape(())), int(np.asarray(zp).reshape(())))
    return out
