"""Memory of the analysis (best method runs it once per method) bounded independently of the number
of layers (issue 8 item 6): the first sample runs alone and the bytes of its exposed layer outputs
set the batch size so one batch fits ANALYZE_BATCH_BYTES."""

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


def test_layers_fetched_in_runs_when_a_sample_exceeds_the_run_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sample whose layer outputs exceed ANALYZE_RUN_BYTES is analysed in runs of consecutive layers,
    each fetching only its layers' outputs: every run after the first sample's holds at most the budget
    (or one layer's outputs, when a layer alone is larger), and the report is the same, float for float."""
    model = load_model(SAMPLES / "digits_cnn.onnx")
    source = open_source(SAMPLES / "digits_calib.npz", model.inputs)
    table = calibrate_model(model, collect(model, source, CollectConfig(samples=40)), "kl")
    whole = sens.analyze(model, table, source, samples=20, batch_size=4)

    runs: list[tuple[int, int, int]] = []  # (first sample, outputs fetched, bytes held) of each run
    plain_run = sens._run

    def recorded(sess: object, names: list[str], batch: dict[str, np.ndarray], done: int) -> dict[str, np.ndarray]:
        got = plain_run(sess, names, batch, done)  # type: ignore[arg-type]
        runs.append((done, len(names), sum(int(v.nbytes) for v in got.values())))
        return got

    p = plan(model, table, parts=True)
    one = next(iter(source.batches(1, 1)))
    # an independent count of one sample's bytes per layer: its float, isolated and part outputs, its
    # accumulated output (every output of the two models, float32)
    iso = dict(zip([o.name for o in sens._session(p.isolated).get_outputs()], sens._session(p.isolated).run(None, one), strict=True))
    acc = dict(zip([o.name for o in sens._session(p.accumulated).get_outputs()], sens._session(p.accumulated).run(None, one), strict=True))
    per_layer = [
        sum(iso[t].nbytes for t in dict.fromkeys((s.output_tensor, s.isolated_tensor, *s.part_tensors)) if t) + acc[s.accumulated_tensor].nbytes
        for s in p.layers
    ]
    budget = 2 * max(per_layer) * 4  # about two layers of a batch of 4
    monkeypatch.setattr(sens, "ANALYZE_RUN_BYTES", budget)
    monkeypatch.setattr(sens, "_run", recorded)
    parts = sens.analyze(model, table, source, samples=20, batch_size=4)

    assert parts.batch_size == whole.batch_size == 4
    assert parts.layers == whole.layers and parts.outputs == whole.outputs  # same figures, bit for bit
    later = [r for r in runs if r[0] > 0]
    batches = len({r[0] for r in later})
    assert len(later) > 2 * 2 * batches  # several runs (of the two models) a batch
    model_outputs_bytes = sum(iso[o].nbytes + acc[o].nbytes for o in p.model_outputs) * 4
    assert max(r[2] for r in later) <= budget + model_outputs_bytes  # the last run also holds the model's outputs
    assert sum(r[1] for r in later if r[0] == later[0][0]) >= len(p.layers) * 2  # every layer fetched in each batch
