"""A person opens the app, picks a tensor, sees the chart, downloads the table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from playwright.sync_api import Page, expect

from tests.e2e.conftest import screenshot, settle

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "sample_models" / "digits_cnn.onnx"
DATA = ROOT / "sample_models" / "digits_calib.npz"


def _absmax_of_all(model_path: Path, data: np.ndarray) -> dict[str, float]:
    """Abs-max of every node output, from a plain onnxruntime session (independent oracle)."""
    m = onnx.load(str(model_path))
    names = [o for n in m.graph.node for o in n.output]
    del m.graph.output[:]
    m.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run(names, {"input": data})
    return {n: float(np.abs(o).max()) for n, o in zip(names, outs, strict=True)}


def test_open_pick_tensor_see_chart_download_table(page: Page, app_url: str, tmp_path: Path) -> None:
    page.goto(app_url)
    expect(page.get_by_text("Summary")).to_be_visible(timeout=90_000)
    settle(page)
    expect(page.get_by_test_id("stException")).to_have_count(0)
    screenshot(page, "01_home")

    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Distributions").click()
    expect(page.get_by_test_id("stPlotlyChart").first).to_be_visible(timeout=60_000)
    settle(page)

    # pick a ReLU output from the searchable list
    page.get_by_test_id("stSelectbox").first.click()
    page.keyboard.type("Relu")
    option = page.get_by_role("option").first
    chosen = option.inner_text().split("·")[0].strip()
    option.click()
    settle(page)
    expect(page.get_by_text(chosen).first).to_be_visible()
    charts = page.get_by_test_id("stPlotlyChart")
    # the tensor's histogram first, then its graph context (the neighbourhood and the layer's histograms)
    expect(charts).to_have_count(3)
    expect(charts.first.locator(".main-svg").first).to_be_visible()
    expect(charts.first.get_by_text("MinMax", exact=False).first).to_be_visible()
    expect(page.get_by_test_id("stException")).to_have_count(0)
    screenshot(page, "02_distributions")

    # download the MinMax table and check it against plain onnxruntime
    page.get_by_test_id("stSelectbox").nth(1).click()
    page.get_by_role("option", name="MinMax", exact=True).click()
    settle(page)
    with page.expect_download() as dl:
        page.get_by_test_id("stDownloadButton").locator("button").click()
    path = tmp_path / "table.json"
    dl.value.save_as(path)
    table = json.loads(path.read_text())
    assert table["format"] == "quantviz-calibration"
    expected = _absmax_of_all(MODEL, np.load(DATA)["input"])
    for name, want in expected.items():
        got = table["tensors"][name]
        assert got["method"] == "minmax"
        # A Conv(+BN) output fused with its ReLU takes the post-activation scale (engines fuse them);
        # its own range is kept beside it.
        source = got.get("extra", {}).get("scale_from")
        if source is not None:
            own = got["extra"]["unshared"]
            assert abs(own["threshold"] - want) <= 1e-6 * max(want, 1.0), name
            assert source in got["shared_with"]
            want = expected[source]
        assert abs(got["threshold"] - want) <= 1e-6 * max(want, 1.0), name
        assert abs(got["scale"] - np.float32(want) / np.float32(127)) <= 1e-9
