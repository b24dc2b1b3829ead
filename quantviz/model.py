"""Load and validate an ONNX model; list its calibratable float tensors; run it with them as outputs.

Everything happens in memory: the model with extra graph outputs is serialised to bytes and given to
onnxruntime directly, never written next to the user's files (onnxruntime's calibrator writes
``augmented_model.onnx`` into the working directory).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from quantviz.errors import QuantvizError
from quantviz.graph import consumers as graph_consumers
from quantviz.runtime import new_session, session_options

if TYPE_CHECKING:
    from quantviz.folded import FoldedModel

log = logging.getLogger(__name__)

FLOAT_TYPES: dict[int, str] = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.DOUBLE: "float64"}
ONNX_TO_NUMPY = {
    TensorProto.FLOAT: np.float32,
    TensorProto.FLOAT16: np.float16,
    TensorProto.DOUBLE: np.float64,
    TensorProto.INT64: np.int64,
    TensorProto.INT32: np.int32,
    TensorProto.INT8: np.int8,
    TensorProto.UINT8: np.uint8,
    TensorProto.BOOL: np.bool_,
}

Dim = int | str | None


@dataclass(frozen=True)
class InputSpec:
    """A graph input the calibration data must feed: name, shape (str/None for dynamic dims), dtype."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str

    def shape_text(self) -> str:
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"


@dataclass(frozen=True)
class TensorInfo:
    """A calibratable float tensor: a graph input, an intermediate activation or a graph output."""

    name: str
    kind: str  # "input" | "activation" | "output"
    producer: str  # node name ("" for graph inputs)
    op_type: str  # producer's op type ("Input" for graph inputs)
    shape: tuple[Dim, ...]
    dtype: str
    consumers: tuple[str, ...] = ()

    def shape_text(self) -> str:
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"


@dataclass(frozen=True)
class LoadedModel:
    """A validated model: the proto (with shapes inferred), its hash and what calibration needs."""

    proto: onnx.ModelProto
    name: str
    sha256: str
    inputs: tuple[InputSpec, ...]
    tensors: tuple[TensorInfo, ...]
    outputs: tuple[str, ...]
    initializers: frozenset[str] = field(default_factory=frozenset)
    external_files: tuple[str, ...] = ()  # external data files the weights were read from

    @cached_property
    def folded(self) -> FoldedModel:
        """The BatchNorm-folded form, its fusion groups and weight scales (quantviz.folded), built once."""
        from quantviz.folded import fold_model  # fold and fusion read models; they load none

        return fold_model(self.proto)

    def tensor(self, name: str) -> TensorInfo:
        for t in self.tensors:
            if t.name == name:
                return t
        raise QuantvizError(f"The model has no calibratable tensor named '{name}'.")

    @property
    def tensor_names(self) -> list[str]:
        return [t.name for t in self.tensors]

    def node_by_name(self) -> dict[str, onnx.NodeProto]:
        return {n.name: n for n in self.proto.graph.node}

    def weight(self, name: str) -> np.ndarray | None:
        """An initializer (or Constant node output) as a numpy array, or None."""
        for init in self.proto.graph.initializer:
            if init.name == name:
                return numpy_helper.to_array(init)
        for node in self.proto.graph.node:
            if node.op_type == "Constant" and node.output and node.output[0] == name:
                for attr in node.attribute:
                    if attr.name == "value":
                        return numpy_helper.to_array(attr.t)
        return None


def batch_dim(spec: InputSpec) -> int | None:
    """The input's fixed batch size, or None when its first dimension is dynamic or absent.

    A dim_param, an unnamed dimension, and dim_value -1 or 0 (PaddlePaddle and some other exporters write
    these for a dynamic batch; onnxruntime accepts any size there) are dynamic; a scalar has no batch axis.
    """
    if not spec.shape:
        return None
    d = spec.shape[0]
    return d if isinstance(d, int) and d > 0 else None


def _external_files(proto: onnx.ModelProto) -> tuple[str, ...]:
    files: list[str] = []
    for init in proto.graph.initializer:
        if init.data_location == TensorProto.EXTERNAL:
            loc = next((e.value for e in init.external_data if e.key == "location"), "")
            if loc and loc not in files:
                files.append(loc)
    return tuple(files)


def _free_nonpositive_dims(proto: onnx.ModelProto) -> None:
    """Make dimensions declared -1 or 0 unknown (in place, on a proto this module parsed).

    Exporters write them for a dynamic batch; onnxruntime takes 0 as a fixed size of 0 and refuses every
    input ("Got: 1 Expected: 0"). The declared values stay in InputSpec.shape for the pre-flight to name.
    """
    graph = proto.graph
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.type.WhichOneof("value") != "tensor_type" or not vi.type.tensor_type.HasField("shape"):
            continue
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value <= 0:
                d.ClearField("dim_value")


