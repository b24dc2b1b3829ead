"""EQ / EasyQuant: search each layer's scales for the best output cosine (Wu et al. 2020).

One job per module:
- search: the candidate grid and the coarse-to-fine search of each layer's weight and input scales
  (eq_search, a pure function over an `evaluate` callable; EQ's settings and result types);
- evaluator: the real evaluate, the node-by-node walk of the folded model in onnxruntime that runs
  the layers and computes the output cosines (ModelEvaluator, LayerRunner, layer_cosines);
- table: EQ as a calibration method, model + statistics + data -> CalibrationTable (calibrate_eq,
  eq_table, find_layers).

It drives the model (the table, the QDQ-prepared float model, the collector's batch size), so it
lives above quantviz.calib, whose modules stay pure functions of statistics.
"""

from __future__ import annotations

from quantviz.easyquant.evaluator import LayerRunner, ModelEvaluator, fake_quantize_fast, layer_cosines
from quantviz.easyquant.search import (
    EQ_MAX_SAMPLES,
    EQ_MODES,
    EQConfig,
    EQLayer,
    EQLayerResult,
    EQResult,
    EQRound,
    EQStart,
    Evaluation,
    candidate_grid,
    coarse_to_fine,
    eq_search,
    search_schedule,
)
from quantviz.easyquant.table import calibrate_eq, eq_table, find_layers

__all__ = [
    "EQ_MAX_SAMPLES",
    "EQ_MODES",
    "EQConfig",
    "EQLayer",
    "EQLayerResult",
    "EQResult",
    "EQRound",
    "EQStart",
    "Evaluation",
    "LayerRunner",
    "ModelEvaluator",
    "calibrate_eq",
    "candidate_grid",
    "coarse_to_fine",
    "eq_search",
    "eq_table",
    "fake_quantize_fast",
    "find_layers",
    "layer_cosines",
    "search_schedule",
]
