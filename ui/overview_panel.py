"""Home's overview: every tensor's range and what each method clips, worst first (quantviz.overview);
a click on a tensor's bar opens it on Distributions. Reads widgets, calls the engine, draws."""

from __future__ import annotations

import streamlit as st

from quantviz.calib import METHOD_LABELS, METHODS
from quantviz.overview import overview_figure
from quantviz.stats import CalibrationStats
from ui import state

AUTO_TENSORS = 150  # the picture is drawn on arrival up to this many tensors; larger models ask first
ROW_CHOICES = (40, 80, 160, "all")


def overview_panel(stats: CalibrationStats) -> None:
    st.subheader("Where to start: every tensor, worst clipped first")
    review = state.review()
    method = review.default_method if review.default_method in METHODS else "kl"
    w = state.current_work()
    if not state.overview_ready() and len(stats.tensors) > AUTO_TENSORS:
        st.caption(
            f"{len(stats.tensors)} tensors: every method's threshold on every tensor takes a while (about "
            f"{max(1, len(stats.tensors) // 40)} s). Distributions' table uses the same figures."
        )
        if not st.button("Draw the overview", key="home_overview_run"):
            return
    bar = st.progress(0.0, text="Every method on every tensor") if not state.overview_ready() else None

    def _progress(done: int, total: int) -> None:
        if bar is not None:
            bar.progress(done / max(total, 1), text=f"Every method on every tensor: {done} / {total} tensors")

    df = state.overview_table(_progress)
    if bar is not None:
        bar.empty()
    n = len(df)
    limit = None
    if n > ROW_CHOICES[0]:
        pick = st.select_slider("Tensors in the picture (worst first)", options=list(ROW_CHOICES), **state.bound("home_rows", list(ROW_CHOICES)))
        limit = None if pick == "all" else int(pick)
    fig = state.cached(
        state.derived_key("overview figure", (review.config, method, limit), with_review=False),
        lambda: overview_figure(df, method, list(METHODS), limit),
    )
    st.caption(
        f"Left: each tensor's largest magnitude (log axis; green: never negative). Right: the share of its values each method "
        f"clips, darker is more. Sorted by what {METHOD_LABELS.get(method, method)} (the default method) clips. "
        "Click a bar to open that tensor on Distributions; hover for its range and shapes (seen in the collection, declared)."
    )
    event = st.plotly_chart(fig, on_select="rerun", selection_mode="points", key="home_overview")
    points = event.get("selection", {}).get("points", []) if event else []
    if not points:
        w.overview_clicked = None
        return
    custom = points[0].get("customdata")
    picked = custom[0] if isinstance(custom, list) and custom else None
    if picked in stats.tensors and picked != w.overview_clicked:
        w.overview_clicked = picked
        w.tensor = picked
        st.switch_page("pages/1_Distributions.py")
