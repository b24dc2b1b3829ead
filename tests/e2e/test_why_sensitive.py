"""A person asks why a layer is sensitive: the parts of its error, the method that fixes the worst part,
a domain warning fixed in one click; on the 308-layer sample, a long analysis shows its phase, count
and time left and is cancelled, and the chart of every layer repeats its axis on top."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.e2e.conftest import screenshot, settle
from tests.e2e.flows import after_rerun, analyse_samples, go_to, keyed, no_exception, open_home


def _pick(page: Page, label: str, option: str) -> None:
    box = page.get_by_role("combobox", name=label)
    box.click()
    page.keyboard.type(option)
    page.get_by_role("option").filter(has_text=option).first.click()
    after_rerun(page)


def test_parts_of_a_layer_its_fix_and_a_warning(page: Page, app_url: str) -> None:
    open_home(page, app_url)
    go_to(page, "Layer sensitivity", "Layer sensitivity")
    expect(page.get_by_text("End to end")).to_be_visible(timeout=90_000)
    settle(page)
    _pick(page, "Layer (worst first)", "/res1/res1.0/Conv")
    expect(page.get_by_text("Why is this layer sensitive?")).to_be_visible()
    parts = page.get_by_test_id("stPlotlyChart").filter(has_text="What makes /res1/res1.0/Conv sensitive")
    expect(parts.locator(".main-svg").first).to_be_visible()
    for label in ("input only", "weights only", "output only", "all three (isolated)"):
        expect(parts.get_by_text(label)).to_be_visible()
    said = page.get_by_text(re.compile(r"The (input|weights|output) part makes it sensitive"))
    expect(said).to_be_visible()
    found = re.search(r"The (\w+) part", said.inner_text())
    assert found is not None
    worst = found.group(1)
    # the layer's own warning (its Relu output never goes below 0) with its fix beside it
    expect(page.get_by_text("non-negative symmetric").first).to_be_visible()
    fix = page.get_by_role("button", name="Quantize the table asymmetric (uint8 with a zero point)").last  # the layer's own
    expect(fix).to_be_visible()
    if worst in ("input", "output"):
        page.get_by_role("button", name=f"Find the method that fixes the {worst}").click()
        after_rerun(page)
        expect(keyed(page, "sens_fix_apply").locator("button")).to_be_visible(timeout=60_000)
    no_exception(page)
    keyed(page, "sens_parts").scroll_into_view_if_needed()
    screenshot(page, "20_why_sensitive")
    # the warning's fix in one click: the table becomes asymmetric, the warning goes
    fix.click()
    after_rerun(page)
    expect(page.get_by_text("Done: Quantize the table asymmetric")).to_be_visible(timeout=60_000)
    expect(page.get_by_text("non-negative symmetric")).to_have_count(0)
    no_exception(page)


def test_big_model_progress_cancel_and_axis_on_top(page: Page, app_url: str) -> None:
    open_home(page, app_url)
    _pick(page, "Sample model", "digits_resnet")
    expect(page.get_by_text(re.compile("Current model: .*digits_resnet"))).to_be_visible(timeout=180_000)
    settle(page, 180_000)
    go_to(page, "Layer sensitivity", "Layer sensitivity")
    # a long analysis: its phase, samples done of all, time left; Cancel stops it and nothing is replaced
    page.get_by_role("button", name="Analyse").click()
    bar = page.get_by_test_id("stProgress")
    expect(bar.get_by_text(re.compile(r"Analysis of every layer and its parts: \d+ / \d+ samples · about .* left"))).to_be_visible(timeout=120_000)
    screenshot(page, "21_big_model_progress")
    keyed(page, "sens_cancel_analyse").locator("button").first.click()
    expect(page.get_by_text("Analysis cancelled: what was shown before is kept.")).to_be_visible(timeout=120_000)
    settle(page)
    expect(page.get_by_text("End to end")).to_have_count(0)  # nothing was there before, nothing is now
    # a short analysis, then every layer in one chart: its value axis on top too
    analyse_samples(page, 8)
    settle(page, 300_000)
    keyed(page, "sens_limit").get_by_role("slider").focus()
    page.keyboard.press("End")
    after_rerun(page)
    chart = page.get_by_test_id("stPlotlyChart").first
    expect(chart.locator(".main-svg").first).to_be_visible(timeout=60_000)
    assert chart.locator("g.trace.bars").first.locator("path").count() >= 250
    assert chart.locator("g.x2tick").count() >= 3 and chart.locator("g.xtick").count() >= 3  # top and bottom
    top_tick = chart.locator("g.x2tick").first.bounding_box()
    first_bar = chart.locator("g.trace.bars").first.locator("path").first.bounding_box()
    assert top_tick is not None and first_bar is not None and 0 < first_bar["y"] - top_tick["y"] < 80  # bars start under the top axis
    legend = chart.locator("g.legend").bounding_box()
    title = chart.locator("text.gtitle").bounding_box()
    assert legend is not None and title is not None and legend["y"] >= title["y"] + title["height"] - 1  # under the title
    no_exception(page)
    page.set_viewport_size({"width": 1400, "height": 1000})
    chart.scroll_into_view_if_needed()
    page.screenshot(path=str(screenshot.__globals__["SHOTS"] / "22_all_layers_top_axis.png"))
