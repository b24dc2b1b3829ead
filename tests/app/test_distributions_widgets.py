"""AppTest of the Distributions page's widgets: log scale, signed/|x|, methods drawn, per-tensor
weights, default method. Expected values come from the statistics or plain numpy, not from the page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from streamlit.testing.v1 import AppTest

from tests.app.figs import array, figure, review_of, stats_of, work_of

ROOT = Path(__file__).resolve().parents[2]
TENSOR = "/Relu_output_0"


def _page() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not at.exception
    work_of(at).tensor = TENSOR
    at.switch_page("pages/1_Distributions.py").run()
    assert not at.exception
    return at


def _hist(at: AppTest) -> dict[str, Any]:
    return figure(at.get("plotly_chart")[0])


def _lines(fig: dict[str, Any]) -> list[float]:
    return [s["x0"] for s in fig["layout"]["shapes"] if s["type"] == "line"]


def test_log_signed_and_methods_drawn() -> None:

    at = _page()
    stats = stats_of(at)
    t = stats.tensors[TENSOR]
    fig = _hist(at)
    assert fig["layout"]["yaxis"]["type"] == "log"
    drawn = at.multiselect(key="dist_methods").value
    assert len(_lines(fig)) == 2 * len(drawn)  # signed: both clip points of every method
    at.toggle(key="dist_log").set_value(False).run()
    assert _hist(at)["layout"]["yaxis"]["type"] == "linear"
    # |x|: one line per method, and the bars are the |x| histogram (counts sum to the elements seen)
    at.toggle(key="dist_signed").set_value(False).run()
    fig = _hist(at)
    assert len(_lines(fig)) == len(drawn)
    assert array(fig["data"][0]["y"]).sum() == t.abs_hist.counts.sum() == t.count
    assert min(array(fig["data"][0]["x"])) >= 0
    # drop every method but MinMax: one line, at the tensor's abs-max
    at.multiselect(key="dist_methods").set_value(["minmax"]).run()
    assert _lines(_hist(at)) == [t.absmax]


def test_per_tensor_weights_give_one_scale_and_the_default_method_reaches_the_review() -> None:
    import onnx
    from onnx import numpy_helper

    at = _page()
    m = onnx.load(str(ROOT / "sample_models" / "digits_cnn.onnx"))
    bn = next(n for n in m.graph.node if n.op_type == "BatchNormalization")
    work_of(at).tensor = bn.output[0]
    at.run()
    at.toggle(key="per_channel").set_value(False).run()
    assert not at.exception
    weights = [figure(c) for c in at.get("plotly_chart") if figure(c)["layout"]["xaxis"]["title"]["text"] == "output channel"]
    scales = array(weights[0]["data"][1]["y"])
    assert np.all(scales == scales[0])  # one scale for the whole tensor
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    conv = next(n for n in m.graph.node if n.output[0] == bn.input[0])
    w = inits[conv.input[1]].astype(np.float64)
    gamma, _, _, var = (inits[n].astype(np.float64) for n in bn.input[1:5])
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    folded = w * (gamma / np.sqrt(var + eps))[:, None, None, None]
    np.testing.assert_allclose(scales[0], np.abs(folded).max() / 127, rtol=1e-6)
    at.selectbox(key="table_method").set_value("percentile").run()
    assert review_of(at).default_method == "percentile"
    at.switch_page("pages/2_KL_curves.py").run()
    at.switch_page("pages/1_Distributions.py").run()
    assert at.selectbox(key="table_method").value == "percentile"  # survives a page switch
