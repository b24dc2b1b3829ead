"""Distributions: every tensor's histogram with each method's clipping point, and what each clips."""

from __future__ import annotations

from dataclasses import replace

import streamlit as st

from quantviz.calib import METHOD_LABELS, METHODS
from quantviz.calib.log2 import log2_quantization_error
from quantviz.export.names import download_name
from quantviz.export.qv_json import dumps
from quantviz.export.registry import FORMATS
from quantviz.plots import histogram_figure, log2_figure, weight_channels_figure
from quantviz.summary import all_thresholds, method_table, shape_text
from ui import state
from ui.errors import callback
from ui.graph_panel import graph_context

st.set_page_config(page_title="quantviz: distributions", page_icon=":material/bar_chart:", layout="wide")
st.title("Distributions")
stats = state.need_stats()
review = state.review()
config = review.config

names = [n for n in stats.tensors if not stats.tensors[n].empty]
infos = stats.infos


def _label(name: str) -> str:
    i = infos.get(name)
    return f"{name}  ·  {i.op_type} {shape_text(stats.tensors.get(name), i)}" if i else name


if st.toggle("Show all tensors: how much each method clips (click a row to open it)", **state.bound("dist_show_all")):
    table = state.overview_table()
    shown = table[table["tensor"].isin(names)].reset_index(drop=True)

    @callback
    def _pick_row() -> None:
        rows = st.session_state["tensor_table"].selection.rows
        w = state.work()
        if rows and w is not None:
            w.tensor = str(shown.loc[rows[0], "tensor"])

    st.dataframe(
        shown, hide_index=True, key="tensor_table", on_select=_pick_row, selection_mode="single-row", height="content",
        column_config={c: st.column_config.NumberColumn(format="%.4g") for c in shown.columns if c.endswith(" T") or c in ("min", "max")},
    )  # fmt: skip

tensor = state.tensor_picker(names, _label, "dist_tensor")
t = stats.tensors[tensor]
if tensor in infos and t.shape is not None:
    st.caption(f"Shape seen in the collection {shape_text(t, infos[tensor])}; declared in the model {infos[tensor].shape_text()}.")
results = all_thresholds(t, config)

c1, c2, c3 = st.columns([1, 1, 4])
log_y = c1.toggle("Log scale", **state.bound("dist_log"))
signed = c2.toggle("Signed x", help="Off: the histogram of |x| that symmetric methods use.", **state.bound("dist_signed"))
controls = state.session().controls
if controls.dist_methods is None or not set(controls.dist_methods) <= set(results):
    controls.dist_methods = [m for m in ("minmax", "kl") if m in results] + [m for m in results if m not in ("minmax", "kl", "ema")]
shown_methods = c3.multiselect(
    "Methods drawn", list(results), format_func=lambda k: METHOD_LABELS.get(k, k), **state.bound("dist_methods"),
)  # fmt: skip
st.plotly_chart(histogram_figure(t, {m: results[m] for m in shown_methods}, signed=signed, log_y=log_y), key="hist_chart")

cols = st.columns(5)
cols[0].metric("min", f"{t.min:.4g}")
cols[1].metric("max", f"{t.max:.4g}")
cols[2].metric("exact zeros", f"{t.zero_count / max(t.count, 1):.1%}")
cols[3].metric("NaN / Inf", t.nonfinite)
cols[4].metric("elements seen", f"{t.count:,}")

if st.toggle("Graph context: what feeds this tensor's layer and what it feeds (click to open)", **state.bound("dist_graph")):
    graph_context(stats, "dist", tensor=tensor, show_output=False)  # its histogram is the one above

st.subheader("Thresholds by method")
st.dataframe(
    method_table(t, results), hide_index=True, key="method_table", height="content",
    column_config={"MSE": st.column_config.NumberColumn(format="%.3e"), "clipped %": st.column_config.NumberColumn(format="%.4f")},
)  # fmt: skip

if st.toggle("Compare linear int8 with log2 quantization at the default method's threshold", **state.bound("dist_log2")):
    base = results.get(review.default_method) or results["minmax"]
    cmp = log2_quantization_error(t, base.threshold)
    l1, l2 = st.columns(2)
    l1.metric("linear int8 MSE", f"{cmp.linear_mse:.3e}")
    l2.metric("log2 (8-bit) MSE", f"{cmp.log2_mse:.3e}", help="1 sign bit + 127 power-of-two levels below the threshold (Miyashita et al. 2016)")
    st.plotly_chart(log2_figure(cmp), key="log2_chart")

model, _ = state.model_and_source()
info = infos.get(tensor)
if model is not None and info is not None and info.op_type in ("Conv", "Gemm", "MatMul", "BatchNormalization"):
    st.subheader("Weights of the layer that produces this tensor")
    per_channel = st.toggle("Per-channel weight scales", **state.bound("per_channel"))
    producer = info.producer
    if info.op_type == "BatchNormalization":  # folded into the Conv before it: that Conv's weights
        bn = model.node_by_name().get(producer)
        before = infos.get(bn.input[0]) if bn is not None else None
        producer = before.producer if before is not None else producer
    found = [w for w in state.weights_of(model, per_channel).values() if w.node == producer]
    for w in found:
        st.plotly_chart(weight_channels_figure(w.name, w.absmax, w.scales), key=f"weights_{w.name}")
    if not found:
        st.caption("No constant weight found for this layer.")

st.subheader("Calibration table")
methods = list(METHODS)


@callback
def _set_default() -> None:
    state.set_review(replace(state.review(), default_method=st.session_state["table_method"]))


st.selectbox(
    "Default method (per-tensor choices made on Layer sensitivity win)", methods,
    format_func=lambda k: METHOD_LABELS.get(k, k), key=state.controlled("table_method", review.default_method),
    on_change=_set_default,
)  # fmt: skip
table_name = download_name(stats.model_name, FORMATS["json"])
st.download_button(f"Download {table_name}", dumps(state.current_table()), file_name=table_name, mime="application/json", key="download_table")
