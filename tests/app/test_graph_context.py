"""AppTest of the graph context (ui/graph_panel.py) on Distributions and Layer sensitivity: the
neighbourhood against the model's own nodes, the clip lines against the table, the weight ranges
against numpy on the initializer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from streamlit.testing.v1 import AppTest

from quantviz.table import CalibrationTable
from tests.app.figs import array, figure, session_of, stats_of, work_of

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_MODEL = ROOT / "sample_models" / "digits_cnn.onnx"


def _figs(at: AppTest) -> dict[str, dict[str, Any]]:
    return {figure(c)["layout"]["title"]["text"]: figure(c) for c in at.get("plotly_chart")}


def _graph(at: AppTest) -> dict[str, Any]:
    found = [f for t, f in _figs(at).items() if t.startswith("Graph context of")]
    assert len(found) == 1
    return found[0]


def _nodes_by_level(fig: dict[str, Any]) -> dict[int, set[str]]:
    nodes = fig["data"][2]
    out: dict[int, set[str]] = {}
    for x, text in zip(array(nodes["x"]), nodes["hovertext"], strict=True):
        out.setdefault(int(x), set()).add(text.split("<br>")[0].split(" ", 1)[1])
    return out


def _current_table(at: AppTest) -> CalibrationTable:
    s = session_of(at)
    w = work_of(at)
    keys = [k for k in list(s.store.keys()) if getattr(k, "kind", "") == "review table" and k.review == w.review.fingerprint()]
    assert keys
    table: CalibrationTable = s.store.get(keys[-1])
    return table


def test_distributions_shows_two_hops_each_way_and_the_clip_points() -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("pages/1_Distributions.py").run()
    at.selectbox(key="dist_tensor").set_value("/Add_output_0").run()
    assert not at.exception
    proto = onnx.load(str(SAMPLE_MODEL))
    floats = set(stats_of(at).tensors)
    producer = {o: n for n in proto.graph.node for o in n.output}
    users: dict[str, list[onnx.NodeProto]] = {}
    for n in proto.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    centre = producer["/Add_output_0"]
    up1 = {producer[i].name for i in centre.input if i in floats and i in producer}
    up2 = {producer[i].name for p in up1 for i in next(n for n in proto.graph.node if n.name == p).input if i in floats and i in producer}
    down1 = {u.name for o in centre.output for u in users.get(o, [])}
    down2 = {u.name for d in down1 for o in next(n for n in proto.graph.node if n.name == d).output for u in users.get(o, [])}
    levels = _nodes_by_level(_graph(at))
    assert levels[0] == {centre.name}
    assert levels[-1] == up1 and levels[-2] == up2 - up1
    assert levels[1] == down1 and levels[2] == down2 - down1

    # the histograms of the Add's inputs and output carry the current table's clip points
    table = _current_table(at)
    drawn = {f["layout"]["meta"]["tensor"]: f["layout"]["meta"]["role"] for t, f in _figs(at).items() if t.startswith(("input:", "output:"))}
    # the inputs beside the page's own histogram of the tensor (drawn above, with every method)
    assert drawn == {i: "input" for i in centre.input if i in floats}
    for title, fig in _figs(at).items():
        if title.startswith(("input:", "output:")):
            name = fig["layout"]["meta"]["tensor"]
            e = table.tensors[name]
            xs = sorted({s["x0"] for s in fig["layout"]["shapes"] if s["type"] == "line"})
            assert xs == sorted({e.min, e.max}), (name, xs, e.min, e.max)


def test_layer_view_shows_the_gemm_weights_with_each_channels_clip() -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    at.switch_page("pages/3_Layer_sensitivity.py").run()
    assert not at.exception
    at.selectbox(key="sens_layer").set_value("/fc/Gemm").run()
    assert not at.exception
    levels = _nodes_by_level(_graph(at))
    assert levels[0] == {"/fc/Gemm"} and levels[-1] == {"/Flatten"} and levels[1] == {"/Softmax"}
    proto = onnx.load(str(SAMPLE_MODEL))
    w = numpy_helper.to_array(next(i for i in proto.graph.initializer if i.name == "fc.weight"))
    gemm = next(n for n in proto.graph.node if n.name == "/fc/Gemm")
    trans_b = next((a.i for a in gemm.attribute if a.name == "transB"), 0)
    per_out = np.abs(w).max(axis=1 if trans_b else 0)  # output channels: rows of B^T
    weights = next(f for t, f in _figs(at).items() if t.startswith("weights fc.weight"))
    np.testing.assert_allclose(array(weights["data"][0]["y"]), per_out, rtol=1e-6)
    # abs-max weight scales: each channel's clip point is its own abs-max (float32 rounding)
    np.testing.assert_allclose(array(weights["data"][1]["y"]), per_out, rtol=1e-6)
    assert work_of(at).layer == "/fc/Gemm"
    # the layer view draws its input and output with the table's clip points
    table = _current_table(at)
    drawn = {f["layout"]["meta"]["tensor"]: f for t, f in _figs(at).items() if t.startswith(("input:", "output:"))}
    assert set(drawn) == {"/Flatten_output_0", "/fc/Gemm_output_0"}
    for name, fig in drawn.items():
        e = table.tensors[name]
        assert sorted(s["x0"] for s in fig["layout"]["shapes"] if s["type"] == "line") == sorted([e.min, e.max]), name
