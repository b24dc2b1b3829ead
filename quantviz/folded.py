"""A model's BatchNorm-folded form and the facts derived from it, built once per loaded model.

LoadedModel.folded builds it on first use and keeps it: the table (check and apply_model), the weight
scales the app shows and the fusion groups all read this one fold instead of folding again. It is
read-only: callers copy what they change (apply_model copies the weight dict before overriding).
The QDQ build (quantviz.qdq.prepare_float_model) folds its own copy, since it edits that copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from quantviz.fold import FoldReport, fold_batchnorm
from quantviz.fusion import FusionInfo, analyse_folded
from quantviz.weights import WeightQuant, weight_scales


@dataclass(frozen=True, eq=False)
class FoldedModel:
    """proto: BatchNorm folded into its Conv (quantviz.fold); fold: what was folded; fusion: the
    Conv+ReLU-like groups and join nodes of the folded graph (quantviz.fusion)."""

    proto: onnx.ModelProto
    fold: FoldReport
    fusion: FusionInfo
    _weights: dict[bool, dict[str, WeightQuant]] = field(default_factory=dict, repr=False)

    def weights(self, per_channel: bool = True) -> dict[str, WeightQuant]:
        """Abs-max scales of every Conv/Gemm/MatMul weight of the folded model (quantviz.weights), measured once."""
        if per_channel not in self._weights:
            self._weights[per_channel] = weight_scales(self.proto, per_channel)
        return self._weights[per_channel]


def fold_model(proto: onnx.ModelProto) -> FoldedModel:
    folded, report = fold_batchnorm(proto)
    return FoldedModel(folded, report, analyse_folded(folded, report))
