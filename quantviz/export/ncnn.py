"""ncnn int8 calibration table (what ncnn2table writes and ncnn2int8 reads).

    conv1_param_0 156.639840 148.301361 201.772598
    conv1 42.717117

Weight lines first (``<layer>_param_0`` then one value per output channel), then activation lines;
every value printed with C's %f followed by a space, as ncnn2table's save_table does. ncnn's scale is
the INVERSE convention: scale_ncnn = 127 / T (= 1 / s), for weights 127 / absmax of the channel.

Activation lines are keyed by LAYER name, not tensor name: the value is the scale of that layer's
input blob. ncnn2table writes them for the layers it quantizes (Convolution, ConvolutionDepthWise,
InnerProduct), i.e. the ONNX Conv, Gemm and MatMul nodes (onnx2ncnn names a layer after its node, or
after its first output when the node has no name). A tensor that feeds several such layers gets one
line per layer, all with the same value; when reading, lines of layers fed by the same tensor that
disagree keep the first and say so in the entry's note.

A line starting with '#' is commented out: ncnn2int8 finds no scale for that layer and leaves it in
float. Tensors kept in float (TensorEntry.float_kept) are written that way and read back as float.
An all-zero tensor (threshold 0, always kept in float: quantviz.table) is written "#<layer> 0" and
read back as threshold 0.

Reading with a model maps each layer back to its input tensor; without one, the entries are keyed by
layer name and the table remembers it (settings "ncnn_keys": "layer"), so it can be written back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from quantviz.errors import QuantvizError
from quantviz.export.common import (
    check_name,
    decode_text,
    imported_table,
    read_bytes,
    split_lines,
    symmetric_entry,
)
from quantviz.export.format import TableFormat, ncnn_lines
from quantviz.fold import node_key
from quantviz.model import LoadedModel
from quantviz.safeio import write_bytes
from quantviz.table import CalibrationTable, TensorEntry
from quantviz.weights import output_axis

FORMAT = "ncnn int8 table"
METHOD = "ncnn"
NCNN_INT8_OPS = ("Conv", "Gemm", "MatMul")  # -> Convolution / ConvolutionDepthWise, InnerProduct
PARAM_MARK = "_param_"
COMMENT = "#"
INT8_MAX = 127.0
ZERO_ABSMAX_SCALE = 1.0  # ncnn2table writes 1 for an all-zero weight channel (an all-zero activation: "#layer 0")
KEYS_SETTING = "ncnn_keys"


def layer_name(node: Any) -> str:
    """The ncnn layer name onnx2ncnn gives a node: its name, or its first output when unnamed."""
    return node.name or (node.output[0] if node.output else "")


def ncnn_layers(model: LoadedModel) -> dict[str, str]:
    """Layer name -> its input blob (tensor), for the nodes ncnn quantizes (Conv, Gemm, MatMul).

    The input blob is the node's first input that is not a weight (initializer or constant)."""
    weights = set(model.initializers) | {n.output[0] for n in model.proto.graph.node if n.op_type == "Constant" and n.output}
    out: dict[str, str] = {}
    for node in model.proto.graph.node:
        if node.op_type not in NCNN_INT8_OPS:
            continue
        data = [i for i in node.input if i and i not in weights]
        if data:
            out[layer_name(node)] = data[0]
    return out


def weight_layers(model: LoadedModel) -> dict[str, str]:
    """Weight initializer -> the ncnn layer that owns it (Conv / Gemm / MatMul with a constant input)."""
    out: dict[str, str] = {}
    for node in model.proto.graph.node:
        if node.op_type in NCNN_INT8_OPS:
            for i in node.input[1:2] if node.op_type != "MatMul" else node.input:
                if i in model.initializers:
                    out.setdefault(i, layer_name(node))
    return out


def _fmt(value: float) -> str:
    return "%f " % value  # noqa: UP031 -- C's %f, byte for byte what ncnn2table prints


def _check_layer(name: str) -> str:
    check_name(name, FORMAT)
    if not name or any(c.isspace() for c in name):
        raise QuantvizError(f"The ncnn layer name {name!r} is empty or holds whitespace, which the ncnn table cannot hold.")
    return name


def _ncnn_value(scale: float, what: str) -> float:
    """scale_ncnn = 1 / s = 127 / T."""
    if not math.isfinite(scale) or scale < 0:
        raise QuantvizError(f"{what} has the scale {scale!r}: recalibrate it or keep it in float before exporting to ncnn.")
    return ZERO_ABSMAX_SCALE if scale == 0 else 1.0 / scale


