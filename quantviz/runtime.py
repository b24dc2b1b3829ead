"""The one place quantviz creates onnxruntime sessions (CPU only, quiet logging).

Callers shape the session options (quantviz.model: every tensor an output; quantviz.sensitivity: basic
graph optimizations only, so Q/DQ run as the ONNX spec says) and keep their own error messages, since
what went wrong means something different for the user's model, a quantized copy or one EQ node.
"""

from __future__ import annotations

import onnx
import onnxruntime as ort

PROVIDERS = ["CPUExecutionProvider"]


def session_options() -> ort.SessionOptions:
    """Default options: onnxruntime's warnings off (quantviz reports problems in its own words)."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return so


def new_session(model: onnx.ModelProto, options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    """An in-memory session of the model on the CPU (nothing is written to disk)."""
    return ort.InferenceSession(model.SerializeToString(), options or session_options(), providers=PROVIDERS)


def first_line(exc: BaseException) -> str:
    """The first line of an onnxruntime error (its messages run on with C++ details), or its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
