"""Distributions: every tensor's histogram with each method's clipping point, and what each clips."""

from __future__ import annotations

from dataclasses import replace

import streamlit as st

from quantviz.calib import METHOD_LABELS, METHODS
from quantviz.calib.log2 import log2_quantization_error
from quantviz.export.qv_json import dumps
from quantviz.plots import histogram_figure, log2_figure, weight_channels_figure
from quantviz.summary import all_thresholds, method_table
from ui import state

st.set_page_config(page_title="quantviz: distributions", page_icon=":material/bar_chart:", layout="wide")
st.title("Distributions")
stats = state.need_stats()
review = state.review()
config = review.config

names = [n for n in stats.tensors if not stats.tensors[n].empty]
infos = stats.infos


def _label(name: str) -> str:
    i = infos.get(name)
    return f"{name}  ·  {i.op_type} {i.shape_text()}" if i else name


if st.toggle("Show all tensors: how much each method clips (click a row to open it)", key="dist_show_all"):
    table = state.overview_table()
    shown = table[table["tensor"].isin(names)].reset_index(drop=True)

    def _pick_row() -> None:
        rows = st.session_state["tensor_table"].selection.rows
        if rows:
            st.session_state[state.TENSOR] = shown.loc[rows[0], "tensor"]

    st.dataframe(
        shown, hide_index=True, key="tensor_table", on_select=_pick_row, selection_mode="single-row", height=320,
        column_config={c: st.column_config.NumberColumn(format="%.4g") for c in shown.columns if c.endswith(" T") or c in ("min", "max")},
    )  # fmt: skip

tensor = state.tensor_picker(names, _label, "dist_tensor")
t = stats.tensors[tensor]
results = all_thresholds(t, config)

c1, c2, c3 = st.columns([1, 1, 4])
log_y = c1.toggle("Log scale", value=True, key="dist_log")
signed = c2.toggle("Signed x", value=True, key="dist_signed", help="Off: the histogram of |x| that symmetric methods use.")
shown_methods = c3.multiselect(
    "Methods drawn", list(results), default=[m for m in ("minmax", "kl") if m in results] + [m for m in results if m not in ("minmax", "kl", "ema")],
    format_func=lambda k: METHOD_LABELS.get(k, k), key="dist_methods",
)  # fmt: skip
st.plotly_chart(histogram_figure(t, {m: results[m] for m in shown_methods}, signed=signed, log_y=log_y), key="hist_chart")

cols = st.columns(5)
cols[0].metric("min", f"{t.min:.4g}")
cols[1].metric("max", f"{t.max:.4g}")
cols[2].metric("exact zeros", f"{t.zero_count / max(t.count, 1):.1%}")
cols[3].metric("NaN / Inf", t.nonfinite)
cols[4].metric("elements seen", f"{t.count:,}")

st.subheader("Thresholds by method")
st.dataframe(
    method_table(t, results), hide_index=True, key="method_table",
    column_config={"MSE": st.column_config.NumberColumn(format="%.3e"), "clipped %": st.column_config.NumberColumn(format="%.4f")},
)  # fmt: skip

if st.toggle("Compare linear int8 with log2 quantization at the default method's threshold", key="dist_log2"):
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
    per_channel = st.toggle("Per-channel weight scales", value=state.per_channel(), key=state.PER_CHANNEL)
    producer = info.producer
    if info.op_type == "BatchNormalization":  # folded into the Conv before it: that Conv's weights
        bn = model.node_by_name().get(producer)
        before = infos.get(bn.input[0]) if bn is not None else None
        producer = before.producer if before is not None else producer
    found = [w for w in state.weights_of(model.sha256, per_channel).values() if w.node == producer]
    for w in found:
        st.plotly_chart(weight_channels_figure(w.name, w.absmax, w.scales), key=f"weights_{w.name}")
    if not found:
        st.caption("No constant weight found for this layer.")

st.subheader("Calibration table")
methods = list(METHODS)
default = st.selectbox(
    "Default method (per-tensor choices made on Layer sensitivity win)", methods,
    index=methods.index(review.default_method), format_func=lambda k: METHOD_LABELS.get(k, k), key="table_method",
)  # fmt: skip
if default != review.default_method:
    review = replace(review, default_method=default)
    state.set_review(review)
st.download_button("Download table.json", dumps(state.current_table()), file_name="table.json", mime="application/json", key="download_table")
