"""AppTest of the Layer sensitivity page: analysis on arrival, choices per layer, best method, EQ."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from streamlit.testing.v1 import AppTest

from tests.app.figs import array, figure, review_of, stats_of, stored_in, work_of

ROOT = Path(__file__).resolve().parents[2]
EVAL = ROOT / "sample_models" / "digits_eval.npz"
MODEL = ROOT / "sample_models" / "digits_cnn.onnx"


def _page() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    assert not at.exception
    at.switch_page("pages/3_Layer_sensitivity.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _bars(at: AppTest) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The layers of the error chart (customdata [layer, text]) and its isolated and accumulated bars."""
    fig = figure(at.get("plotly_chart")[0])
    iso, acc = fig["data"][0], fig["data"][1]
    return [c[0] for c in iso["customdata"]], array(iso["x"]).astype(float), array(acc["x"]).astype(float)


@pytest.fixture(scope="module")
def float_accuracy() -> float:
    ev = np.load(EVAL)
    x, y = ev["input"][:256], ev["label"][:256]
    probs = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    return float(np.mean(probs.argmax(1) == y))


def test_arrives_analysed_worst_first_with_accuracy(float_accuracy: float) -> None:
    at = _page()
    m = _metrics(at)
    assert m["accuracy float"] == f"{float_accuracy:.2%}"  # plain onnxruntime on the same 256 labelled samples
    quantized = float(m["accuracy quantized"].rstrip("%")) / 100
    assert abs(quantized - float_accuracy) <= 0.01  # KL on the sample: within one point of float
    # the default view: 1 - cosine on a log axis, worst (largest) on top
    layers, iso, acc = _bars(at)
    assert figure(at.get("plotly_chart")[0])["layout"]["xaxis"]["type"] == "log"
    assert len(layers) >= 19 and len(set(layers)) == len(layers)
    assert np.all(np.diff(iso) <= 0)  # sorted by the isolated error, worst on top
    assert np.all((iso > 0) & (iso < 0.01)) and np.all((acc > 0) & (acc < 0.01))
    # the layer opened first is the worst one
    assert at.selectbox(key="sens_layer").value == layers[0]
    # the same bars as cosines on a linear axis: 1 - the values above
    at.radio(key="sens_measure").set_value("cosine").run()
    layers_c, iso_c, _ = _bars(at)
    assert layers_c == layers and figure(at.get("plotly_chart")[0])["layout"]["xaxis"]["type"] == "linear"
    np.testing.assert_allclose(iso_c, 1 - iso, atol=1e-12)
    at.radio(key="sens_measure").set_value("1 - cosine (log)").run()
    at.radio(key="sens_mode").set_value("accumulated").run()
    _, _, acc2 = _bars(at)
    assert np.all(np.diff(acc2) <= 0)


def test_override_changes_that_layers_error_and_recompute_agrees() -> None:
    at = _page()
    layer = "/fc/Gemm"
    at.selectbox(key="sens_layer").set_value(layer).run()
    before = _metrics(at)["1 - cos isolated"]
    # recompute with the unchanged table: the one-layer model gives the analysis figure
    at.button(key="sens_recompute").click().run()
    assert not at.exception
    m = _metrics(at)
    assert m["1 - cos isolated now"] == before
    tensor = "/fc/Gemm_output_0"
    box = at.number_input(key=f"sens_override::{tensor}")
    assert box.value is not None
    box.set_value(box.value / 8).run()
    at.button(key="sens_use").click().run()
    assert not at.exception
    review = review_of(at)
    assert review.choice(tensor).override == pytest.approx(box.value)
    # a small model is analysed again at once: the layer's figure moves, nothing is flagged stale
    assert not any("table changed" in w.value for w in at.warning)
    after = _metrics(at)["1 - cos isolated"]
    assert float(after) > float(before) + 1e-4  # clipping the classifier's logits at 1/8 hurts
    at.button(key="sens_recompute").click().run()
    assert _metrics(at)["1 - cos isolated now"] == after


