"""The conformance corpus: one tiny generated ONNX model per peculiarity met in real models (issue 8).

Each case writes its model (and its external data file, when it has one) into a folder and returns
the model's path and calibration arrays keyed by input name, samples on the first axis. Inputs held
per sample (a recurrent state without a batch axis) carry one more leading axis than the model's
input; a 0-d array is a scalar fed to every run. Drawings are one line per model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 10  # onnxruntime 1.31 refuses onnx 1.23's default IR 14
SAMPLES = 12
OPSETS = tuple(range(10, 22))


@dataclass(frozen=True)
class Case:
    """A corpus model on disk and data that feeds it."""

    path: Path
    data: dict[str, np.ndarray]


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _w(shape: tuple[int, ...], seed: int, scale: float = 0.5) -> np.ndarray:
    return (_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _save(graph: onnx.GraphProto, folder: Path, name: str, opset: int = 17, external: bool = False) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    path = folder / f"{name}.onnx"
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=f"{name}.data", size_threshold=0)
    else:
        onnx.save_model(model, str(path))
    return path


def _x(shape: tuple[int, ...], seed: int = 1) -> np.ndarray:
    return _rng(seed).standard_normal(shape).astype(np.float32)


def _cnn_graph(batch: int | str | None, name: str, weights_as_constants: bool = False) -> onnx.GraphProto:
    """x[B,3,8,8] -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> y[B,5] (B: batch; None: no batch axis)."""
    w, b = _w((4, 3, 3, 3), 1), _w((4,), 2, 0.1)
    fw, fb = _w((5, 4), 3), _w((5,), 4, 0.1)
    x_shape: list[int | str | None] = [3, 8, 8] if batch is None else [batch, 3, 8, 8]
    y_shape: list[int | str | None] = [5] if batch is None else [batch, 5]
    nodes = []
    inits = []
    if weights_as_constants:
        nodes += [helper.make_node("Constant", [], [n], name=f"const_{n}", value=numpy_helper.from_array(a, n)) for a, n in ((w, "w"), (b, "b"), (fw, "fw"), (fb, "fb"))]
    else:
        inits = [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (b, "b"), (fw, "fw"), (fb, "fb"))]
    src = "x"
    if batch is None:  # the model adds its own batch axis
        inits.append(numpy_helper.from_array(np.array([0], np.int64), "axis0"))
        nodes.append(helper.make_node("Unsqueeze", ["x", "axis0"], ["x4"], name="unsqueeze"))
        src = "x4"
    nodes += [
        helper.make_node("Conv", [src, "w", "b"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("GlobalAveragePool", ["relu"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fw", "fb"], ["y" if batch is not None else "y1"], name="fc", transB=1),
    ]
    if batch is None:
        nodes.append(helper.make_node("Squeeze", ["y1", "axis0"], ["y"], name="squeeze"))
    return helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        inits,
    )


def opset_case(opset: int) -> Callable[[Path], Case]:
    """x[N,3,8,8] -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> y, at the given opset."""

    def make(folder: Path) -> Case:
        # Unsqueeze/Squeeze take axes as an input from opset 13: the batched graph has neither.
        return Case(_save(_cnn_graph("N", f"opset{opset}"), folder, f"opset{opset}", opset), {"x": _x((SAMPLES, 3, 8, 8))})

    return make


def batch_case(batch: int | str | None) -> Callable[[Path], Case]:
    """The CNN with its batch dimension declared as dim_param, -1, 0, 1, 4 or absent."""

    def make(folder: Path) -> Case:
        name = f"batch_{'none' if batch is None else batch}".replace("-", "minus")
        shape = (SAMPLES, 3, 8, 8)
        return Case(_save(_cnn_graph(batch, name), folder, name), {"x": _x(shape)})

    return make


def token_ids(folder: Path) -> Case:
    """x[N,8] float and ids[N,6] int64 -> Gather(emb, ids) -> ReduceMean -> Add(Gemm(x, w)) -> Relu -> y[N,4]."""
    emb, w = _w((20, 4), 5), _w((8, 4), 6)
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["g"], name="gather"),
        helper.make_node("ReduceMean", ["g"], ["gm"], name="mean", axes=[1], keepdims=0),
        helper.make_node("Gemm", ["x", "w"], ["xm"], name="gemm"),
        helper.make_node("Add", ["gm", "xm"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["y"], name="relu"),
    ]
    g = helper.make_graph(
        nodes,
        "token_ids",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8]), helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(emb, "emb"), numpy_helper.from_array(w, "w")],
    )
    ids = _rng(7).integers(0, 20, (SAMPLES, 6)).astype(np.int64)
    return Case(_save(g, folder, "token_ids"), {"x": _x((SAMPLES, 8)), "ids": ids})


def if_subgraph(folder: Path) -> Case:
    """x[N,8] -> Gemm -> If(max |x| > 0: Relu, else: Neg) -> Gemm -> y[N,4] (the condition, one for the
    whole batch, is the same for every sample of real data: results do not depend on the batch size)."""
    w1, w2 = _w((8, 8), 8), _w((8, 4), 9)
    then_g = helper.make_graph(
        [helper.make_node("Relu", ["h"], ["t_out"], name="then_relu")], "then", [], [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, ["N", 8])]
    )
    else_g = helper.make_graph(
        [helper.make_node("Neg", ["h"], ["e_out"], name="else_neg")], "else", [], [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, ["N", 8])]
    )
    nodes = [
        helper.make_node("Gemm", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Abs", ["x"], ["xa"], name="abs"),
        helper.make_node("ReduceMax", ["xa"], ["hs"], name="max", keepdims=0),
        helper.make_node("Greater", ["hs", "zero"], ["cond"], name="gt"),
        helper.make_node("If", ["cond"], ["branch"], name="if", then_branch=then_g, else_branch=else_g),
        helper.make_node("Gemm", ["branch", "w2"], ["y"], name="mm2"),
    ]
    g = helper.make_graph(
        nodes,
        "if_subgraph",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(np.array(0, np.float32), "zero")],
    )
    return Case(_save(g, folder, "if_subgraph", 13), {"x": _x((SAMPLES, 8))})


def loop_subgraph(folder: Path) -> Case:
    """x[N,8] -> Loop 3 times (v <- Tanh(MatMul(v, w))) -> Gemm -> y[N,4]."""
    w, w2 = _w((8, 8), 10), _w((8, 4), 11)
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"),
            helper.make_node("MatMul", ["v_in", "w"], ["v_mm"], name="body_mm"),
            helper.make_node("Tanh", ["v_mm"], ["v_out"], name="body_tanh"),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, ["N", 8]),
        ],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("v_out", TensorProto.FLOAT, ["N", 8])],
    )
    nodes = [
        helper.make_node("Loop", ["trips", "", "x"], ["looped"], name="loop", body=body),
        helper.make_node("Gemm", ["looped", "w2"], ["y"], name="mm"),
    ]
    g = helper.make_graph(
        nodes,
        "loop_subgraph",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(np.array(3, np.int64), "trips")],
    )
    return Case(_save(g, folder, "loop_subgraph", 13), {"x": _x((SAMPLES, 8))})


def lstm_state(folder: Path) -> Case:
    """x[N,5,4] -> Transpose -> LSTM(h0[1,1,8], c0[1,1,8]: states without a batch axis) -> Y_h -> Gemm -> y."""
    hidden = 8
    W, R, B = _w((1, 4 * hidden, 4), 12), _w((1, 4 * hidden, hidden), 13, 0.3), _w((1, 8 * hidden), 14, 0.1)
    wo = _w((hidden, 3), 15)
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], name="to_time_major", perm=[1, 0, 2]),
        helper.make_node("LSTM", ["xt", "W", "R", "B", "", "h0", "c0"], ["Y", "Y_h", "Y_c"], name="lstm", hidden_size=hidden),
        helper.make_node("Squeeze", ["Y_h", "axis0"], ["h"], name="squeeze"),
        helper.make_node("Gemm", ["h", "wo"], ["y"], name="head"),
    ]
    g = helper.make_graph(
        nodes,
        "lstm_state",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 4]),
            helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, 1, hidden]),
            helper.make_tensor_value_info("c0", TensorProto.FLOAT, [1, 1, hidden]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]), helper.make_tensor_value_info("Y_c", TensorProto.FLOAT, [1, "N", hidden])],
        [numpy_helper.from_array(a, n) for a, n in ((W, "W"), (R, "R"), (B, "B"), (wo, "wo"), (np.array([0], np.int64), "axis0"))],
    )
    data = {"x": _x((SAMPLES, 5, 4)), "h0": _x((SAMPLES, 1, 1, hidden), 16) * 0.5, "c0": _x((SAMPLES, 1, 1, hidden), 17) * 0.5}
    return Case(_save(g, folder, "lstm_state", 14), data)


def gru_state(folder: Path) -> Case:
    """Silero-style: frame[1,16] * (sr / 16000) (sr: a 0-d int64) -> Reshape -> GRU(state[1,1,8]) -> Gemm -> y[1,1]; new state out."""
    hidden = 8
    W, R, B = _w((1, 3 * hidden, 16), 18, 0.3), _w((1, 3 * hidden, hidden), 19, 0.3), _w((1, 6 * hidden), 20, 0.1)
    wo, bo = _w((1, hidden), 21), _w((1,), 22, 0.1)
    nodes = [
        helper.make_node("Cast", ["sr"], ["srf"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Div", ["srf", "sr_ref"], ["srn"], name="sr_norm"),
        helper.make_node("Mul", ["frame", "srn"], ["scaled"], name="scale"),
        helper.make_node("Reshape", ["scaled", "seq_shape"], ["seq"], name="reshape"),
        helper.make_node("GRU", ["seq", "W", "R", "B", "", "state"], ["Y", "new_state"], name="gru", hidden_size=hidden),
        helper.make_node("Reshape", ["new_state", "h_shape"], ["h"], name="flat"),
        helper.make_node("Gemm", ["h", "wo", "bo"], ["y"], name="head", transB=1),
    ]
    g = helper.make_graph(
        nodes,
        "gru_state",
        [
            helper.make_tensor_value_info("frame", TensorProto.FLOAT, [1, 16]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, 1, hidden]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1]), helper.make_tensor_value_info("new_state", TensorProto.FLOAT, [1, 1, hidden])],
        [
            numpy_helper.from_array(a, n)
            for a, n in (
                (W, "W"), (R, "R"), (B, "B"), (wo, "wo"), (bo, "bo"), (np.array(16000, np.float32), "sr_ref"),
                (np.array([1, 1, 16], np.int64), "seq_shape"), (np.array([1, hidden], np.int64), "h_shape"),
            )
        ],  # fmt: skip
    )
    data = {"frame": _x((SAMPLES, 16)), "state": _x((SAMPLES, 1, 1, hidden), 23) * 0.5, "sr": np.array(16000, np.int64)}
    return Case(_save(g, folder, "gru_state", 14), data)


def _ln_inputs(folder: Path, name: str, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], opset: int) -> Case:
    w = _w((16, 6), 24)
    nodes = [*nodes, helper.make_node("MatMul", ["ln", "w_out"], ["y"], name="proj")]
    g = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6])],
        [*inits, numpy_helper.from_array(w, "w_out"), numpy_helper.from_array(_rng(25).uniform(0.5, 1.5, 16).astype(np.float32), "gamma"),
         numpy_helper.from_array(_w((16,), 26, 0.1), "beta")],
    )  # fmt: skip
    return Case(_save(g, folder, name, opset), {"x": _x((SAMPLES, 4, 16)) * 3 + 1})


def layernorm_decomposed(folder: Path) -> Case:
    """x[N,4,16] -> ReduceMean -> Sub -> Pow 2 -> ReduceMean -> Add eps -> Sqrt -> Div -> Mul gamma -> Add beta -> MatMul -> y."""
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mu"], name="mean", axes=[-1]),
        helper.make_node("Sub", ["x", "mu"], ["d"], name="sub"),
        helper.make_node("Pow", ["d", "two"], ["d2"], name="pow"),
        helper.make_node("ReduceMean", ["d2"], ["var"], name="var", axes=[-1]),
        helper.make_node("Add", ["var", "eps"], ["ve"], name="add_eps"),
        helper.make_node("Sqrt", ["ve"], ["sd"], name="sqrt"),
        helper.make_node("Div", ["d", "sd"], ["n"], name="div"),
        helper.make_node("Mul", ["n", "gamma"], ["ng"], name="mul_gamma"),
        helper.make_node("Add", ["ng", "beta"], ["ln"], name="add_beta"),
    ]
    inits = [numpy_helper.from_array(np.array(2, np.float32), "two"), numpy_helper.from_array(np.array(1e-5, np.float32), "eps")]
    return _ln_inputs(folder, "layernorm_decomposed", nodes, inits, 17)


def layernorm_fused(folder: Path) -> Case:
    """x[N,4,16] -> LayerNormalization(gamma, beta) -> MatMul -> y."""
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], name="ln", axis=-1)]
    return _ln_inputs(folder, "layernorm_fused", nodes, [], 17)


def attention_mask(folder: Path) -> Case:
    """x[N,4,8] -> q,k,v MatMuls -> q k^T / sqrt(8) + causal mask (-inf) -> Softmax -> MatMul v -> MatMul -> y."""
    mask = np.triu(np.full((4, 4), -np.inf, np.float32), 1)
    wq, wk, wv, wo = (_w((8, 8), s) for s in (27, 28, 29, 30))
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="q"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="k"),
        helper.make_node("MatMul", ["x", "wv"], ["v"], name="v"),
        helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["qk"], name="qk"),
        helper.make_node("Mul", ["qk", "inv_sqrt"], ["scores"], name="scale"),
        helper.make_node("Add", ["scores", "mask"], ["masked"], name="mask_add"),
        helper.make_node("Softmax", ["masked"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["ctx"], name="ctx"),
        helper.make_node("MatMul", ["ctx", "wo"], ["y"], name="out"),
    ]
    g = helper.make_graph(
        nodes,
        "attention_mask",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8])],
        [numpy_helper.from_array(a, n) for a, n in ((wq, "wq"), (wk, "wk"), (wv, "wv"), (wo, "wo"), (mask, "mask"), (np.array(8**-0.5, np.float32), "inv_sqrt"))],
    )
    return Case(_save(g, folder, "attention_mask", 17), {"x": _x((SAMPLES, 4, 8))})


def resize_empty_roi(folder: Path) -> Case:
    """x[N,3,4,4] -> Conv -> Resize(roi "", scales 2x) -> Conv -> y[N,2,8,8]."""
    w1, w2 = _w((4, 3, 3, 3), 31), _w((2, 4, 3, 3), 32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Resize", ["c1", "", "scales"], ["up"], name="resize", mode="nearest"),
        helper.make_node("Conv", ["up", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    g = helper.make_graph(
        nodes,
        "resize_empty_roi",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 8, 8])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")],
    )
    return Case(_save(g, folder, "resize_empty_roi", 13), {"x": _x((SAMPLES, 3, 4, 4))})


def constant_weights(folder: Path) -> Case:
    """The CNN with every weight stored in a Constant node instead of an initializer."""
    return Case(_save(_cnn_graph("N", "constant_weights", weights_as_constants=True), folder, "constant_weights"), {"x": _x((SAMPLES, 3, 8, 8))})


def external_data(folder: Path) -> Case:
    """The CNN with its weights in a separate external data file beside the .onnx."""
    return Case(_save(_cnn_graph("N", "external_data"), folder, "external_data", external=True), {"x": _x((SAMPLES, 3, 8, 8))})


def zero_tensor(folder: Path) -> Case:
    """x[N,4] -> Gemm -> h; x -> Gemm with all-zero weights -> z (all zero, like a zero recurrent state)
    -> Gemm -> g; h + g -> Gemm -> y[N,3]: threshold 0 is kept in float in every format (quantviz.table)."""
    inits = [
        numpy_helper.from_array(_w((4, 4), 40), "w1"), numpy_helper.from_array(np.zeros((4, 4), np.float32), "wz"),
        numpy_helper.from_array(_w((4, 4), 41), "w3"), numpy_helper.from_array(_w((4,), 42), "b3"),
        numpy_helper.from_array(_w((3, 4), 43), "w2"),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1", transB=1),
        helper.make_node("Gemm", ["x", "wz"], ["z"], name="fz", transB=1),
        helper.make_node("Gemm", ["z", "w3", "b3"], ["g"], name="fc3", transB=1),
        helper.make_node("Add", ["h", "g"], ["s"], name="add"),
        helper.make_node("Gemm", ["s", "w2"], ["y"], name="fc2", transB=1),
    ]
    g = helper.make_graph(
        nodes, "zero_tensor", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits,
    )  # fmt: skip
    return Case(_save(g, folder, "zero_tensor"), {"x": _x((SAMPLES, 4))})


CASES: dict[str, Callable[[Path], Case]] = {
    **{f"opset{o}": opset_case(o) for o in OPSETS},
    **{f"batch_{b}": batch_case(v) for b, v in (("param", "N"), ("minus1", -1), ("0", 0), ("1", 1), ("4", 4), ("none", None))},
    "token_ids": token_ids,
    "if_subgraph": if_subgraph,
    "loop_subgraph": loop_subgraph,
    "lstm_state": lstm_state,
    "gru_state": gru_state,
    "layernorm_decomposed": layernorm_decomposed,
    "layernorm_fused": layernorm_fused,
    "attention_mask": attention_mask,
    "resize_empty_roi": resize_empty_roi,
    "constant_weights": constant_weights,
    "external_data": external_data,
    "zero_tensor": zero_tensor,
}


def already_quantized(folder: Path) -> Path:
    """A MatMul model quantized dynamically by onnxruntime (DynamicQuantizeLinear + MatMulInteger)."""
    from onnxruntime.quantization import quantize_dynamic

    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "float_mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(_w((8, 4), 33), "w")],
    )
    src = _save(g, folder, "float_mm", 17)
    out = folder / "dynamic_int8.onnx"
    quantize_dynamic(src, out)
    return out
