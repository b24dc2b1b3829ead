"""quantviz.collect: streamed statistics equal numpy over a plain onnxruntime run of the whole set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from quantviz.collect import collect
from quantviz.config import CollectConfig
from quantviz.data import open_source
from quantviz.errors import CancelledError, QuantvizError
from quantviz.histogram import histogram_of
from quantviz.model import load_model
from tests import graphs
from tests.conftest import SAMPLES, ort_run_with_outputs


def _float_tensors(proto: onnx.ModelProto) -> list[str]:
    """Every float tensor a node produces, found here from onnx's own shape inference."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    return [o for n in inferred.graph.node for o in n.output if types.get(o) == onnx.TensorProto.FLOAT]


def test_identity_stats_equal_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((13, 16)) * np.linspace(0.1, 50, 13)[:, None]).astype(np.float32)
    x[0, :3] = 0.0
    x[4, 5] = np.nan
    x[7, 1] = -np.inf
    np.savez(tmp_path / "d.npz", x=x)
    m = load_model(graphs.identity_graph().SerializeToString())
    stats = collect(m, open_source(tmp_path / "d.npz", m.inputs), CollectConfig(bins=128, batch_size=4))
    finite = x[np.isfinite(x)]
    assert stats.samples == 13 and set(stats.tensors) == {"x", "y"}
    for name in ("x", "y"):
        s = stats.tensors[name]
        assert (s.min, s.max) == (float(finite.min()), float(finite.max()))
        assert (s.count, s.zero_count, s.nan_count, s.neginf_count, s.posinf_count) == (finite.size, 3, 1, 1, 0)
        assert s.batches == 4
        np.testing.assert_array_equal(s.abs_hist.counts, histogram_of(x, 128, signed=False).counts)
        np.testing.assert_array_equal(s.signed_hist.edges, histogram_of(x, 128, signed=True).edges)
    assert stats.nonfinite_tensors == ["x", "y"]
    assert stats.infos["y"].op_type == "Identity"