def test_keep_float_and_note_reach_the_table_and_the_analysis() -> None:
    at = _page()
    layer = "/res2/res2.0/Conv"
    at.selectbox(key="sens_layer").set_value(layer).run()
    before = _metrics(at)["1 - cos isolated"]
    out = "/res2/res2.1/BatchNormalization_output_0"
    at.checkbox(key=f"sens_float::{out}").check().run()
    at.text_area(key=f"sens_note::{out}").input("residual branch: keep float until the BN is fixed").run()
    assert not at.exception
    review = review_of(at)
    assert review.choice(out).float_kept and review.choice(out).note.startswith("residual branch")
    # analysed again at once (small model): the node runs in float (float weights), only its input
    # and output are still quantized for their int8 neighbours, so its figure moves
    assert any("kept in float: " + layer in c.value for c in at.caption)
    assert _metrics(at)["1 - cos isolated"] != before
    # the table the exports write carries both (the same build_table the Export page calls)
    from quantviz.export.qv_json import table_to_dict
    from quantviz.review import build_table

    stats = stats_of(at)
    doc = table_to_dict(build_table(stats, review_of(at)))
    assert doc["tensors"][out]["float"] is True and doc["tensors"][out]["note"].startswith("residual branch")


def test_best_method_per_layer_picks_the_highest_cosine() -> None:
    at = _page()
    at.button(key="sens_best").click().run()
    assert not at.exception and not at.error
    picks = next(iter(work_of(at).best_picks.values()))
    assert len(picks) >= 19
    # the message survives the rerun that follows, and the open layer's controls show the new choice
    changed = [s.value for s in at.success if "tensors changed method" in s.value]
    assert len(changed) == 1
    box = next(b for b in at.selectbox if str(b.key).startswith("sens_method::"))
    target = str(box.key).split("::", 1)[1]
    assert box.value == review_of(at).method_of(target)
    review = review_of(at)
    for p in picks.values():
        best = max(p.cosines.values())
        assert p.cosine >= best - 1e-9  # within the tie tolerance, the earlier method stays
        assert p.method in p.cosines
    # the review follows the picks, except on Conv outputs fused with their activation (they take the
    # activation's scale, so their own method would be overridden)
    import onnx

    from quantviz.fusion import analyse

    fused = {g.pre_activation for g in analyse(onnx.load(str(MODEL))).groups}
    assert fused
    for p in picks.values():
        if p.output_tensor in fused:
            assert review.choice(p.output_tensor).method is None
        else:
            assert review.method_of(p.output_tensor) == p.method, p.layer


def test_eq_trace_and_adopt() -> None:
    at = _page()
    at.number_input(key="eq_n").set_value(8)
    at.number_input(key="eq_samples").set_value(16)
    at.button(key="eq_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    at.selectbox(key="sens_layer").set_value("/stem/stem.0/Conv").run()
    assert len(at.get("plotly_chart")) == 4  # error bars, SNR, the layer's parts, EQ trace
    trace = figure(at.get("plotly_chart")[-1])
    ys = array(trace["data"][0]["y"])
    assert ys.size == 3 and ys[2] >= ys[0] - 1e-12  # never worse than its start
    at.button(key="eq_adopt").click().run()
    assert not at.exception and not at.error
    review = review_of(at)
    assert any(c.override is not None for c in review.choices.values())
    # EQ's weight scales reach the table the exports write (the same functions the pages call)
    eq = stored_in(at, work_of(at).last_eq)
    searched = {w: spec["scales"] for w, spec in eq.weights.items() if spec.get("method") == "eq"}
    assert searched and {w: list(v) for w, v in review.weight_scales.items()} == searched
    from quantviz.model import load_model
    from quantviz.review import build_table
    from quantviz.table import apply_model

    table = apply_model(
        build_table(stats_of(at), review), load_model(MODEL), True, weight_overrides=review.weight_scales, weight_method="eq"
    )
    for w, scales in searched.items():
        assert table.weights[w]["scales"] == scales
    # and back to abs-max in one click
    at.button(key="eq_weights_reset").click().run()
    assert review_of(at).weight_scales == {}
