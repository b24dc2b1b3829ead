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
from tests.e2e.flows import (
    after_rerun,
    analyse_samples,
    download_named,
    go_to,
    keyed,
    metric,
    no_exception,
    open_home,
    run_all,
    upload,
)

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


def _upload_and_collect(page: Page, app_url: str, model_path: Path, data_path: Path, n_tensors: int) -> None:
    """On Home: upload the model and its .npz, run the collection, wait until the summary counts
    n_tensors tensors (the bundled sample's summary is on the page before)."""
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

    _upload_and_collect(page, app_url, model_path, data_path, n_tensors)
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


def _end_to_end(page: Page, label: re.Pattern[str]) -> float:
    box = page.get_by_test_id("stMetric").filter(has=page.get_by_test_id("stMetricLabel").filter(has_text=label))
    expect(box).to_have_count(1)
    return float(box.get_by_test_id("stMetricValue").inner_text().strip().split()[0])


def _cos_snr(hover: str) -> tuple[float, float]:
    """(cosine, SNR dB) from a bar's hover text: '1 - cos 3.21e-05 (cos 0.99996789), SNR 41.93 dB'."""
    found = re.search(r"\(cos ([-\d.e+]+)\), SNR ([-\d.e+]+|inf) dB", hover)
    assert found is not None, hover
    return float(found.group(1)), float(found.group(2))


def _warning_count(heading: str) -> int:
    found = re.search(r"Warnings \((\d+)\)", heading)
    assert found is not None, heading
    return int(found.group(1))