def _weight_layer(wname: str, w: Mapping[str, Any], model: LoadedModel | None) -> str:
    """The ncnn layer of a weight: its "node" (renamed as onnx2ncnn names unnamed nodes), else the
    node of the model that reads the initializer."""
    node = w.get("node")
    if model is not None:
        by_key = {node_key(n): layer_name(n) for n in model.proto.graph.node}
        if node in by_key:
            return by_key[node]
        owner = weight_layers(model).get(wname)
        if owner:
            return owner
    if not node:
        raise QuantvizError(f"The per-channel weight scales of '{wname}' name no layer: give the model (--model).")
    return str(node)


def _output_channels(w: Mapping[str, Any], model: LoadedModel | None) -> int | None:
    """Output channels of a weight from its "shape" and op (see quantviz.weights.output_axis)."""
    shape = w.get("shape")
    if not isinstance(shape, list | tuple) or not shape:
        return None
    op = w.get("op_type")
    if op == "Gemm":
        key = w.get("node")
        node = {node_key(n): n for n in model.proto.graph.node}.get(key) if model is not None and isinstance(key, str) else None
        return int(shape[output_axis("Gemm", node, len(shape))]) if node is not None else None
    if op in ("Conv", "MatMul"):
        return int(shape[0 if op == "Conv" else -1])
    return None


def weight_values(w: Mapping[str, Any], model: LoadedModel | None, wname: str) -> list[float]:
    """ncnn's weight scales, one per output channel: 127 / absmax (1 for an all-zero channel, as
    ncnn2table), from "absmax" when the entry has it, else 1 / s. A per-tensor scale is repeated over
    the output channels, since ncnn2int8 reads one scale per channel."""
    absmax = w.get("absmax")
    scales = w.get("scales")
    if isinstance(absmax, list | tuple) and absmax:
        values = [INT8_MAX / float(a) if float(a) > 0 else ZERO_ABSMAX_SCALE for a in absmax]
        if not all(math.isfinite(v) for v in values):
            raise QuantvizError(f"Weight '{wname}' has a non-finite absmax: recompute its scales before exporting to ncnn.")
    elif isinstance(scales, list | tuple) and scales:
        values = [_ncnn_value(float(s), f"Weight '{wname}'") for s in scales]
    else:
        return []
    if len(values) == 1 and w.get("per_channel") is False:
        channels = _output_channels(w, model)
        if channels:
            values = values * channels
    return values


def _activation_value(entry: TensorEntry, name: str) -> float:
    if not math.isfinite(entry.threshold) or entry.threshold < 0:
        raise QuantvizError(
            f"Tensor '{name}' has the threshold {entry.threshold!r}: recalibrate it or keep it in float before exporting to ncnn."
        )
    if entry.all_zero:
        return 0.0  # written "#layer 0" (commented: kept in float), read back as threshold 0 (quantviz.table)
    return INT8_MAX / entry.threshold


def _layers_for(table: CalibrationTable, layers: Mapping[str, str] | LoadedModel | None) -> dict[str, str]:
    if table.settings.get(KEYS_SETTING) == "layer":  # read from ncnn without a model: keyed by layer already
        return {name: name for name in table.tensors}
    if isinstance(layers, LoadedModel):
        return ncnn_layers(layers)
    if layers is not None:
        return dict(layers)
    raise QuantvizError(
        "The ncnn table is keyed by layer name: give the model (--model) so quantviz can find the layer that reads each tensor."
    )


def dumps_ncnn(table: CalibrationTable, layers: Mapping[str, str] | LoadedModel | None = None) -> str:
    """The ncnn table text. layers: a LoadedModel, or a mapping layer name -> input tensor; None only
    for a table read from ncnn without a model (keyed by layer already)."""
    layer_map = _layers_for(table, layers)
    model = layers if isinstance(layers, LoadedModel) else None
    from quantviz.mixed import mixed_note, table_fallbacks

    # a tensor kept in float keeps the layers reading it in float; a mixed-precision fallback (quantviz.mixed)
    # keeps its own layer in float instead (ncnn has no int16: an int16 fallback is float here)
    mixed = set(table_fallbacks(table))

    def kept(tensor: str) -> bool:
        e = table.tensors.get(tensor)
        return e is not None and e.float_kept and "mixed" not in e.extra

    float_layers = {layer for layer, tensor in layer_map.items() if kept(tensor)} | (mixed & set(layer_map))
    lines: list[str] = [f"{COMMENT} {mixed_note(table)}"] if mixed else []
    for wname, w in table.weights.items():
        values = weight_values(w, model, wname)
        if not values:
            continue
        layer = _weight_layer(wname, w, model)
        prefix = COMMENT if layer in float_layers else ""
        lines.append(f"{prefix}{_check_layer(layer)}{PARAM_MARK}{int(w.get('param', 0))} {''.join(_fmt(v) for v in values)}")
    for layer, tensor in layer_map.items():
        entry = table.tensors.get(tensor)
        if entry is None:
            continue
        commented = layer in float_layers or (entry.float_kept and "mixed" not in entry.extra)
        prefix = COMMENT if commented else ""
        if commented and not math.isfinite(entry.threshold):
            continue  # no value to comment out; a layer absent from the table stays float in ncnn anyway
        lines.append(f"{prefix}{_check_layer(layer)} {_fmt(_activation_value(entry, tensor))}")
    return "\n".join(lines) + ("\n" if lines else "")


