"""Symmetric int8 scales of Conv / Gemm / MatMul weights, per output channel (default) or per tensor.

Weights use abs-max (MinMax): s[c] = max |w[c, ...]| / 127, zero point 0 (TensorRT, onnxruntime and
TFLite all quantize weights so; per-channel: Krishnamoorthi 2018, "Quantizing deep convolutional
networks for efficient inference: A whitepaper", section 3.1). Measure them on the model AFTER
BatchNormalization folding (quantviz.fold), since the engine quantizes the folded weights.

Output-channel axis of the weight array:
  Conv    W[M, C/group, kh, kw]                 axis 0
  Gemm    B[K, N] (transB = 0) / B[N, K] (transB = 1)   axis 1 / axis 0
  MatMul  B[..., K, N] (constant second input)  the last axis
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx

from quantviz.config import INT8_MAX
from quantviz.fakequant import ZERO_TENSOR_SCALE
from quantviz.fold import constant_values, node_key

log = logging.getLogger(__name__)

WEIGHT_OPS = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True, eq=False)
class WeightQuant:
    """The quantization of one weight initializer.

    axis: the output-channel axis of the weight array (None when per tensor); absmax and scales hold
    one value per output channel (one value in all when per tensor); zero_points are all 0
    (symmetric int8, -127..127). scales are float32 values, as engines store them.
    """

    name: str
    node: str
    op_type: str
    axis: int | None
    per_channel: bool
    shape: tuple[int, ...]
    absmax: npt.NDArray[np.float64]
    scales: npt.NDArray[np.float32]
    zero_points: npt.NDArray[np.int32]

    def broadcast_scales(self) -> npt.NDArray[np.float32]:
        """scales reshaped to broadcast against the weight array."""
        if self.axis is None:
            return self.scales.reshape((1,) * len(self.shape))
        shape = [1] * len(self.shape)
        shape[self.axis] = -1
        return self.scales.reshape(shape)

    def quantize(self, w: npt.ArrayLike) -> npt.NDArray[np.int32]:
        """q = clip(round_half_even(w / s), -127, 127) with the scale of each output channel."""
        q = np.round(np.asarray(w, dtype=np.float64) / self.broadcast_scales().astype(np.float64))
        return np.clip(q, -INT8_MAX, INT8_MAX).astype(np.int32)

    def to_dict(self) -> dict[str, Any]:
        """The FORMATS.md "weights" entry (plain Python numbers: a JSON round trip is exact)."""
        return {
            "axis": self.axis,
            "per_channel": self.per_channel,
            "node": self.node,
            "op_type": self.op_type,
            "shape": list(self.shape),
            "scales": [float(s) for s in self.scales],
            "absmax": [float(a) for a in self.absmax],
            "zero_points": [int(z) for z in self.zero_points],
        }


def output_axis(op_type: str, node: onnx.NodeProto, ndim: int) -> int:
    """The output-channel axis of a weight of this op (see the module docstring)."""
    if op_type == "Conv":
        return 0
    if op_type == "Gemm":
        trans_b = next((int(a.i) for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return ndim - 1  # MatMul: B[..., K, N]


def scales_from_absmax(absmax: npt.NDArray[np.float64], qmax: int = INT8_MAX) -> npt.NDArray[np.float32]:
    """s = absmax / 127 in float32, with a defined scale for all-zero channels.

    An all-zero (or subnormal) channel quantizes to zeros with any normal scale; it gets the smallest non-zero channel
    scale of the same tensor (so its multiplier and int32 bias are as fine as its neighbours'),
    or ZERO_TENSOR_SCALE when the whole tensor is zero. Never a division by zero.
    """
    scales = np.asarray(absmax, dtype=np.float32) / np.float32(qmax)
    # a channel whose scale would be subnormal (|w| below ~1.5e-36, seen in real exports) is treated as
    # all-zero: its values round to 0 at any normal scale, and no engine or schema accepts such a scale
    usable = scales >= np.finfo(np.float32).tiny
    nonzero = scales[usable]
    fill = np.float32(nonzero.min()) if nonzero.size else np.float32(ZERO_TENSOR_SCALE)
    return np.where(usable, scales, fill).astype(np.float32)


def weight_quant(name: str, w: npt.NDArray[Any], node: onnx.NodeProto, per_channel: bool = True) -> WeightQuant:
    """Abs-max scales of one weight array used by node (Conv / Gemm / MatMul)."""
    w = np.asarray(w)
    axis = output_axis(node.op_type, node, w.ndim)
    if per_channel and w.ndim >= 1:
        moved = np.moveaxis(np.abs(w.astype(np.float64)), axis, 0).reshape(w.shape[axis], -1)
        absmax = moved.max(axis=1) if moved.shape[1] else np.zeros(w.shape[axis])
        kept_axis: int | None = axis
    else:
        absmax = np.array([float(np.abs(w).max()) if w.size else 0.0])
        kept_axis = None
    scales = scales_from_absmax(absmax)
    return WeightQuant(
        name=name,
        node=node_key(node),
        op_type=node.op_type,
        axis=kept_axis,
        per_channel=kept_axis is not None,
        shape=tuple(int(d) for d in w.shape),
        absmax=absmax.astype(np.float64),
        scales=scales,
        zero_points=np.zeros(scales.shape, dtype=np.int32),
    )


def weight_scales(proto: onnx.ModelProto, per_channel: bool = True) -> dict[str, WeightQuant]:
    """Scales of every constant weight of a Conv, Gemm or MatMul (second input), keyed by initializer.

    Give it the folded model (quantviz.fold.fold_batchnorm). A weight shared by several nodes is
    measured once, for its first user. Non-float weights (already quantized models) are skipped.
    """
    consts = constant_values(proto.graph)
    out: dict[str, WeightQuant] = {}
    for node in proto.graph.node:
        if node.op_type not in WEIGHT_OPS or len(node.input) < 2:
            continue
        name = node.input[1]
        w = consts.get(name)
        if w is None or not np.issubdtype(w.dtype, np.floating):
            continue
        if node.op_type == "MatMul" and w.ndim < 2:
            per = False  # a vector B has no output-channel axis
        else:
            per = per_channel
        if name in out:
            log.info("Weight %s is shared by %s and %s; measured once.", name, out[name].node, node_key(node))
            continue
        out[name] = weight_quant(name, w, node, per)
    return out
