"""AppTest of the KL curves page: the curve, its argmin, and trying a threshold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

from tests.app.figs import array, figure, review_of, stats_of, work_of

ROOT = Path(__file__).resolve().parents[2]


def _kl_page() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90).run()
    assert not at.exception
    work_of(at).tensor = "/Relu_output_0"  # a dense post-ReLU distribution of the sample
    at.switch_page("pages/2_KL_curves.py").run()
    assert not at.exception
    return at


def test_curve_has_its_minimum_marked() -> None:
    at = _kl_page()
    fig = figure(at.get("plotly_chart")[0])
    xs, ys = array(fig["data"][0]["x"]), array(fig["data"][0]["y"])
    assert xs.size > 100
    marked_x = array(fig["data"][1]["x"])[0]
    # the marked point is the curve's minimum (ties: the largest threshold)
    best = xs[len(ys) - 1 - int(np.argmin(ys[::-1]))]
    assert abs(marked_x - best) <= 1e-9 * max(1.0, best) or marked_x <= xs.max()
    assert abs(ys[np.argmin(np.abs(xs - marked_x))] - ys.min()) < 1e-12


def test_typed_threshold_moves_slider_and_metrics_then_sticks_in_review() -> None:
    at = _kl_page()
    absmax = at.slider(key="kl_slider").max
    at.number_input(key="kl_typed").set_value(absmax / 2).run()
    assert not at.exception
    assert abs(at.slider(key="kl_slider").value - absmax / 2) < 1e-9
    clipped = {m.label: m.value for m in at.metric}["clipped mass"]
    at.number_input(key="kl_typed").set_value(absmax).run()
    assert {m.label: m.value for m in at.metric}["clipped mass"] == "0.000%"
    assert clipped != "0.000%"
    at.button(key="kl_use").click().run()
    assert not at.exception
    review = review_of(at)
    tensor = work_of(at).tensor
    assert review.choice(tensor).override == absmax


def test_both_kl_methods_drawn_with_their_minima_and_log_axis() -> None:
    from quantviz.calib import METHODS, MethodConfig

    at = _kl_page()
    fig = figure(at.get("plotly_chart")[0])
    names = [d["name"] for d in fig["data"] if d.get("mode") == "lines"]
    assert names == ["KL (TensorRT entropy)", "KL (ncnn, smoothed)"]
    stats_tensor = stats_of(at).tensors[work_of(at).tensor]
    want = METHODS["kl_ncnn"](stats_tensor, MethodConfig()).threshold
    assert array(fig["data"][3]["x"])[0] == want  # ncnn's own minimum marked on its curve
    assert any("ncnn" in c.value for c in at.caption)
    assert fig["layout"]["yaxis"].get("type", "linear") == "linear"
    at.toggle(key="kl_log_y").set_value(True).run()
    assert not at.exception
    fig = figure(at.get("plotly_chart")[0])
    assert fig["layout"]["yaxis"]["type"] == "log"


def test_typed_threshold_below_first_candidate_shows_its_own_kl() -> None:
    from quantviz.calib import MethodConfig
    from quantviz.calib.kl_at import kl_at

    at = _kl_page()
    fig = figure(at.get("plotly_chart")[0])
    first = float(array(fig["data"][0]["x"])[0])
    typed = first * 0.4
    at.number_input(key="kl_typed").set_value(typed).run()
    assert not at.exception
    shown = {m.label: m.value for m in at.metric}["KL at this threshold"]
    stats_tensor = stats_of(at).tensors[work_of(at).tensor]
    at_typed = kl_at(stats_tensor, typed, MethodConfig(), "kl")
    at_first = kl_at(stats_tensor, first, MethodConfig(), "kl")
    assert shown == f"{at_typed:.4g}" and at_typed > at_first
