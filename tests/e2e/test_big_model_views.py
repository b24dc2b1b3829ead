"""A person uploads a 278-layer, 760-tensor model (generated: tests/big_model.py) and walks Home's
overview picture and the graph context: every op type in the summary table without an inner scroll
box, the worst clipped tensors first, a click on a bar opens that tensor, a click on a graph node opens
the next one. Screenshots are kept in tests/e2e/screenshots/."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from playwright.sync_api import Page, expect

from tests.big_model import write
from tests.e2e.conftest import screenshot, settle
from tests.e2e.flows import after_rerun, keyed, metric, no_exception, open_home, run_all, upload

pytestmark = pytest.mark.slow


def _plot_data(page: Page, selector: str) -> list[dict[str, Any]]:
    """The traces plotly drew in a chart (the graph div keeps them as .data)."""
    traces: list[dict[str, Any]] = page.evaluate(
        """(sel) => { const gd = document.querySelector(sel + ' .js-plotly-plot');
            return gd.data.map(t => ({y: t.y ? Array.from(t.y) : null, x: t.x ? Array.from(t.x) : null,
                                       z: t.z ? Array.from(t.z, r => Array.from(r)) : null,
                                       customdata: t.customdata ? Array.from(t.customdata, r => Array.isArray(r) ? Array.from(r) : r) : null})); }""",
        selector,
    )
    return traces


def test_big_model_overview_and_graph_context(page: Page, app_url: str, tmp_path: Path) -> None:
    model_path, data_path = write(tmp_path)
    proto = onnx.load(str(model_path))
    ops = Counter(n.op_type for n in proto.graph.node)
    layers = sum(ops[k] for k in ("Conv", "Gemm", "MatMul"))
    assert layers >= 250
    with np.load(data_path) as z:
        images = z["images"]
    outs = run_all(model_path, images[:8])  # the oracle: plain onnxruntime, one batch of 8
    n_tensors = 1 + len(outs)

    open_home(page, app_url)
    page.get_by_test_id("stRadio").first.get_by_text("Upload a model", exact=True).click()
    after_rerun(page)
    upload(page, "model_upload", model_path)
    keyed(page, "data_source").get_by_text("Upload .npz / .npy", exact=True).click()
    after_rerun(page)
    upload(page, "data_upload", data_path)
    keyed(page, "run").locator("button").click()
    expect(page.get_by_test_id("stMetricValue").filter(has_text=str(n_tensors)).first).to_be_visible(timeout=120_000)
    settle(page)
    no_exception(page)
    assert metric(page, "Tensors") == str(n_tensors)
    assert metric(page, "Op types") == str(len(ops) + 1)  # and the graph input

    # the op-type table shows every row: its grid does not scroll inside itself
    table = page.get_by_test_id("stDataFrame").first  # the op-type table (the only one shown on Home)
    expect(table).to_be_visible()
    table.scroll_into_view_if_needed()
    inner = table.evaluate(
        "el => { const s = el.querySelector('.dvn-scroller'); return s ? [s.scrollHeight, s.clientHeight] : [0, 0]; }"
    )
    assert inner[0] <= inner[1] + 2, inner

    # the overview picture waits for a click on a model this size, then draws the worst 40 first
    keyed(page, "home_overview_run").locator("button").click()
    chart = keyed(page, "home_overview")
    expect(chart.locator(".main-svg").first).to_be_visible(timeout=180_000)
    settle(page, timeout=180_000)
    no_exception(page)
    bars, heat = _plot_data(page, ".st-key-home_overview")
    assert len(bars["customdata"]) == 40
    kl = [row[2] for row in heat["z"]]  # columns MinMax, EMA, KL, ...: log10 of the clipped %
    assert all(a >= b - 1e-12 for a, b in zip(kl, kl[1:], strict=False)), kl
    # shapes as seen in the collection (8 samples a run), against onnxruntime
    for row in bars["customdata"][:10]:
        name, seen, declared = row[0], row[3], row[4]
        ref = outs[name].shape if name in outs else images[:8].shape
        assert seen == "[" + ", ".join(str(d) for d in ref) + "]", (name, seen)
        assert declared != seen and not declared.strip("[]").split(", ")[0].isdigit(), declared  # symbolic batch
    screenshot(page, "big_01_home_overview")

    # a click on the third bar opens that tensor on Distributions, with its graph context
    picked = bars["customdata"][2][0]
    bar = chart.locator("g.trace.bars").first.locator("path").nth(2)
    bar.scroll_into_view_if_needed()
    box = bar.bounding_box()
    assert box is not None
    # a bar on a log axis starts far left of the plot: click its visible end
    page.mouse.move(box["x"] + box["width"] - 4, box["y"] + box["height"] / 2)
    page.mouse.click(box["x"] + box["width"] - 4, box["y"] + box["height"] / 2)
    expect(page.get_by_role("heading", name="Distributions").first).to_be_visible(timeout=60_000)
    settle(page)
    no_exception(page)
    expect(keyed(page, "dist_tensor").get_by_role("combobox")).to_have_value(re.compile("^" + re.escape(picked) + " "))
    graph = page.locator('[class*="st-key-dist_graph"]')
    expect(graph.locator(".main-svg").first).to_be_visible(timeout=60_000)
    screenshot(page, "big_02_distributions_graph_context")

    # the graph holds the producers and consumers two hops each way; a click on a node opens its tensor
    edges, tensors, nodes = _plot_data(page, '[class*="st-key-dist_graph"]')
    levels = sorted({int(x) for x in nodes["x"]})
    assert levels[0] >= -2 and levels[-1] <= 2 and 0 in levels
    target = next(i for i, (x, t) in enumerate(zip(nodes["x"], nodes["customdata"], strict=True)) if int(x) == -1 and t)
    opened = nodes["customdata"][target]
    graph.locator("g.trace.scatter").nth(2).locator("path.point").nth(target).click(force=True)
    after_rerun(page)
    no_exception(page)
    expect(keyed(page, "dist_tensor").get_by_role("combobox")).to_have_value(re.compile("^" + re.escape(opened) + " "))
    expect(page.locator('[class*="st-key-dist_graph"]').locator(".main-svg").first).to_be_visible()
    screenshot(page, "big_03_graph_node_opened")
