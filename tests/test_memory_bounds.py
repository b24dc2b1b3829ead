"""Memory of the analysis (best method runs it once per method) bounded independently of the number
of layers (issue 8 item 6): the first sample runs alone and the bytes of its exposed layer outputs
set the batch size so one batch fits ANALYZE_BATCH_BYTES. When one sample's outputs alone exceed it,
the layers run in runs of layers: tests/test_layer_runs.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import quantviz.sensitivity as sens
from quantviz.collect import collect
from quantviz.config import CollectConfig
from quantviz.data import open_source
from quantviz.model import load_model
from quantviz.sensitivity_plan import plan
from quantviz.table import calibrate_model

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def test_budget_batch_size() -> None:
    assert sens.budget_batch_size(1000, 32, budget=10**9) == 32
    assert sens.budget_batch_size(1000, 32, budget=3001) == 3
    assert sens.budget_batch_size(1000, 32, budget=1) == 1


def test_batch_shrinks_to_the_budget_and_figures_do_not_change(monkeypatch: pytest.MonkeyPatch) -> None:
    model = load_model(SAMPLES / "digits_cnn.onnx")
    source = open_source(SAMPLES / "digits_calib.npz", model.inputs)
    table = calibrate_model(model, collect(model, source, CollectConfig(samples=40)), "kl")
    p = plan(model, table, parts=True)  # analyze decomposes each layer's error by default
    # independent count: every exposed output of the isolated and accumulated models for one sample, float32
    one = next(iter(source.batches(1, 1)))
    per_sample = 0
    for proto in (p.isolated, p.accumulated):
        s = sens._session(proto)
        per_sample += sum(int(np.prod(v.shape[1:])) * 4 for v in s.run(None, {"input": one["input"]}))
    wide = sens.analyze(model, table, source, samples=40, batch_size=32)
    monkeypatch.setattr(sens, "ANALYZE_BATCH_BYTES", 3 * per_sample + 1)
    small = sens.analyze(model, table, source, samples=40, batch_size=32)
    assert small.batch_size == 3 and wide.batch_size == 32
    for a, b in zip(wide.layers, small.layers, strict=True):
        assert a.isolated.cosine == pytest.approx(b.isolated.cosine, abs=1e-9)
        assert a.accumulated.cosine == pytest.approx(b.accumulated.cosine, abs=1e-9)
