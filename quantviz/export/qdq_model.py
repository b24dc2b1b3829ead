"""The quantized ONNX model (QuantizeLinear / DequantizeLinear pairs) as a table format.

Writing delegates to quantviz.qdq.build_qdq_model (one QDQ builder serves this export and the error
analysis). Reading recovers the table from the scales a QDQ model carries:
- activations: every QuantizeLinear whose input is not a constant; int8 with zero point 0 reads as
  symmetric T = s * 127 (quantviz's [-127, 127] convention, so a model written from a table gives the
  table's thresholds back), any other zero point as [(qmin - zp) s, (qmax - zp) s];
- weights: a DequantizeLinear of an integer constant (onnxruntime stores weights pre-quantized, named
  "<weight>_quantized") or a QuantizeLinear of a float constant, keyed by the float weight's name, with
  its per-channel scales, axis and the node that reads it.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from quantviz.errors import QuantvizError
from quantviz.export.common import imported_table, read_bytes, symmetric_entry, threshold_from_scale
from quantviz.export.format import Sniff, TableFormat
from quantviz.fold import constant_values
from quantviz.graph import consumers as graph_consumers
from quantviz.model import LoadedModel
from quantviz.safeio import write_bytes
from quantviz.table import CalibrationTable, TensorEntry

METHOD = "qdq"
QUANTIZED_SUFFIX = "_quantized"  # onnxruntime's name for a pre-quantized weight
INT_RANGES = {
    np.dtype(np.int8): (-128, 127),
    np.dtype(np.uint8): (0, 255),
    np.dtype(np.int16): (-32768, 32767),
    np.dtype(np.uint16): (0, 65535),
}


def build_available() -> bool:
    """True when quantviz.qdq.build_qdq_model exists in this installation."""
    return importlib.util.find_spec("quantviz.qdq") is not None and hasattr(
        importlib.import_module("quantviz.qdq"), "build_qdq_model"
    )


def qdq_model_bytes(table: CalibrationTable, model: LoadedModel | None, reduce_range: bool = False) -> bytes:
    if model is None:
        raise QuantvizError("Exporting a QDQ model needs the float model: give it with --model.")
    if not build_available():
        raise QuantvizError(
            "QDQ model export is not available yet in this version of quantviz (quantviz.qdq.build_qdq_model is missing)."
        )
    from quantviz.mixed import mixed_qdq_model, table_fallbacks

    if table_fallbacks(table):  # a mixed-precision table: its fallback layers leave int8 as the search measured them
        proto = mixed_qdq_model(model, table, reduce_range=reduce_range)
        return bytes(proto.SerializeToString())
    qdq = importlib.import_module("quantviz.qdq")
    proto = qdq.build_qdq_model(model, table, reduce_range=reduce_range)
    return bytes(proto.SerializeToString())


def write_qdq_model(table: CalibrationTable, path: str | Path, model: LoadedModel | None) -> None:
    write_bytes(path, qdq_model_bytes(table, model))


def _const(values: dict[str, np.ndarray], name: str, node: onnx.NodeProto, what: str) -> np.ndarray:
    if name not in values:
        raise QuantvizError(
            f"Node '{node.name or node.output[0]}' ({node.op_type}): its {what} '{name}' is not a constant, so no table can be read from it."
        )
    return np.asarray(values[name])


def _zero_point(values: dict[str, np.ndarray], node: onnx.NodeProto) -> np.ndarray:
    if len(node.input) > 2 and node.input[2]:
        return _const(values, node.input[2], node, "zero point")
    return np.zeros(1, dtype=np.uint8)  # the ONNX default zero point is uint8 0


def _axis(node: onnx.NodeProto) -> int:
    return next((int(a.i) for a in node.attribute if a.name == "axis"), 1)


def _activation(scale: np.ndarray, zp: np.ndarray, name: str) -> TensorEntry:
    if scale.size != 1:
        raise QuantvizError(
            f"The QuantizeLinear of activation '{name}' has {scale.size} scales; quantviz reads one scale per activation."
        )
    s = float(scale.reshape(-1)[0])
    if not (math.isfinite(s) and s > 0):
        raise QuantvizError(f"The QuantizeLinear of activation '{name}' has the scale {s!r}, not a positive finite number.")
    z = int(zp.reshape(-1)[0])
    qmin, qmax = INT_RANGES.get(zp.dtype, (-128, 127))
    if z == 0 and qmin < 0:
        return symmetric_entry(METHOD, threshold_from_scale(s), scale=s)
    lo, hi = (qmin - z) * s, (qmax - z) * s
    return TensorEntry(METHOD, lo, hi, max(abs(lo), abs(hi)), s, z)


def _weight(scale: np.ndarray, zp: np.ndarray, node: onnx.NodeProto, reader: str) -> dict[str, Any]:
    per_channel = scale.size > 1
    return {
        "axis": _axis(node) if per_channel else None,
        "per_channel": per_channel,
        "node": reader,
        "scales": [float(v) for v in scale.reshape(-1)],
        "zero_points": [int(v) for v in np.broadcast_to(zp.reshape(-1), scale.reshape(-1).shape)],
    }


def _activation_name(graph: onnx.GraphProto, q: onnx.NodeProto, graph_outputs: set[str]) -> str:
    """The float tensor a QuantizeLinear quantizes. onnxruntime renames a quantized graph output
    ("out" becomes "out_QuantizeLinear_Input" and the DequantizeLinear after it yields "out"), so
    when the pair ends in a graph output that output's name is the tensor's."""
    for n in graph.node:
        if n.op_type == "DequantizeLinear" and n.input and n.input[0] == q.output[0] and n.output[0] in graph_outputs:
            return str(n.output[0])
    return str(q.input[0])


def loads_qdq(data: bytes, name: str = "") -> CalibrationTable:
    try:
        proto = onnx.load_from_string(data)
    except (DecodeError, RuntimeError, ValueError):
        raise QuantvizError("The file is not an ONNX model (it cannot be parsed as one).") from None
    graph = proto.graph
    values = constant_values(graph)
    consumers = {t: [n.name for n in users] for t, users in graph_consumers(graph.node).items()}
    graph_outputs = {o.name for o in graph.output}
    tensors: dict[str, TensorEntry] = {}
    weights: dict[str, dict[str, Any]] = {}
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 2:
            continue
        x = node.input[0]
        scale = _const(values, node.input[1], node, "scale")
        zp = _zero_point(values, node)
        reader = next(iter(consumers.get(node.output[0], [])), "")
        if node.op_type == "QuantizeLinear":
            if x in values:
                # a float weight quantized in the graph: the reader is behind the DequantizeLinear
                dq = next(
                    (n for n in graph.node if n.op_type == "DequantizeLinear" and n.input and n.input[0] == node.output[0]), None
                )
                target = next(iter(consumers.get(dq.output[0], [])), "") if dq is not None else reader
                weights[x] = _weight(scale, zp, node, target)
            else:
                name = _activation_name(graph, node, graph_outputs)
                if name not in tensors:
                    tensors[name] = _activation(scale, zp, name)
        elif x in values and np.asarray(values[x]).dtype in INT_RANGES:  # int32 biases are derived, not calibrated
            weights[x.removesuffix(QUANTIZED_SUFFIX)] = _weight(scale, zp, node, reader)
    if not tensors and not weights:
        raise QuantvizError("The model has no QuantizeLinear/DequantizeLinear nodes with constant scales: it is not a QDQ model.")
    return imported_table(tensors, "qdq", weights=weights, model_name=name)


def read_qdq_model(path: str | Path) -> CalibrationTable:
    return loads_qdq(read_bytes(path), Path(path).name)


def _qdq_parse(s: Sniff) -> bool:
    if not s.binary:
        return False
    try:
        loads_qdq(s.data)
    except QuantvizError:
        return False
    return True


FORMATS = (
    TableFormat(
        "qdq",
        lambda table, o: qdq_model_bytes(table, o.model, o.reduce_range),
        lambda data, _o: loads_qdq(data),
        "model_qdq.onnx",
        "quantized ONNX model with QuantizeLinear/DequantizeLinear carrying the table's scales",
        binary=True,
        mime="application/octet-stream",
        detect=((1, lambda s: s.binary and s.filename.endswith(".onnx")), (3, _qdq_parse)),
        needs_model=lambda _table: True,
    ),
)
