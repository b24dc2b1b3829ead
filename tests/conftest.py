"""Shared fixtures for the engine tests: models written to disk and a plain onnxruntime oracle."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"


def ort_run_with_outputs(proto: onnx.ModelProto, names: Sequence[str], feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Independent oracle: the model with `names` as its only graph outputs, built here with
    onnx.helper (not with quantviz.model), run once in a plain onnxruntime session."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    del m.graph.output[:]
    for n in names:
        m.graph.output.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, sess.run(list(names), feed), strict=True))


def spec_session(proto: onnx.ModelProto) -> ort.InferenceSession:
    """A plain onnxruntime session that runs QuantizeLinear / DequantizeLinear as the ONNX spec defines
    them (basic graph optimizations). At the default level onnxruntime fuses Q/DQ into int8 kernels,
    and on x86 CPUs with AVX2 but no VNNI its u8s8 kernel saturates int16 pair sums (8-bit weights):
    digits_cnn's QDQ model then scores 0.81 instead of 0.996 on those machines only."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


@pytest.fixture
def write_model(tmp_path: Path) -> Callable[[onnx.ModelProto, str], Path]:
    """Save a proto under tmp_path and return its path."""

    def write(proto: onnx.ModelProto, name: str = "model.onnx") -> Path:
        path = tmp_path / name
        onnx.save_model(proto, str(path))
        return path

    return write


@pytest.fixture(scope="session")
def ray_cluster():  # type: ignore[no-untyped-def]
    """A real local Ray (127.0.0.1, 2 CPUs, no dashboard: quantviz.distributed.connect) for the whole
    test session, shut down at its end."""
    from quantviz.distributed import connect

    ray = connect(None)
    yield ray
    ray.shutdown()