def _dims(type_proto: onnx.TypeProto) -> tuple[Dim, ...]:
    if not type_proto.tensor_type.HasField("shape"):
        return ()
    out: list[Dim] = []
    for d in type_proto.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return tuple(out)


def _read_bytes(source: str | Path | bytes) -> tuple[onnx.ModelProto, bytes, str, tuple[str, ...]]:
    """Parse a model from bytes or a path (with external data for a path). Returns proto, raw bytes, name."""
    if isinstance(source, bytes | bytearray | memoryview):
        raw = bytes(source)
        name = "uploaded.onnx"
        try:
            proto = onnx.load_from_string(raw)
        except (DecodeError, RuntimeError, ValueError) as exc:
            raise QuantvizError(
                "This file is not a readable ONNX model (it may be truncated or another file type)."
            ) from exc
        if any(t.data_location == TensorProto.EXTERNAL for t in proto.graph.initializer):
            # onnxruntime would look for the data file relative to the working directory.
            raise QuantvizError(
                "This model keeps its weights in a separate external data file, which an upload does not carry: "
                "load it from its path on disk, with the data file beside it."
            )
        return proto, raw, name, ()
    path = Path(source)
    if not path.exists():
        raise QuantvizError(f"The model file '{path}' does not exist.")
    if path.is_dir():
        raise QuantvizError(f"'{path}' is a folder; give the path of an .onnx file.")
    raw = path.read_bytes()
    external: tuple[str, ...] = ()
    try:
        proto = onnx.load_from_string(raw)
        external = _external_files(proto)
        if external:
            onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
    except (DecodeError, RuntimeError, ValueError, OSError, onnx.checker.ValidationError) as exc:
        if isinstance(exc, OSError | onnx.checker.ValidationError) and "external" in str(exc).lower() or (
            isinstance(exc, onnx.checker.ValidationError) and "should be stored in" in str(exc)
        ):
            raise QuantvizError(f"The external data file of '{path.name}' is missing: {str(exc).rstrip('.')}.") from exc
        raise QuantvizError(
            f"'{path.name}' is not a readable ONNX model (it may be truncated or another file type)."
        ) from exc
    return proto, raw, path.name, external


def load_model(source: str | Path | bytes, name: str | None = None) -> LoadedModel:
    """Load, validate and describe a model given as a path or as the bytes of an .onnx file.

    Raises QuantvizError with a sentence for: not ONNX / truncated, no graph, an op or opset that
    onnxruntime cannot run, no float tensor to calibrate.
    """
    proto, raw, default_name, external = _read_bytes(source)
    if not proto.graph.node and not proto.graph.input:
        raise QuantvizError("This file parsed as ONNX but holds no graph: it is not an ONNX model.")
    sha = hashlib.sha256(raw).hexdigest()
    declared = {vi.name: _dims(vi.type) for vi in proto.graph.input}
    _free_nonpositive_dims(proto)
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises many types; shapes are optional here
        log.warning("Shape inference failed (%s); continuing with declared shapes only.", exc)
        inferred = proto
    _check_runnable(inferred)
    initializers = frozenset(i.name for i in inferred.graph.initializer)
    inputs = tuple(
        InputSpec(
            vi.name,
            declared.get(vi.name, _dims(vi.type)),
            np.dtype(ONNX_TO_NUMPY.get(vi.type.tensor_type.elem_type, np.float32)).name,
        )
        for vi in inferred.graph.input
        if vi.name not in initializers
    )
    tensors = _calibratable_tensors(inferred, initializers)
    if not tensors:
        raise QuantvizError("This model has no float tensor to calibrate (no float32/float16/float64 activations).")
    return LoadedModel(
        proto=inferred,
        name=name or default_name,
        sha256=sha,
        inputs=inputs,
        tensors=tensors,
        outputs=tuple(o.name for o in inferred.graph.output),
        initializers=initializers,
        external_files=external,
    )


_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : (Fatal error: )?")
_ORT_LOCATION = re.compile(r"^/\S+:\d+ .*?\) (?=[A-Z])")  # "/onnxruntime_src/x.cc:12 void f(...) Message"
_ORT_UNKNOWN_OP = re.compile(r"([\w.]*):(\w+)\(-?\d+\) is not a registered function/op")
_ORT_OPSET = re.compile(r"Opset (\d+) is under development.*support for domain (\S+) is till opset (\d+)")
_ORT_IR = re.compile(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)")


def _ort_reason(text: str) -> str:
    """onnxruntime's first message line without its error-code prefix and C++ source location."""
    first = text.strip().splitlines()[0] if text.strip() else "unknown error"
    return _ORT_LOCATION.sub("", _ORT_PREFIX.sub("", first)).strip()


