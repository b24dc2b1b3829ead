"""AppTest of the Mixed precision page: a search on the sample, its trade-off chart, a step applied to the review."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

from tests.app.figs import array, figure, review_of

ROOT = Path(__file__).resolve().parents[2]


def _page() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300).run()
    assert not at.exception
    at.switch_page("pages/5_Mixed_precision.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def test_search_draws_the_tradeoff_and_applies_a_step() -> None:
    at = _page()
    assert at.selectbox(key="mixed_kind").value == "top1-drop"  # the sample has labels
    # the sample all in int8 has 44.6 dB end to end on these samples: 50 dB needs some layers out of int8
    at.selectbox(key="mixed_kind").set_value("snr").run()
    at.number_input(key="mixed_value::snr").set_value(50.0).run()
    at.number_input(key="mixed_samples").set_value(128).run()
    at.button(key="mixed_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    fig = figure(at.get("plotly_chart")[0])
    steps = [int(c) for t in fig["data"] if "customdata" in t for c in array(t["customdata"])]
    assert sorted(steps) == list(range(len(steps))) and len(steps) >= 2  # every step is a point
    line = [s for s in fig["layout"]["shapes"] if s.get("type") == "line"]
    assert line and line[0]["y0"] == 50.0  # the target drawn as a line
    metrics = {m.label: m.value for m in at.metric}
    n_out = int(metrics["layers out of int8"])
    assert n_out >= 1 and metrics["after the search"] != metrics["all int8"]
    table = at.dataframe[0].value  # the final layers (the trace is the second)
    assert len(table) == n_out and all(table["why"].str.len() > 0)
    # apply the final configuration: its layers' output tensors are kept in float in the review
    at.button(key="mixed_apply").click().run()
    assert not at.exception
    review = review_of(at)
    kept = {n for n, c in review.choices.items() if c.float_kept}
    assert kept == set(table["output tensor"])
    now = next(m.value for m in at.markdown if "In the review now" in m.value)
    assert "the final configuration" in now and all(layer in now for layer in table["layer"])
    # another step (all int8) releases them
    at.selectbox(key="mixed_step").set_value(0).run()
    at.button(key="mixed_apply_step").click().run()
    assert not {n for n, c in review_of(at).choices.items() if c.float_kept}
    assert any("no layer of this search kept in float" in m.value for m in at.markdown)
    assert np.isfinite(float(metrics["all int8"]))
