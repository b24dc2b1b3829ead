"""Fixed-point requantization multipliers of every quantized Conv / Gemm / MatMul.

A quantized layer with int8 input qx (scale s_x), int8 weights qw (scale s_w[c] per output channel),
int32 bias qb = round(b / (s_x * s_w[c])) and int8 output (scale s_y) computes (ALGORITHMS.md,
"Requantization with a fixed-point multiplier"; Jacob et al. 2018, section 2.2):

    acc[c] = sum(qx * qw[c]) + qb[c]                   (int32)
    qy[c]  = clip(round(acc[c] * M[c]) + zp_y),   M[c] = s_x * s_w[c] / s_y

M[c] is exported as (M0[c], k[c]) with M = M0 * 2^-k, M0 in [2^30, 2^31) (gemmlowp / TFLite), see
quantviz.fakequant.quantize_multiplier and quantviz.fakequant.requantize. When a ReLU is fused into
the layer (quantviz.fusion), s_y is the post-activation scale (the table already shares it with the
layer's own output) and the ReLU is the clip at zp_y. Gemm's alpha multiplies M.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx

from quantviz.fakequant import quantize_multipliers
from quantviz.fold import node_key
from quantviz.fusion import FusionInfo
from quantviz.weights import WeightQuant

log = logging.getLogger(__name__)

# Output-channel axis of the layer's OUTPUT (NCHW for Conv; the last axis for Gemm and MatMul).
CONV_CHANNEL_AXIS = 1


@dataclass(frozen=True, eq=False)
class LayerRequant:
    """The requantization of one layer: real multipliers and their (M0, k) per output channel."""

    node: str
    op_type: str
    input: str
    weight: str
    bias: str | None
    output: str
    activation: str | None
    channel_axis: int
    input_scale: float
    output_scale: float
    input_zero_point: int
    output_zero_point: int
    alpha: float
    real_multiplier: npt.NDArray[np.float64]
    multiplier: npt.NDArray[np.int64]
    shift: npt.NDArray[np.int64]

    def to_dict(self) -> dict[str, Any]:
        """The FORMATS.md "requant" entry (plain Python numbers)."""
        return {
            "op_type": self.op_type,
            "input": self.input,
            "weight": self.weight,
            "bias": self.bias,
            "output": self.output,
            "activation": self.activation,
            "channel_axis": self.channel_axis,
            "input_scale": float(self.input_scale),
            "output_scale": float(self.output_scale),
            "input_zero_point": int(self.input_zero_point),
            "output_zero_point": int(self.output_zero_point),
            "alpha": float(self.alpha),
            "real_multiplier": [float(m) for m in self.real_multiplier],
            "multiplier": [int(m) for m in self.multiplier],
            "shift": [int(k) for k in self.shift],
        }


def _alpha(node: onnx.NodeProto) -> float:
    return next((float(a.f) for a in node.attribute if a.name == "alpha"), 1.0) if node.op_type == "Gemm" else 1.0


def layer_requant(
    folded: onnx.ModelProto,
    scales: Mapping[str, float],
    weights: Mapping[str, WeightQuant],
    fusion: FusionInfo | None = None,
    zero_points: Mapping[str, int] | None = None,
) -> tuple[dict[str, LayerRequant], dict[str, str]]:
    """M = alpha * s_x * s_w[c] / s_y and its (M0, k) for every layer whose weight is in `weights`.

    folded: the BatchNorm-folded model (the one `weights` was measured on); scales: activation scale
    per tensor name (the table's, with fused tensors already sharing the post-activation scale).
    Returns (layers by node name, node name -> why it was left out).
    """
    zero_points = zero_points or {}
    out: dict[str, LayerRequant] = {}
    left_out: dict[str, str] = {}
    for node in folded.graph.node:
        if len(node.input) < 2 or node.input[1] not in weights or not node.output:
            continue
        key = node_key(node)
        wq = weights[node.input[1]]
        if wq.node != key:
            continue  # a shared weight: measured for its first user only
        x, y = node.input[0], node.output[0]
        missing = [t for t in (x, y) if not scales.get(t)]
        if missing:
            left_out[key] = f"no scale for {', '.join(missing)} (kept in float or not calibrated)"
            continue
        s_x, s_y = float(scales[x]), float(scales[y])
        alpha = _alpha(node)
        real = alpha * np.float64(s_x) * wq.scales.astype(np.float64) / np.float64(s_y)
        try:
            m0, k = quantize_multipliers(real)
        except ValueError as exc:
            left_out[key] = str(exc)
            continue
        group = fusion.activation_of(key) if fusion is not None else None
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        axis = CONV_CHANNEL_AXIS if node.op_type == "Conv" else -1
        out[key] = LayerRequant(
            node=key,
            op_type=node.op_type,
            input=x,
            weight=node.input[1],
            bias=bias,
            output=y,
            activation=group.activation if group else None,
            channel_axis=axis,
            input_scale=s_x,
            output_scale=s_y,
            input_zero_point=int(zero_points.get(x, 0)),
            output_zero_point=int(zero_points.get(y, 0)),
            alpha=alpha,
            real_multiplier=real,
            multiplier=m0,
            shift=k,
        )
    for key, why in left_out.items():
        log.info("No requantization for %s: %s", key, why)
    return out, left_out