def write_ncnn_table(table: CalibrationTable, path: str | Path, layers: Mapping[str, str] | LoadedModel | None = None) -> None:
    write_bytes(path, dumps_ncnn(table, layers).encode("utf-8"))


def _values(tokens: list[str], number: int, allow_zero: bool = False) -> list[float]:
    """The numbers of a line; allow_zero for a commented-out line, where 0 is an all-zero tensor kept in float."""
    out = []
    for tok in tokens:
        try:
            v = float(tok)
        except ValueError:
            raise QuantvizError(f"Line {number} of the ncnn table: {tok[:40]!r} is not a number.") from None
        if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
            raise QuantvizError(f"Line {number} of the ncnn table: the scale {tok[:40]!r} is not a finite positive number.")
        out.append(v)
    return out


def loads_ncnn(data: str | bytes, model: LoadedModel | None = None) -> CalibrationTable:
    """Parse an ncnn table; with a model, activation entries are keyed by tensor, weights by initializer."""
    layer_to_tensor = ncnn_layers(model) if model is not None else {}
    layer_to_weight = {layer: w for w, layer in weight_layers(model).items()} if model is not None else {}
    tensors: dict[str, TensorEntry] = {}
    weights: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for number, raw in enumerate(split_lines(decode_text(data, FORMAT)), start=1):
        line = raw.strip()
        if not line:
            continue
        commented = line.startswith(COMMENT)
        tokens = line.lstrip(COMMENT).split()
        if not tokens:
            continue
        key, rest = tokens[0], tokens[1:]
        if commented:
            # '#<layer> <values>' keeps the layer in float; any other '#' line is a plain comment
            try:
                values = _values(rest, number, allow_zero=True)
            except QuantvizError:
                continue
            if not values or (model is not None and PARAM_MARK not in key and key not in layer_to_tensor):
                continue
        else:
            if not rest:
                raise QuantvizError(f"Line {number} of the ncnn table has the name '{key}' but no scale values.")
            values = _values(rest, number)
        if key in seen:
            raise QuantvizError(f"Line {number} of the ncnn table repeats '{key}'.")
        seen.add(key)
        layer, mark, param = key.rpartition(PARAM_MARK)
        if mark and param.isdigit():
            wname = layer_to_weight.get(layer, key) if param == "0" else key
            weights[wname] = {"axis": 0, "scales": [1.0 / v for v in values], "node": layer, "param": int(param)}
            continue
        if len(values) > 1:
            raise QuantvizError(
                f"Line {number} of the ncnn table gives {len(values)} values for the layer '{key}'; an activation has one."
            )
        if model is not None and key not in layer_to_tensor:
            raise QuantvizError(
                f"Line {number} of the ncnn table names the layer '{key}', which is not a Conv, Gemm or MatMul node of "
                f"{model.name}: import it without the model to keep layer names."
            )
        tensor = layer_to_tensor[key] if model is not None else key
        threshold = INT8_MAX / values[0] if values[0] else 0.0  # "#layer 0": an all-zero tensor (quantviz.table)
        entry = symmetric_entry(METHOD, threshold, float_kept=commented, extra={"ncnn_layer": key})
        if tensor in tensors:
            first = tensors[tensor]
            if first.threshold != entry.threshold or first.float_kept != entry.float_kept:
                note = f"ncnn layers reading this tensor disagree: {first.extra.get('ncnn_layer')} T={first.threshold!r}, {key} T={entry.threshold!r}"
                tensors[tensor] = replace(first, note=note)
            continue
        tensors[tensor] = entry
    settings: dict[str, Any] = {KEYS_SETTING: "tensor" if model is not None else "layer"}
    return imported_table(
        tensors,
        "ncnn",
        settings,
        weights=weights,
        model_name=model.name if model is not None else "",
        model_sha256=model.sha256 if model is not None else "",
    )


def read_ncnn_table(path: str | Path, model: LoadedModel | None = None) -> CalibrationTable:
    return loads_ncnn(read_bytes(path), model)


FORMATS = (
    TableFormat(
        "ncnn",
        lambda table, o: dumps_ncnn(table, o.model).encode("utf-8"),
        lambda data, o: loads_ncnn(data, o.model),
        "model.table",
        "ncnn int8 table (ncnn2table / ncnn2int8): scale 127/T per layer input, per-channel weight lines",
        detect=((6, ncnn_lines),),
        needs_model=lambda table: table.settings.get("ncnn_keys") != "layer",  # tensor names -> ncnn layer names
    ),
)
