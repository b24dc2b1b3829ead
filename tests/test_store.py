"""The bounded store: least recently used out first once the bytes held pass the limit, sizes measured
independently (numpy nbytes, protobuf ByteSize), and evicted models really leave memory."""

from __future__ import annotations

import gc
import tracemalloc
import weakref

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantviz.errors import QuantvizError
from quantviz.model import load_model
from quantviz.store import ByteLRU, deep_size
from tests.graphs import IR_VERSION, OPSET

MODEL_FLOATS = 500_000  # each test model holds a 2 MB weight


def _model(seed: int) -> bytes:
    w = np.random.default_rng(seed).standard_normal((MODEL_FLOATS // 500, 500)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"), helper.make_node("Relu", ["y"], ["z"], name="relu")],
        f"m{seed}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", w.shape[0]])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 500])],
        [numpy_helper.from_array(w, "w")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    return bytes(m.SerializeToString())


def test_deep_size_counts_arrays_and_protobufs_once() -> None:
    a = np.zeros(1000, np.float64)
    assert deep_size(a) == 8000
    assert 16_000 <= deep_size({"x": a, "y": [a, a], "z": np.ones(1000)}) < 16_000 + 2_000  # a counted once
    proto = onnx.load_from_string(_model(0))
    assert deep_size(proto) == proto.ByteSize() >= MODEL_FLOATS * 4


def test_least_recently_used_leaves_first_and_the_limit_holds() -> None:
    s: ByteLRU[str] = ByteLRU(limit_bytes=100)
    assert s.put("a", b"", nbytes=40) == []
    assert s.put("b", b"", nbytes=40) == []
    s.get("a")  # a is now the most recently used
    assert s.put("c", b"", nbytes=40) == ["b"]
    assert list(s.keys()) == ["a", "c"] and s.bytes_held == 80
    assert s.put("d", b"", nbytes=90) == ["a", "c"]
    assert s.bytes_held == 90 <= s.limit_bytes
    with pytest.raises(QuantvizError, match="more than the"):
        s.put("huge", b"", nbytes=101)
    assert "d" in s  # a refused entry evicts nothing
    assert s.drop_where(lambda k: k == "d") == 1 and len(s) == 0 and s.bytes_held == 0


def test_opening_more_models_than_the_limit_holds_releases_memory() -> None:
    raw = [_model(i) for i in range(6)]
    one = deep_size(load_model(raw[0]))
    assert one >= MODEL_FLOATS * 4
    store: ByteLRU[int] = ByteLRU(limit_bytes=int(2.5 * one))  # room for two models
    refs = []
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i, data in enumerate(raw):
            model = load_model(data, name=f"m{i}.onnx")
            refs.append(weakref.ref(model))
            store.put(i, model)
            del model
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(store) == 2 and list(store.keys()) == [4, 5]
    assert store.bytes_held <= store.limit_bytes
    assert [r() is None for r in refs] == [True, True, True, True, False, False]  # evicted models are gone
    # what stays allocated is about two models, not six (each model's weight is 2 MB)
    assert held < 3.5 * MODEL_FLOATS * 4, held