def _check_runnable(proto: onnx.ModelProto) -> None:
    try:
        new_session(proto)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        text = str(exc)
        first = _ort_reason(text) if text.strip() else type(exc).__name__
        if m := _ORT_UNKNOWN_OP.search(text):
            domain = m.group(1) or "ai.onnx"
            raise QuantvizError(
                f"onnxruntime cannot run this model: it does not know the operator {m.group(2)} of domain '{domain}' "
                "(a custom operator); export the model with standard ONNX operators."
            ) from exc
        if m := _ORT_OPSET.search(text):
            raise QuantvizError(
                f"onnxruntime cannot run this model: it uses opset {m.group(1)} of {m.group(2)}, and this onnxruntime "
                f"supports up to opset {m.group(3)}; export the model with an older opset."
            ) from exc
        if m := _ORT_IR.search(text):
            raise QuantvizError(
                f"onnxruntime cannot run this model: its IR version {m.group(1)} is newer than this onnxruntime reads "
                f"(up to {m.group(2)}); save the model with an older IR version."
            ) from exc
        if "NOT_IMPLEMENTED" in text or "Could not find an implementation" in text:
            raise QuantvizError(f"onnxruntime cannot run this model: an operator has no CPU implementation ({first}).") from exc
        if "opset" in text.lower() or "IR version" in text:
            raise QuantvizError(f"onnxruntime cannot run this model: its opset or IR version is not supported ({first}).") from exc
        raise QuantvizError(f"onnxruntime cannot load this model: {first}.") from exc


def _constant_outputs(graph: onnx.GraphProto, initializers: frozenset[str]) -> set[str]:
    """Tensors computed from constants only (Constant nodes, and nodes fed only by them): weights."""
    const = set(initializers)
    for node in graph.node:  # nodes are topologically sorted in a valid model
        if node.op_type == "Constant" or (node.input and all((not i) or i in const for i in node.input)):
            const.update(o for o in node.output if o)
    return const - set(initializers)


def _calibratable_tensors(proto: onnx.ModelProto, initializers: frozenset[str]) -> tuple[TensorInfo, ...]:
    graph = proto.graph
    types: dict[str, onnx.TypeProto] = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        types[vi.name] = vi.type
    consumers = {t: [n.name for n in users] for t, users in graph_consumers(graph.node).items()}
    graph_outputs = {o.name for o in graph.output}
    constants = _constant_outputs(graph, initializers)
    out: list[TensorInfo] = []
    seen: set[str] = set()

    def add(name: str, kind: str, producer: str, op_type: str) -> None:
        t = types.get(name)
        if t is None or t.WhichOneof("value") != "tensor_type":
            return
        elem = t.tensor_type.elem_type
        if elem not in FLOAT_TYPES or name in seen:
            return
        seen.add(name)
        out.append(TensorInfo(name, kind, producer, op_type, _dims(t), FLOAT_TYPES[elem], tuple(consumers.get(name, ()))))

    for vi in graph.input:
        if vi.name not in initializers:
            add(vi.name, "input", "", "Input")
    for node in graph.node:
        if node.op_type == "Constant":
            continue
        for o in node.output:
            if o and o not in constants:
                add(o, "output" if o in graph_outputs else "activation", node.name, node.op_type)
    return tuple(out)


def session_with_outputs(model: LoadedModel, names: Sequence[str] | None = None) -> ort.InferenceSession:
    """An onnxruntime session whose outputs are the given tensors (default: every calibratable one).

    The model is copied and extended in memory; nothing is written to disk.
    """
    wanted = list(names) if names is not None else model.tensor_names
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    infos = {t.name: t for t in model.tensors}
    input_names = {i.name for i in model.inputs}
    del proto.graph.output[:]
    for name in wanted:
        if name in input_names:
            continue  # graph inputs are fed, not fetched
        t = infos.get(name)
        if t is None:
            raise QuantvizError(f"The model has no float tensor named '{name}'.")
        elem = {v: k for k, v in FLOAT_TYPES.items()}[t.dtype]
        proto.graph.output.append(helper.make_tensor_value_info(name, elem, None))
    if not proto.graph.output:
        # A session needs at least one output: keep the model's own.
        proto.graph.output.extend(model.proto.graph.output)
    options = session_options()
    # Every tensor is an output: onnxruntime's memory pattern then plans (and keeps) one large block
    # beside the outputs, about a batch of activations more at peak (measured on digits_resnet: 314 ->
    # 211 MB at batch 8). Without it the kernels and the results are the same, bit for bit.
    options.enable_mem_pattern = False
    # Between runs the caller works in numpy on the returned tensors; onnxruntime's idle workers
    # would spin on the same cores meanwhile (collection CPU time 1.84 -> 1.18 s, 64 samples).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return new_session(proto, options)


def plain_session(model: LoadedModel) -> ort.InferenceSession:
    """The model as it is (its own outputs), for float inference."""
    return new_session(model.proto)
