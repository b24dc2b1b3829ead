"""AppTest of the Runs section of Layer sensitivity: the analysis on arrival is run 1; best method per layer
re-analyses by itself (run 2, shown without pressing Analyse); the runs' end-to-end change and per-layer
deltas shown equal the two stored analyses' own figures; a run can be renamed; runs reach the review file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from streamlit.testing.v1 import AppTest

from tests.app.figs import array, figure, review_of, stats_of, stored_in, work_of

ROOT = Path(__file__).resolve().parents[2]


def _page() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=240).run()
    assert not at.exception
    at.switch_page("pages/3_Layer_sensitivity.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _frame(at: AppTest, column: str) -> pd.DataFrame:
    frame: pd.DataFrame = next(d.value for d in at.dataframe if column in d.value.columns)
    return frame


def test_best_method_reanalyses_and_runs_compare_the_two_analyses() -> None:
    at = _page()
    w = work_of(at)
    assert len(w.runs) == 1 and w.runs[0].name.startswith("KL ")
    first = stored_in(at, w.last_analysis)
    at.button(key="sens_best").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    w = work_of(at)
    # the new table was analysed without pressing Analyse: the analysis shown is the current review's
    assert len(w.runs) == 2 and w.runs[1].name.startswith("best method ")
    assert w.last_analysis.review == review_of(at).fingerprint()
    second = stored_in(at, w.last_analysis)
    (o1,), (o2,) = first.outputs, second.outputs
    metrics = {m.label: m for m in at.metric}
    assert metrics[f"{o2.output}: cosine"].value == f"{o2.figures.cosine:.6f}"
    # the Runs section compares run 1 (A) with run 2 (B) by default
    assert at.selectbox(key="runs_a").value == w.runs[0].id and at.selectbox(key="runs_b").value == w.runs[1].id
    cos_b = metrics[f"{o2.output}: cosine, B"]
    assert cos_b.value == f"{o2.figures.cosine:.6f}"
    assert cos_b.delta == f"{o2.figures.cosine - o1.figures.cosine:+.6f} vs A"
    assert metrics[f"{o2.output}: SNR, B"].delta == f"{o2.figures.snr_db - o1.figures.snr_db:+.2f} dB vs A"
    # per layer: B's SNR minus A's from the two reports, largest gain first
    a = {le.layer: le for le in first.layers}
    b = {le.layer: le for le in second.layers}
    frame = _frame(at, "SNR gain isolated dB")
    assert sorted(frame["layer"]) == sorted(n for n in a if n in b)
    want = np.array([b[n].isolated.snr_db - a[n].isolated.snr_db for n in frame["layer"]])
    np.testing.assert_allclose(frame["SNR gain isolated dB"].to_numpy(float), want, atol=1e-9)
    assert np.all(np.diff(want) <= 1e-12)
    np.testing.assert_allclose(
        frame["1 - cos accumulated B"].to_numpy(float), [1 - b[n].accumulated.cosine for n in frame["layer"]], atol=1e-15
    )
    # the bar chart draws the same gains, gains green and losses red
    fig = figure(next(c for c in at.get("plotly_chart") if c.key == "runs_chart"))
    bars = fig["data"][0]
    xs = array(bars["x"]).astype(float)
    np.testing.assert_allclose(xs, want[np.isfinite(want)][: len(xs)], atol=1e-9)
    colours = bars["marker"]["color"]
    assert all((c == "#2ca02c") == (x >= 0) for c, x in zip(colours, xs, strict=True))
    # sorted by the accumulated gain instead
    at.radio(key="runs_by").set_value("accumulated").run()
    acc = _frame(at, "SNR gain accumulated dB")["SNR gain accumulated dB"].to_numpy(float)
    assert np.all(np.diff(acc[np.isfinite(acc)]) <= 1e-12)


def test_rename_a_run_and_save_it_in_the_review_file() -> None:
    at = _page()
    at.button(key="sens_run").click().run()  # the same table again: a second run, a zero change
    w = work_of(at)
    assert len(w.runs) == 2
    at.text_input(key="runs_name").set_value("KL again").run()
    assert not at.exception
    w = work_of(at)
    assert w.runs[1].name == "KL again" and w.runs[0].name != "KL again"
    from quantviz.review import open_review, review_bytes

    back = open_review(review_bytes(stats_of(at), review_of(at), w.runs))
    assert [r.name for r in back.runs] == [r.name for r in w.runs]
    assert back.runs[1].layers == w.runs[1].layers
