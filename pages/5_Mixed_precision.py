"""Mixed precision: the fewest layers to take out of int8 so the model reaches a target end to end.

The search, its trace and every figure come from quantviz.mixed; the chart from quantviz.plots. A
click on a point applies that step's configuration to the review (those layers kept in float)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from quantviz.errors import CancelledError, QuantvizError
from quantviz.export.qv_json import dumps
from quantviz.fallback import PRECISIONS
from quantviz.mixed import applied_in_review, mixed_table, parse_target, review_with_configuration, run_search
from quantviz.plots import picked_step, tradeoff_figure
from ui import state

st.set_page_config(page_title="quantviz: mixed precision", page_icon=":material/tune:", layout="wide")
st.title("Mixed precision to a target")
stats = state.need_stats()
model, calib = state.model_and_source()
if model is None or calib is None:
    st.info(
        "This page runs the model: the statistics were opened from a file, so the model and the data are not "
        "loaded. Choose them on the Home page and run the collection."
    )
    st.page_link("pages/0_Home.py", label="Go to Home", icon=":material/home:")
    st.stop()

st.caption(
    "Which fewest layers must leave int8 so the model stays within the target of float? Layers are ordered by "
    "their measured sensitivity (isolated, then accumulated), added until the target is met, then each taken back "
    "to int8 if it is no longer needed. Every point below is a measured run of the whole model."
)

TARGET_DEFAULTS = {"cosine": 0.999, "snr": 30.0, "top1-drop": 1.0}
DEFAULT_SAMPLES = 540

sample_key = state.sample_key_of(model)
source, labels = calib, None
if sample_key is not None:
    try:
        source, labels = state.labelled_sample_source(sample_key, model)
    except QuantvizError as exc:
        st.error(str(exc))
        st.stop()
c1, c2, c3, c4 = st.columns([1, 1, 1, 1])
kinds = [k for k in TARGET_DEFAULTS if k != "top1-drop" or labels is not None]
kind = c1.selectbox("Target", kinds, index=len(kinds) - 1, key="mixed_kind")
value = c2.number_input(
    {"cosine": "cosine at least", "snr": "SNR at least (dB)", "top1-drop": "top-1 drop at most (points)"}[kind],
    value=TARGET_DEFAULTS[kind],
    format="%.4g",
    key=f"mixed_value::{kind}",
)
precision = c3.radio(
    "Fallback", PRECISIONS, horizontal=True, key="mixed_precision", help="int16: int16 activations, int8 weights"
)
samples = int(
    c4.number_input(
        "Samples", min_value=1, max_value=source.num_samples, value=min(DEFAULT_SAMPLES, source.num_samples), key="mixed_samples"
    )
)
st.caption(
    f"Measured on {'the labelled evaluation set of the sample' if labels is not None else 'the calibration set'} "
    f"({source.num_samples} samples)."
)

try:
    target = parse_target(f"{kind}={value}")
except QuantvizError as exc:
    st.error(str(exc))
    st.stop()
table = state.current_table()
key = state.derived_key("mixed", (source.data_id, samples, target.spec, precision), with_review=False)

if st.button("Search", type="primary", key="mixed_run"):
    bar = st.progress(0.0, text="Analysing the layers, then measuring each step")
    box = st.empty()

    def on_step(s: object) -> None:
        box.caption(f"step {s.index}: {s.layers_out} layers out of int8, {kind} {s.value:.5g}")  # type: ignore[attr-defined]

    try:
        lab = None if labels is None else labels[:samples]
        result, _ = run_search(
            model, table, source, target, precision=precision, samples=samples, labels=lab, per_channel=state.per_channel(),
            on_step=on_step,
        )  # fmt: skip
        state.store(key, mixed_table(table, result))
        st.session_state.pop("mixed_step", None)  # the step box starts on the new search's last step
    except (QuantvizError, CancelledError) as exc:
        st.error(str(exc))
    finally:
        bar.empty()
        box.empty()

found = state.stored(key)
if found is None:
    st.info("Choose a target and press Search.")
    st.stop()
doc = found.settings["mixed"]


def _fmt(v: object) -> str:
    return f"{v:.5g}" if isinstance(v, float) else str(v)


m = st.columns(4)
m[0].metric("all int8", _fmt(doc["int8_value"]))
m[1].metric("after the search", _fmt(doc["final_value"]), "target reached" if doc["reached"] else "target NOT reached")
m[2].metric("layers out of int8", len(doc["fallbacks"]))
m[3].metric("share of MACs", f"{100 * float(doc.get('final_macs_share', 0.0)):.1f}%")

x_axis = st.radio("x axis", ("layers", "MACs"), horizontal=True, key="mixed_x")
# one chart per search: a selection outlives reruns, and a new search must not inherit the last one's click
chart_key = f"mixed_chart::{hash(key) & 0xFFFFFFFF:08x}"
event = st.plotly_chart(
    tradeoff_figure(doc, "layers" if x_axis == "layers" else "macs"),
    on_select="rerun",
    selection_mode="points",
    key=chart_key,
)
st.caption("Click a point to apply that step's configuration to the review; click it again to release the selection.")


def _apply(step: int | None, what: str) -> None:
    new, marked = review_with_configuration(state.review(), doc, step)
    state.set_review(new)
    st.success(f"{what} applied to the review: {len(marked)} tensors kept in float. Every page and export uses it.")


steps = [s["step"] for s in doc["trace"]]
w = state.current_work()
picked = picked_step(event, len(steps))
if picked is None:
    w.mixed_clicked = None
elif w.mixed_clicked != (chart_key, picked):  # a new click (the selection outlives reruns)
    w.mixed_clicked = (chart_key, picked)
    st.session_state["mixed_step"] = picked  # the step box below follows the click
    _apply(picked, f"Step {picked}")
a1, a2 = st.columns([3, 1])
chosen = a1.selectbox(
    "Click a point, or choose a step, to apply its configuration to the review (its layers kept in float)",
    steps,
    index=0 if "mixed_step" in st.session_state else len(steps) - 1,  # a value set above wins over a default
    format_func=lambda i: (
        f"step {i}: {doc['trace'][i]['action']}, {doc['trace'][i]['layers_out']} layers out, "
        f"{kind} {_fmt(doc['trace'][i]['value'])}"
    ),
    key="mixed_step",
)
a2.write("")
if a2.button("Apply this step", key="mixed_apply_step"):
    _apply(int(chosen), f"Step {chosen}")
now_box = st.empty()  # what the review holds of this search, written once every button below has acted

st.subheader("The layers left out of int8, and why")
if doc["fallbacks"]:
    st.dataframe(
        pd.DataFrame(
            {"layer": layer, "precision": f["precision"], "left with": f["unit"], "output tensor": f["tensor"], "why": f["why"]}
            for layer, f in doc["fallbacks"].items()
        ),
        hide_index=True,
        key="mixed_final",
    )
    if st.button("Apply the final configuration to the review", key="mixed_apply"):
        _apply(None, "The final configuration")
else:
    st.caption("None: the model meets the target all in int8.")

with st.expander("The whole trace"):
    st.dataframe(pd.DataFrame(doc["trace"]), hide_index=True, key="mixed_trace")

st.download_button(
    "Table with the fallbacks and the trace (JSON)", dumps(found), "quantviz_mixed.json", "application/json", key="mixed_json"
)

where, in_review = applied_in_review(state.review(), doc)
now_box.markdown(
    "**In the review now:** "
    + (
        f"{'the ' if where == 'final configuration' else ''}{where}, the outputs of {', '.join(in_review)} kept in float."
        if where is not None
        else "no layer of this search kept in float."
    )
)
