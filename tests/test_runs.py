"""Runs: two real analyses of the sample (KL and MinMax) kept as runs; compare() gives the per-layer
deltas and the end-to-end change computed here from the two reports' own figures; runs travel in the
review file and come back equal; older files without runs still open; bad runs are refused."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from quantviz.collect import collect
from quantviz.config import CollectConfig
from quantviz.data import open_source
from quantviz.errors import QuantvizError
from quantviz.limits import RUNS_MAX, LimitError
from quantviz.model import load_model
from quantviz.review import Review, load_review, open_review, review_bytes
from quantviz.runs import ACCUMULATED, ISOLATED, LayerFigures, Run, compare, keep_last, renamed, run_from_report, runs_to_dict
from quantviz.sensitivity import LayerReport, analyze
from quantviz.stats import CalibrationStats, npz_bytes, read_stats_arrays
from quantviz.table import calibrate_model

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
WHEN = datetime(2026, 12, 5, 14, 5, 7, tzinfo=UTC)


@pytest.fixture(scope="module")
def analyses() -> tuple[CalibrationStats, dict[str, LayerReport]]:
    model = load_model(SAMPLES / "digits_cnn.onnx")
    calib = open_source(SAMPLES / "digits_calib.npz", model.inputs)
    stats = collect(model, calib, CollectConfig(samples=64))
    ev = open_source(SAMPLES / "digits_eval.npz", model.inputs)
    labels = np.load(SAMPLES / "digits_eval.npz")["label"][:64]
    reports = {m: analyze(model, calibrate_model(model, stats, m), ev, samples=64, labels=labels, parts=False) for m in ("kl", "minmax")}
    return stats, reports


def _runs(analyses: tuple[CalibrationStats, dict[str, LayerReport]]) -> tuple[Run, Run]:
    _, reports = analyses
    a = run_from_report(reports["kl"], Review(default_method="kl"), id="a", when=WHEN)
    b = run_from_report(reports["minmax"], Review(default_method="minmax"), id="b", when=WHEN, label="best method")
    return a, b


def test_run_keeps_the_reports_figures(analyses: tuple[CalibrationStats, dict[str, LayerReport]]) -> None:
    _, reports = analyses
    a, b = _runs(analyses)
    assert a.name == "KL 14:05:07" and b.name == "best method 14:05:07"
    assert a.settings == f"KL (TensorRT entropy), per-channel, 64 samples of {reports['kl'].data_description}"
    assert a.thresholds == reports["kl"].thresholds and len(a.layers) == len(reports["kl"].layers) >= 19
    for le, f in zip(reports["kl"].layers, a.layers, strict=True):
        assert (f.layer, f.isolated_cosine, f.accumulated_snr_db) == (le.layer, le.isolated.cosine, le.accumulated.snr_db)
    (o,) = reports["kl"].outputs
    (e,) = a.outputs
    assert (e.cosine, e.snr_db, e.accuracy_quantized) == (o.figures.cosine, o.figures.snr_db, o.accuracy_quantized)


def test_a_run_says_its_table_wide_settings_and_keeps_them_in_the_review_file(
    analyses: tuple[CalibrationStats, dict[str, LayerReport]],
) -> None:
    """Two runs of one method, one on a symmetric table and one asymmetric (the non-negative warning's
    fix), must not read alike in the Runs pickers; runs written before the field open as before."""
    stats, reports = analyses
    plain = run_from_report(reports["kl"], Review(), id="a", when=WHEN)
    asym = Review(config=replace(Review().config, symmetric=False))
    b = run_from_report(reports["kl"], asym, id="b", when=WHEN)
    assert plain.table == "" and plain.name == "KL 14:05:07" and "asymmetric" not in plain.settings
    assert b.table == "asymmetric" and b.name == "KL (asymmetric) 14:05:07" and b.name != plain.name
    assert b.settings.startswith("KL (TensorRT entropy), asymmetric, per-channel, ")
    trt = run_from_report(reports["kl"], replace(asym, profile="trt"), id="c", when=WHEN, label="best method")
    assert trt.table == "asymmetric, TensorRT profile" and trt.name == "best method (asymmetric, TensorRT profile) 14:05:07"
    back = open_review(review_bytes(stats, Review(), [plain, b])).runs
    assert [r.table for r in back] == ["", "asymmetric"] and [r.name for r in back] == [plain.name, b.name]
    doc = runs_to_dict([plain])
    assert "table" not in doc["runs"][0]  # a run of the default table is written as before the field
    doc["runs"][0]["table"] = 3
    with pytest.raises(QuantvizError, match="table must be text"):
        open_review(_with_runs(stats, doc))


@pytest.mark.parametrize("by", [ISOLATED, ACCUMULATED])
def test_compare_gives_the_deltas_of_the_two_analyses_sorted_by_gain(
    analyses: tuple[CalibrationStats, dict[str, LayerReport]], by: str
) -> None:
    _, reports = analyses
    a, b = _runs(analyses)
    c = compare(a, b, by)
    # independently, from the reports: per layer, b's SNR minus a's, and a's 1 - cos minus b's
    ka = {le.layer: le for le in reports["kl"].layers}
    kb = {le.layer: le for le in reports["minmax"].layers}
    common = [n for n in ka if n in kb]
    assert sorted(d.layer for d in c.layers) == sorted(common)
    for d in c.layers:
        x, y = ka[d.layer], kb[d.layer]
        assert d.isolated_snr_gain_db == pytest.approx(y.isolated.snr_db - x.isolated.snr_db, abs=1e-12)
        assert d.accumulated_snr_gain_db == pytest.approx(y.accumulated.snr_db - x.accumulated.snr_db, abs=1e-12)
        assert d.isolated_gain == pytest.approx((1 - x.isolated.cosine) - (1 - y.isolated.cosine), abs=1e-15)
        assert d.accumulated_gain == pytest.approx((1 - x.accumulated.cosine) - (1 - y.accumulated.cosine), abs=1e-15)
    want = sorted(
        (getattr(kb[n], by).snr_db - getattr(ka[n], by).snr_db for n in common), reverse=True
    )
    got = [d.isolated_snr_gain_db if by == ISOLATED else d.accumulated_snr_gain_db for d in c.layers]
    np.testing.assert_allclose(got, want, atol=1e-12)  # largest gain first
    assert got[0] > got[-1]  # the two tables differ: a real order, not a tie
    (o,) = c.outputs
    (ra,), (rb,) = reports["kl"].outputs, reports["minmax"].outputs
    assert o.cosine_gain == pytest.approx(rb.figures.cosine - ra.figures.cosine, abs=1e-15)
    assert o.snr_gain_db == pytest.approx(rb.figures.snr_db - ra.figures.snr_db, abs=1e-12)
    diff = sum(1 for t in reports["kl"].thresholds if reports["kl"].thresholds[t] != reports["minmax"].thresholds.get(t))
    assert c.thresholds_changed == diff > 0
    assert c.only_a == c.only_b == ()


def test_compare_with_itself_is_zero_and_unmeasurable_layers_go_last(analyses: tuple[CalibrationStats, dict[str, LayerReport]]) -> None:
    a, _ = _runs(analyses)
    c = compare(a, a)
    assert all(d.isolated_snr_gain_db == 0 and d.accumulated_gain == 0 for d in c.layers)
    assert c.thresholds_changed == 0 and c.outputs[0].cosine_gain == 0
    # a layer with no figure (NaN) sorts last; a layer missing from b is listed apart
    nan_layer = LayerFigures("z_nan", "Relu", math.nan, math.nan, math.nan, math.nan)
    b = Run(**{**a.__dict__, "id": "b", "layers": (nan_layer, *a.layers[1:])})
    a2 = Run(**{**a.__dict__, "layers": (*a.layers, nan_layer)})
    c2 = compare(a2, b)
    assert c2.layers[-1].layer == "z_nan" and c2.only_a == (a.layers[0].layer,)
    with pytest.raises(QuantvizError, match="isolated"):
        compare(a, b, "sideways")


def test_keep_last_and_rename(analyses: tuple[CalibrationStats, dict[str, LayerReport]]) -> None:
    a, b = _runs(analyses)
    runs: list[Run] = []
    for i in range(12):
        runs = keep_last(runs, Run(**{**a.__dict__, "id": str(i)}), 10)
    assert [r.id for r in runs] == [str(i) for i in range(2, 12)]
    back = renamed(runs, "5", "  KL, clipped fc  ")
    assert [r.name for r in back if r.id == "5"] == ["KL, clipped fc"] and back[0] == runs[0]
    assert renamed(runs, "5", "   ") == runs  # an empty name keeps the old one


def test_runs_saved_in_the_review_file_come_back_equal(analyses: tuple[CalibrationStats, dict[str, LayerReport]]) -> None:
    stats, _ = analyses
    a, b = _runs(analyses)
    inf_layer = LayerFigures("exact", "Relu", 1.0, math.inf, math.nan, -math.inf)
    b = Run(**{**b.__dict__, "layers": (*b.layers, inf_layer)})
    review = Review(default_method="minmax")
    f = open_review(review_bytes(stats, review, [a, b]))
    assert f.review == review and len(f.stats.tensors) == len(stats.tensors)
    assert f.runs[0] == a
    # NaN != NaN: compare b field by field with NaN taken as equal
    got, want = f.runs[1], b
    assert Run(**{**got.__dict__, "layers": ()}) == Run(**{**want.__dict__, "layers": ()})
    for x, y in zip(got.layers, want.layers, strict=True):
        assert x.layer == y.layer and np.array_equal(
            [x.isolated_cosine, x.isolated_snr_db, x.accumulated_cosine, x.accumulated_snr_db],
            [y.isolated_cosine, y.isolated_snr_db, y.accumulated_cosine, y.accumulated_snr_db], equal_nan=True,
        )  # fmt: skip
    # a file written without runs (as before runs existed) opens with none
    old = review_bytes(stats, review)
    assert "runs" not in read_stats_arrays(old, extra=frozenset({"review", "runs"}))
    assert open_review(old).runs == () and load_review(old)[1] == review


def _with_runs(stats: CalibrationStats, doc: object) -> bytes:
    arrays = read_stats_arrays(review_bytes(stats, Review()), extra=frozenset({"review"}))
    arrays["runs"] = np.array(json.dumps(doc))
    return npz_bytes(arrays)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format="other"), "not quantviz runs"),
        (lambda d: d.update(version=99), "upgrade quantviz"),
        (lambda d: d["runs"][0].update(samples=-1), "samples must be at least 0"),
        (lambda d: d["runs"][0].update(colour="red"), "unknown field 'colour'"),
        (lambda d: d["runs"][0].pop("layers"), 'no "layers" field'),
        (lambda d: d["runs"][0]["layers"][0].__setitem__(2, "very good"), r"layers\[0\] must be a number"),
        (lambda d: d["runs"][0]["layers"].__setitem__(0, ["x"]), "list of 6 values"),
        (lambda d: d["runs"][0]["thresholds"].update(t=[1.0, 0.1, 0.5]), "zero point must be a whole number"),
        (lambda d: d["runs"].append(dict(d["runs"][0])), "two runs with the same id"),
        (lambda d: d.update(runs=[d["runs"][0]] * (RUNS_MAX + 1)), "beyond quantviz's limit of 100"),
    ],
)
def test_bad_runs_are_refused_in_one_sentence(analyses: tuple[CalibrationStats, dict[str, LayerReport]], change: object, message: str) -> None:
    stats, _ = analyses
    a, _ = _runs(analyses)
    doc = runs_to_dict([a])
    assert callable(change)
    change(doc)
    with pytest.raises(QuantvizError, match=message) as info:
        open_review(_with_runs(stats, doc))
    if "limit" in message:
        assert isinstance(info.value, LimitError)