def test_conv_bn_relu_every_tensor_against_plain_onnxruntime(tmp_path: Path) -> None:
    proto = graphs.conv_bn_relu(seed=2)
    x = np.random.default_rng(5).standard_normal((10, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    m = load_model(proto.SerializeToString())
    stats = collect(m, open_source(tmp_path / "d.npz", m.inputs), CollectConfig(bins=256, batch_size=3))
    names = _float_tensors(proto)
    assert set(stats.tensors) == {"x", *names}
    expected = ort_run_with_outputs(proto, names, {"x": x})
    expected["x"] = x
    for name, value in expected.items():
        s = stats.tensors[name]
        np.testing.assert_allclose([s.min, s.max], [value.min(), value.max()], rtol=1e-6, atol=1e-7, err_msg=name)
        assert s.count == value.size, name
        assert s.abs_hist.total == value.size
        assert s.zero_count == int((value == 0).sum()), name
    assert stats.tensors["relu_out"].min == 0.0


def test_samples_limit_progress_and_cancel(tmp_path: Path) -> None:
    x = np.random.default_rng(1).standard_normal((23, 16)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    m = load_model(graphs.identity_graph().SerializeToString())
    src = open_source(tmp_path / "d.npz", m.inputs)
    seen: list[tuple[int, int]] = []
    stats = collect(m, src, CollectConfig(samples=10, batch_size=4, bins=64), progress=lambda d, t: seen.append((d, t)))
    assert stats.samples == 10
    assert stats.tensors["y"].count == 10 * 16
    assert stats.tensors["y"].max == float(x[:10].max())
    assert [d for d, _ in seen] == [0, 4, 8, 10] and {t for _, t in seen} == {10}
    # more samples asked than there are: all of them
    assert collect(m, src, CollectConfig(samples=100, batch_size=8, bins=64)).samples == 23
    calls = {"n": 0}

    def cancel_after_two() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    with pytest.raises(CancelledError, match="after 8 of 23 samples"):
        collect(m, src, CollectConfig(batch_size=4, bins=64), cancel=cancel_after_two)


def test_fixed_batch_dimension_one(tmp_path: Path) -> None:
    x = np.random.default_rng(2).standard_normal((5, 16)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    m = load_model(graphs.identity_graph([1, 16]).SerializeToString())
    seen: list[int] = []
    stats = collect(
        m, open_source(tmp_path / "d.npz", m.inputs), CollectConfig(batch_size=4, bins=64), progress=lambda d, t: seen.append(d)
    )
    assert stats.samples == 5 and seen == [0, 1, 2, 3, 4, 5]
    assert (stats.tensors["y"].min, stats.tensors["y"].max) == (float(x.min()), float(x.max()))


def test_subset_of_tensors_and_bad_config(tmp_path: Path) -> None:
    m = load_model(graphs.conv_bn_relu().SerializeToString())
    src = open_source("synthetic:4", m.inputs)
    stats = collect(m, src, CollectConfig(bins=64), tensors=["relu_out", "x"])
    assert set(stats.tensors) == {"relu_out", "x"} and stats.synthetic
    with pytest.raises(QuantvizError, match="bins must be an even number"):
        collect(m, src, CollectConfig(bins=63))
    with pytest.raises(QuantvizError, match="batch size must be at least 1"):
        collect(m, src, CollectConfig(batch_size=0))
    with pytest.raises(QuantvizError, match="number of samples must be at least 1"):
        collect(m, src, CollectConfig(samples=0))


def test_digits_sample_model() -> None:
    proto = onnx.load(str(SAMPLES / "digits_cnn.onnx"))
    m = load_model(SAMPLES / "digits_cnn.onnx")
    src = open_source(SAMPLES / "digits_calib.npz", m.inputs)
    stats = collect(m, src, CollectConfig(batch_size=32))
    with np.load(SAMPLES / "digits_calib.npz") as z:
        x = z["input"]
    assert stats.samples == x.shape[0] == src.num_samples
    names = _float_tensors(proto)
    assert set(stats.tensors) == {"input", *names}
    expected = ort_run_with_outputs(proto, names, {"input": x})
    expected["input"] = x
    for name, value in expected.items():
        s = stats.tensors[name]
        np.testing.assert_allclose([s.min, s.max], [value.min(), value.max()], rtol=1e-5, atol=1e-6, err_msg=name)
        assert s.count == value.size and not s.nonfinite
    probs = stats.tensors["probs"]
    assert probs.min >= 0.0 and probs.max <= 1.0


def test_fixed_batch_dimension_four(tmp_path: Path) -> None:
    """A fixed batch of 4 cannot run a short last batch: the remainder is left out (and said so)."""
    x = np.random.default_rng(3).standard_normal((10, 16)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    m = load_model(graphs.identity_graph([4, 16]).SerializeToString())
    seen: list[tuple[int, int]] = []
    stats = collect(
        m, open_source(tmp_path / "d.npz", m.inputs), CollectConfig(bins=64), progress=lambda d, t: seen.append((d, t))
    )
    assert stats.samples == 8 and seen == [(0, 8), (4, 8), (8, 8)]
    assert stats.tensors["y"].max == float(x[:8].max())
    with pytest.raises(QuantvizError, match="batch dimension is fixed at 4, but only 3 samples"):
        collect(m, open_source(tmp_path / "d.npz", m.inputs), CollectConfig(samples=3, bins=64))


def test_empty_tensor_reported_empty() -> None:
    """x[N,4] -> Slice(axis 1, 0:0) -> empty[N,0]; Concat(x, empty) -> y. The empty tensor gets no range."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("s0", 0), ("e0", 0), ("ax", 1))]
    nodes = [
        helper.make_node("Slice", ["x", "s0", "e0", "ax"], ["empty"], name="slice"),
        helper.make_node("Concat", ["x", "empty"], ["y"], name="cat", axis=1),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", graphs.OPSET)], ir_version=graphs.IR_VERSION)
    m = load_model(proto.SerializeToString())
    stats = collect(m, open_source("synthetic:6", m.inputs), CollectConfig(bins=64, batch_size=4))
    e = stats.tensors["empty"]
    assert e.empty and np.isnan(e.min) and np.isnan(e.max) and e.abs_hist.total == 0
    assert stats.empty_tensors == ["empty"]
    assert not stats.tensors["y"].empty


def test_float16_tensors(tmp_path: Path) -> None:
    """x -> Cast(float16) -> Relu -> Cast(float32) -> y: float16 activations are collected too."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Cast", ["x"], ["h"], name="c1", to=TensorProto.FLOAT16),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Cast", ["r"], ["y"], name="c2", to=TensorProto.FLOAT),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", graphs.OPSET)], ir_version=graphs.IR_VERSION)
    m = load_model(proto.SerializeToString())
    assert [(t.name, t.dtype) for t in m.tensors] == [("x", "float32"), ("h", "float16"), ("r", "float16"), ("y", "float32")]
    x = np.random.default_rng(4).standard_normal((7, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    stats = collect(m, open_source(tmp_path / "d.npz", m.inputs), CollectConfig(bins=64))
    h = x.astype(np.float16)
    assert (stats.tensors["h"].min, stats.tensors["h"].max) == (float(h.min()), float(h.max()))
    assert (stats.tensors["r"].min, stats.tensors["r"].max) == (0.0, float(h.max()))
