"""A person runs a small mixed-precision search on the sample, clicks a point of its trade-off chart and
sees that step's layers kept in float in the review; a later rerun does not apply the old click again.

The oracle is the search's own file (the JSON the page offers, read with json alone): its trace says
which layers each step took out of int8."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect

from tests.e2e.conftest import screenshot, settle
from tests.e2e.flows import after_rerun, download, go_to, keyed, no_exception, open_home


def _in_review(page: Page) -> str:
    box = page.get_by_test_id("stMarkdown").filter(has_text="In the review now:")
    expect(box).to_have_count(1)
    return box.inner_text().strip()


def _layers_named(text: str) -> set[str]:
    m = re.search(r"the outputs of (.*) kept in float\.", text)
    return set(m.group(1).split(", ")) if m else set()


def _points(page: Page) -> list[dict[str, Any]]:
    """Every marker the chart draws, as plotly holds it: curve, index within the curve, x, y, customdata."""
    return list(
        page.get_by_test_id("stPlotlyChart").first.locator(".js-plotly-plot").evaluate(
            """el => el.data.flatMap((t, c) => (t.mode || '').includes('markers')
                ? t.x.map((x, j) => ({curve: c, index: j, x: x, y: t.y[j], step: t.customdata[j]})) : [])"""
        )
    )


def _y_range(page: Page) -> tuple[float, float]:
    lo, hi = page.get_by_test_id("stPlotlyChart").first.locator(".js-plotly-plot").evaluate("el => el._fullLayout.yaxis.range")
    return float(lo), float(hi)


def test_click_a_tradeoff_point_applies_its_step(page: Page, app_url: str, tmp_path: Path) -> None:
    open_home(page, app_url)
    go_to(page, "Mixed precision", "Mixed precision to a target")
    # a small search: all in int8 the sample has about 45 dB end to end, 50 dB needs a few layers in float
    keyed(page, "mixed_kind").get_by_role("combobox").click()
    page.get_by_role("option", name="snr", exact=True).click()
    after_rerun(page)
    for label, value in (("SNR at least (dB)", "50"), ("Samples", "128")):
        box = page.get_by_label(label)
        box.fill(value)
        box.press("Enter")
        after_rerun(page)
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.get_by_text("In the review now:")).to_be_visible(timeout=300_000)
    settle(page)
    no_exception(page)
    assert _in_review(page).endswith("no layer of this search kept in float.")

    doc = json.loads(download(page, "mixed_json", tmp_path / "mixed.json"))["settings"]["mixed"]
    trace = doc["trace"]
    assert doc["target"].startswith("snr") and len(trace) >= 3
    # every step is one marker, placed at (layers out of int8, SNR) as the trace says
    points = _points(page)
    assert sorted(p["step"] for p in points) == list(range(len(trace)))
    for p in points:
        assert p["x"] == trace[p["step"]]["layers_out"] and abs(p["y"] - trace[p["step"]]["value"]) < 1e-9
    # click a step with layers out of int8 that is not the final one, drawn in the chart where no other step is
    places = [(s["layers_out"], s["value"]) for s in trace]
    final = set(doc["fallbacks"])
    lo, hi = _y_range(page)
    choice = next(
        p
        for p in sorted(points, key=lambda p: p["step"])
        if trace[p["step"]]["fallbacks"] and set(trace[p["step"]]["fallbacks"]) != final
        and places.count(places[p["step"]]) == 1 and lo < p["y"] < hi
    )
    step = choice["step"]
    want = set(trace[step]["fallbacks"])
    screenshot(page, "50_mixed_searched")
    marker = page.get_by_test_id("stPlotlyChart").first.locator("g.trace.scatter").nth(choice["curve"]).locator("path.point")
    marker.nth(choice["index"]).click(force=True)
    expect(page.get_by_text(f"Step {step} applied to the review")).to_be_visible(timeout=60_000)
    settle(page)
    no_exception(page)
    now = _in_review(page)
    assert now.startswith(f"In the review now: step {step},"), now
    assert _layers_named(now) == want, (now, want)
    expect(keyed(page, "mixed_step").get_by_role("combobox")).to_have_value(re.compile(rf"^step {step}:"))  # the box follows
    screenshot(page, "51_mixed_clicked")

    # the button still applies a step (here all int8), and a later rerun does not apply the old click again
    keyed(page, "mixed_step").get_by_role("combobox").click()
    page.get_by_role("option", name=re.compile(r"^step 0:")).click()
    after_rerun(page)
    page.get_by_role("button", name="Apply this step").click()
    expect(page.get_by_text("Step 0 applied to the review")).to_be_visible(timeout=60_000)
    settle(page)
    assert _in_review(page).endswith("no layer of this search kept in float.")
    page.get_by_text("MACs", exact=True).click()  # the x axis: a rerun, and the chart redrawn
    after_rerun(page)
    no_exception(page)
    assert _in_review(page).endswith("no layer of this search kept in float.")
    expect(page.get_by_text(f"Step {step} applied to the review")).to_have_count(0)
