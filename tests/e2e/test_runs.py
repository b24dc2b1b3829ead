"""A person analyses the sample with KL, applies the best method per layer and sees the new
table's end-to-end figure without pressing Analyse again, then opens Runs and compares the two runs."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.e2e.conftest import screenshot, settle
from tests.e2e.flows import after_rerun, go_to, keyed, no_exception, open_home


def _pick(page: Page, label: str, option: str) -> None:
    box = page.get_by_role("combobox", name=label)
    box.click()
    page.keyboard.type(option)
    page.get_by_role("option").filter(has_text=option).first.click()
    after_rerun(page)


def _value(page: Page, label: re.Pattern[str]) -> str:
    box = page.get_by_test_id("stMetric").filter(has=page.get_by_test_id("stMetricLabel").filter(has_text=label)).first
    return box.get_by_test_id("stMetricValue").inner_text().strip()


def test_kl_then_best_method_compared_as_runs(page: Page, app_url: str) -> None:
    open_home(page, app_url)
    settle(page, 180_000)
    go_to(page, "Layer sensitivity", "Layer sensitivity")
    # a small model arrives analysed (with KL, the default method): that analysis is the first run
    expect(page.get_by_text("End to end")).to_be_visible(timeout=300_000)
    settle(page, 300_000)
    end_to_end = re.compile(r": cosine$")
    kl_cosine = float(_value(page, end_to_end))
    expect(page.get_by_text(re.compile(r"Runs \(1 kept"))).to_be_visible()

    # best method per layer: the table changes and its analysis starts by itself
    page.get_by_role("button", name="Find and apply the best method per layer").click()
    expect(page.get_by_text(re.compile(r"tensors changed method: the model is analysed with them|on every layer"))).to_be_visible(
        timeout=600_000
    )
    settle(page, 600_000)
    expect(page.get_by_text(re.compile(r"Runs \(2 kept"))).to_be_visible(timeout=300_000)
    expect(page.get_by_text("This analysis is older")).to_have_count(0)  # the figures are the new table's
    new_cosine = float(_value(page, end_to_end))
    said = page.get_by_text(re.compile(r"best method \S+ against KL \S+: .* cosine"))
    expect(said).to_be_visible()
    assert f"{kl_cosine:.6f} → {new_cosine:.6f}" in said.inner_text()  # markdown draws -> as an arrow
    no_exception(page)
    screenshot(page, "30_best_method_end_to_end")

    # the two runs side by side
    page.get_by_text(re.compile(r"Runs \(2 kept")).click()
    settle(page)
    b_value = _value(page, re.compile(r": cosine, B$"))
    assert b_value == f"{new_cosine:.6f}"
    delta = page.get_by_test_id("stMetric").filter(has_text=re.compile(r": cosine, B")).get_by_test_id("stMetricDelta")
    shown = delta.inner_text().strip()
    assert shown.endswith(" vs A")
    assert abs(float(shown.split()[0]) - (new_cosine - kl_cosine)) <= 1.01e-6  # both cosines were shown rounded to 6 places
    chart = keyed(page, "runs_chart")
    expect(chart.locator(".main-svg").first).to_be_visible(timeout=60_000)
    bars = chart.locator("g.trace.bars").first.locator("path")
    assert bars.count() >= 10  # the sample's 19 layers, measured in both runs
    runs_box = page.get_by_test_id("stExpander").filter(has_text=re.compile(r"Runs \(2 kept"))
    expect(runs_box.get_by_test_id("stDataFrame")).to_be_visible()  # the per-layer deltas (a canvas grid)
    no_exception(page)
    chart.scroll_into_view_if_needed()
    screenshot(page, "31_runs_compared")