def test_big_model_why_sensitive_warning_runs_and_exports(page: Page, app_url: str, tmp_path: Path) -> None:
    """Issue 12 on the 278-layer model: a layer's error split in parts, a domain warning fixed in one
    click, the two analyses compared as runs, two exports named after the model."""
    model_path, data_path = write(tmp_path)
    ops = Counter(n.op_type for n in onnx.load(str(model_path)).graph.node)
    n_layers = sum(ops[k] for k in ("Conv", "Gemm", "MatMul"))
    assert n_layers >= 250
    with np.load(data_path) as z:
        outs = run_all(model_path, z["images"][:1])
    _upload_and_collect(page, app_url, model_path, data_path, 1 + len(outs))

    # a. Layer sensitivity with 8 samples: the worst layer opens with its error split in parts
    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Layer sensitivity").click()
    expect(page.get_by_role("button", name="Analyse")).to_be_visible(timeout=60_000)
    settle(page)
    expect(page.get_by_text("Press Analyse to measure every layer's error")).to_be_visible()  # too big to start by itself
    analyse_samples(page, 8)
    settle(page, 300_000)
    no_exception(page)
    caption = page.get_by_text(re.compile(r"^8 samples of .*; \d+ layers;"))
    expect(caption).to_be_visible()
    measured = re.search(r"^8 samples of '(.+)'; (\d+) layers;", caption.inner_text())
    assert measured is not None and measured.group(1) == data_path.name, caption.inner_text()
    assert n_layers <= int(measured.group(2)) <= ops.total(), caption.inner_text()  # every Conv, Gemm, MatMul; at most every node
    cos_a = _end_to_end(page, re.compile(r": cosine$"))
    expect(page.get_by_text(re.compile(r"Runs \(1 kept"))).to_be_visible()

    expect(keyed(page, "sens_chart").locator(".main-svg").first).to_be_visible(timeout=60_000)
    worst_bar = _plot_data(page, ".st-key-sens_chart")[0]["customdata"][0]  # the chart's top bar: the worst layer
    worst_layer = worst_bar[0] if isinstance(worst_bar, list) else worst_bar
    expect(keyed(page, "sens_layer").get_by_role("combobox")).to_have_value(re.compile("^" + re.escape(worst_layer) + " "))
    expect(page.get_by_text("Why is this layer sensitive?")).to_be_visible()
    parts_chart = keyed(page, "sens_parts")
    expect(parts_chart.locator(".main-svg").first).to_be_visible(timeout=60_000)
    expect(parts_chart.get_by_text(f"What makes {worst_layer} sensitive")).to_be_visible()
    (bars,) = _plot_data(page, ".st-key-sens_parts")
    labels = bars["y"]
    assert labels == ["input only", "weights only", "output only", "all three (isolated)"], labels  # a Conv quantizes all three
    one_minus = dict(zip(labels, bars["x"], strict=True))
    cos_snr = {label: _cos_snr(h) for label, h in zip(labels, bars["customdata"], strict=True)}
    said = page.get_by_text(re.compile(r"The (input|weights|output) part makes it sensitive"))
    expect(said).to_be_visible()
    sentence = said.inner_text()
    found = re.search(r"The (\w+) part makes it sensitive: .* 1 - cos = (\S+), against (\S+) with all three", sentence)
    assert found is not None, sentence
    worst = found.group(1)
    singles = labels[:3]
    # the part named is the one whose error alone is the largest: lowest cosine, lowest SNR, longest bar
    assert min(singles, key=lambda k: cos_snr[k][0]) == f"{worst} only", (worst, cos_snr)
    assert min(singles, key=lambda k: cos_snr[k][1]) == f"{worst} only", (worst, cos_snr)
    assert max(singles, key=lambda k: one_minus[k]) == f"{worst} only", (worst, one_minus)
    # the sentence's numbers are the bars' (1 - cos of the worst part alone, then of all three)
    assert found.group(2) == f"{one_minus[f'{worst} only']:.3e}" and found.group(3).rstrip(".") == f"{one_minus[labels[3]]:.3e}"
    for label in labels:  # each bar's length is 1 - its cosine (floored far below these values)
        assert abs(one_minus[label] - (1 - cos_snr[label][0])) <= 1e-8 + 1e-6 * one_minus[label], (label, one_minus, cos_snr)
    if worst == "weights":  # the weights are per channel unless the person says otherwise: EQ is offered
        expect(page.get_by_text("The weights are already per channel")).to_be_visible()
    else:  # the button that tries each method on that part (not pressed: ~45 s for the six methods here)
        expect(page.get_by_role("button", name=f"Find the method that fixes the {worst}")).to_be_visible()
    no_exception(page)
    parts_chart.scroll_into_view_if_needed()
    screenshot(page, "big_04_why_sensitive")

    # b. the domain warnings of this model; the non-negative one (ReLU, Sigmoid, Clip outputs on symmetric
    # int8) is fixed in one click: the table becomes asymmetric and the warning goes
    box = page.get_by_test_id("stExpander").filter(has_text=re.compile(r"Warnings \(\d+\), each with its fix"))
    heading = box.locator("summary")
    before = _warning_count(heading.inner_text())
    heading.click()
    expect(box.get_by_test_id("stAlertContentWarning")).to_have_count(before)
    expect(box.get_by_test_id("stExpanderDetails").get_by_role("button")).to_have_count(before)  # each with its fix
    warning = box.get_by_test_id("stAlertContentWarning").filter(has_text="non-negative symmetric")
    expect(warning).to_have_count(1)
    warned = warning.inner_text()
    counted = re.search(r"(\d+) tensor\(s\) never go below 0", warned)
    assert counted is not None and int(counted.group(1)) >= 2, warned
    fix = box.get_by_role("button", name="Quantize the table asymmetric (uint8 with a zero point)")
    expect(fix).to_be_visible()
    warning.scroll_into_view_if_needed()
    screenshot(page, "big_05_domain_warnings")
    fix.click()
    after_rerun(page)
    expect(page.get_by_text("Done: Quantize the table asymmetric")).to_be_visible(timeout=60_000)
    expect(page.get_by_text("non-negative symmetric")).to_have_count(0)
    assert _warning_count(heading.inner_text()) < before
    expect(page.get_by_text("This analysis is older: the table changed since")).to_be_visible()
    no_exception(page)

    # c. the asymmetric table analysed is the second run; the two side by side
    page.get_by_role("button", name="Analyse").click()
    expect(page.get_by_text(re.compile(r"Runs \(2 kept"))).to_be_visible(timeout=300_000)
    settle(page, 300_000)
    expect(page.get_by_text("This analysis is older")).to_have_count(0)
    cos_b = _end_to_end(page, re.compile(r": cosine$"))
    page.get_by_text(re.compile(r"Runs \(2 kept")).click()
    settle(page)
    no_exception(page)
    assert _end_to_end(page, re.compile(r": cosine, B$")) == cos_b
    # the two runs of one method tell their tables apart: B's name and settings say asymmetric, A's do not
    expect(keyed(page, "runs_b").get_by_role("combobox")).to_have_value(re.compile(r"^KL \(asymmetric\) \d\d:\d\d:\d\d$"))
    assert "asymmetric" not in keyed(page, "runs_a").get_by_role("combobox").input_value()
    b_settings = page.get_by_text(re.compile(r"UTC; KL .*, asymmetric, per-channel, 8 samples"))
    expect(b_settings).to_have_count(1)  # B's caption only
    expect(b_settings).to_be_visible()
    delta = page.get_by_test_id("stMetric").filter(has_text=re.compile(r": cosine, B")).get_by_test_id("stMetricDelta").inner_text().strip()
    assert delta.endswith(" vs A") and abs(float(delta.split()[0]) - (cos_b - cos_a)) <= 1.01e-6, (delta, cos_a, cos_b)
    expect(page.get_by_test_id("stMetric").filter(has_text=re.compile(r": SNR, B")).get_by_test_id("stMetricDelta")).to_contain_text(" dB vs A")
    counts = page.get_by_text(re.compile(r"tensors have another threshold in B; \d+ layers gain, \d+ lose"))
    expect(counts).to_be_visible()
    changed, won, lost = (int(v) for v in re.findall(r"(\d+) (?:tensors have|layers gain|lose)", counts.inner_text()))
    assert changed >= 1 and won + lost >= 1, counts.inner_text()
    runs_chart = keyed(page, "runs_chart")
    expect(runs_chart.locator(".main-svg").first).to_be_visible(timeout=60_000)
    (gains,) = _plot_data(page, ".st-key-runs_chart")
    shown = [float(g) for g in gains["x"]]
    assert shown == sorted(shown, reverse=True), shown  # largest gain on top
    assert (sum(g > 0 for g in shown) >= 1) == (won >= 1) and sum(g > 0 for g in shown) <= won
    assert (sum(g < 0 for g in shown) >= 1) == (lost >= 1) and sum(g < 0 for g in shown) <= lost
    runs_box = page.get_by_test_id("stExpander").filter(has_text=re.compile(r"Runs \(2 kept"))
    expect(runs_box.get_by_test_id("stDataFrame")).to_be_visible()  # the per-layer deltas
    no_exception(page)
    runs_chart.scroll_into_view_if_needed()
    screenshot(page, "big_06_runs_compared")
    page.set_viewport_size({"width": 1400, "height": 1000})  # the next page's shot as tall as that page, not this one

    # d. Export: two formats whose default names are alike come down under distinct names, the model's
    go_to(page, "Export", "Export")
    stem = model_path.stem
    trt = download_named(page, "export_trt", tmp_path)
    ort_cache = download_named(page, "export_ort-cache", tmp_path)
    assert trt.name != ort_cache.name, (trt.name, ort_cache.name)
    assert trt.name.startswith(stem + ".") and ort_cache.name.startswith(stem + "."), (trt.name, ort_cache.name)
    assert trt.stat().st_size > 0 and ort_cache.stat().st_size > 0 and trt.read_bytes() != ort_cache.read_bytes()
    keyed(page, "export_trt").scroll_into_view_if_needed()
    no_exception(page)
    screenshot(page, "big_07_export_names")
