"""The analysis in runs of layers (issue 8 item 6): when one sample's exposed layer outputs exceed
ANALYZE_BATCH_BYTES, analyze splits the layers into consecutive runs, each with pruned models, and
the report equals the one-run report exactly (the batches are the same: one sample each, as the
budget makes them in one run too); what one run fetches stays under the budget."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import quantviz.sensitivity as sens
from quantviz.collect import collect
from quantviz.config import CollectConfig
from quantviz.data import CalibrationSource, open_source
from quantviz.errors import CancelledError
from quantviz.layer_runs import LayerRun, exposed_bytes, layer_runs, pack
from quantviz.model import LoadedModel, load_model
from quantviz.sensitivity_plan import plan
from quantviz.table import CalibrationTable, calibrate_model

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
BUDGET = 48_000  # bytes: digits_cnn's 19 layers expose about 320 KB a sample, its largest layer 41 KB


@pytest.fixture(scope="module")
def cnn() -> tuple[LoadedModel, CalibrationTable, CalibrationSource]:
    model = load_model(SAMPLES / "digits_cnn.onnx")
    source = open_source(SAMPLES / "digits_eval.npz", model.inputs)
    table = calibrate_model(model, collect(model, open_source(SAMPLES / "digits_calib.npz", model.inputs), CollectConfig(samples=64)), "kl")
    return model, table, source


def test_pack() -> None:
    assert pack([], 10) == []
    assert pack([3, 3, 3, 3], 10) == [range(0, 3), range(3, 4)]
    assert pack([4, 20, 4, 4, 4], 10) == [range(0, 1), range(1, 2), range(2, 4), range(4, 5)]  # 20 alone
    assert pack([5, 5], 10) == [range(0, 2)]


def test_estimate_is_the_bytes_the_models_expose(cnn: tuple[LoadedModel, CalibrationTable, CalibrationSource]) -> None:
    model, table, source = cnn
    p = plan(model, table, parts=True)
    one = next(iter(source.batches(1, 1)))
    measured = sum(np.asarray(v).nbytes for proto in (p.isolated, p.accumulated) for v in sens._session(proto).run(None, {"input": one["input"]}))
    per_layer, outputs, unknown = exposed_bytes(p, one)
    assert unknown == 0 and sum(per_layer) + outputs == measured
    assert measured > 5 * BUDGET and max(per_layer) <= BUDGET
    runs = layer_runs(p, one, BUDGET)
    assert len(runs) > 1 and all(r.bytes <= BUDGET for r in runs)
    assert [s for r in runs for s in r.layers] == list(p.layers)  # every layer once, in order
    assert [r.outputs for r in runs] == [False] * (len(runs) - 1) + [True]  # the model outputs: last
    assert layer_runs(p, one, measured) == [LayerRun(p.layers, True, measured)]


def test_split_report_equals_the_one_run_report(
    cnn: tuple[LoadedModel, CalibrationTable, CalibrationSource], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model, table, source = cnn
    labels = np.load(SAMPLES / "digits_eval.npz")["label"]
    wide = sens.analyze(model, table, source, samples=40, labels=labels)  # the default budget: batches of 32
    monkeypatch.setattr(sens, "ANALYZE_BATCH_BYTES", BUDGET)
    made: list[int] = []  # nodes of each session's model
    session = sens._session

    def counted(proto: onnx.ModelProto) -> Any:
        made.append(len(proto.graph.node))
        return session(proto)

    monkeypatch.setattr(sens, "_session", counted)
    seen: list[tuple[int, int]] = []
    with caplog.at_level(logging.INFO, logger="quantviz.sensitivity"):
        split = sens.analyze(model, table, source, samples=40, labels=labels, progress=lambda d, t: seen.append((d, t)))
    assert any("runs of layers" in r.message for r in caplog.records)
    runs = len(made) // 2
    assert runs > 1 and split.batch_size == 1
    full = len(plan(model, table, parts=True).isolated.graph.node)
    assert max(made) <= full and min(made) < full  # pruned models
    # progress counts samples over all runs, to runs x samples (after the (0, 40) of the first batch's
    # fetch, which tells the outputs' sizes)
    assert seen[0] == (0, 40) and {t for _, t in seen[1:]} == {runs * 40} and seen[-1] == (runs * 40, runs * 40)
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:], strict=False))
    with monkeypatch.context() as m:
        m.setattr(sens, "layer_runs", lambda p, feed, budget: [LayerRun(p.layers, True, 0)])
        one = sens.analyze(model, table, source, samples=40, labels=labels)
    assert one.batch_size == 1
    assert split == one  # the same batches: every figure equal, float for float
    # against the default budget's batches of 32: the same figures up to the sums' rounding
    assert [le.layer for le in split.layers] == [le.layer for le in wide.layers]
    for a, b in zip(split.layers, wide.layers, strict=True):
        assert a.isolated.cosine == pytest.approx(b.isolated.cosine, abs=1e-6)
        assert a.accumulated.cosine == pytest.approx(b.accumulated.cosine, abs=1e-6)
        assert a.isolated.mse == pytest.approx(b.isolated.mse, rel=1e-6)
        assert a.parts is not None and b.parts is not None
        for (k, pa), (kk, pb) in zip(a.parts.items(), b.parts.items(), strict=True):
            assert k == kk and pa.cosine == pytest.approx(pb.cosine, abs=1e-6)
    for x, y in zip(split.outputs, wide.outputs, strict=True):
        assert x.figures.cosine == pytest.approx(y.figures.cosine, abs=1e-6)
        assert (x.top1_agreement, x.accuracy_float, x.accuracy_quantized) == (y.top1_agreement, y.accuracy_float, y.accuracy_quantized)


def test_one_run_fetches_at_most_the_budget(
    cnn: tuple[LoadedModel, CalibrationTable, CalibrationSource], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The memory bound, measured as the bytes onnxruntime hands back for one batch (its two models'
    outputs): under the budget in every run, while one run of every layer fetches five times as much."""
    model, table, source = cnn
    monkeypatch.setattr(sens, "ANALYZE_BATCH_BYTES", BUDGET)
    fetched: list[int] = []
    run = sens._run

    def counted(sess: Any, names: list[str], batch: dict[str, Any], done: int) -> dict[str, Any]:
        out = run(sess, names, batch, done)
        fetched.append(sum(v.nbytes for v in out.values()))
        return out

    monkeypatch.setattr(sens, "_run", counted)
    sens.analyze(model, table, source, samples=3)
    per_batch = [a + b for a, b in zip(fetched[::2], fetched[1::2], strict=True)]  # isolated then accumulated
    assert len(per_batch) > 3 and max(per_batch) <= BUDGET
    fetched.clear()
    with monkeypatch.context() as m:
        m.setattr(sens, "layer_runs", lambda p, feed, budget: [LayerRun(p.layers, True, 0)])
        sens.analyze(model, table, source, samples=3)
    assert min(a + b for a, b in zip(fetched[::2], fetched[1::2], strict=True)) > 5 * BUDGET


def test_cancel_in_a_later_run(cnn: tuple[LoadedModel, CalibrationTable, CalibrationSource], monkeypatch: pytest.MonkeyPatch) -> None:
    model, table, source = cnn
    monkeypatch.setattr(sens, "ANALYZE_BATCH_BYTES", BUDGET)
    asked = iter(range(1000))
    with pytest.raises(CancelledError):
        sens.analyze(model, table, source, samples=5, cancel=lambda: next(asked) == 12)  # the third run's third batch


def test_best_method_in_runs_picks_as_in_one_run(
    cnn: tuple[LoadedModel, CalibrationTable, CalibrationSource], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _, source = cnn
    stats = collect(model, open_source(SAMPLES / "digits_calib.npz", model.inputs), CollectConfig(samples=64))
    monkeypatch.setattr(sens, "ANALYZE_BATCH_BYTES", BUDGET)
    split = sens.best_method_picks(model, stats, source, ("kl", "minmax"), samples=8)
    with monkeypatch.context() as m:
        m.setattr(sens, "layer_runs", lambda p, feed, budget: [LayerRun(p.layers, True, 0)])
        one = sens.best_method_picks(model, stats, source, ("kl", "minmax"), samples=8)
    assert split == one
