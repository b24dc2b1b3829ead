"""Distributions: one tensor's histogram with every method's clipping point, and the KL curve."""

from __future__ import annotations

import streamlit as st

from quantviz.calib import METHOD_LABELS, METHODS, MethodConfig
from quantviz.export.qv_json import dumps
from quantviz.plots import curve_figure, histogram_figure
from ui import state

st.set_page_config(page_title="quantviz: distributions", page_icon=":material/bar_chart:", layout="wide")
st.title("Distributions")
stats = state.need_stats()

names = [n for n in stats.tensors if not stats.tensors[n].empty]
infos = stats.infos


def _label(name: str) -> str:
    i = infos.get(name)
    return f"{name}  ·  {i.op_type} {i.shape_text()}" if i else name


if st.session_state.get(state.TENSOR) not in names:
    st.session_state[state.TENSOR] = names[0]
tensor = st.selectbox("Tensor (type to search)", names, format_func=_label, key=state.TENSOR)
t = stats.tensors[tensor]

c1, c2, c3 = st.columns([1, 1, 4])
log_y = c1.toggle("Log scale", value=True, key="dist_log")
signed = c2.toggle("Signed x", value=True, key="dist_signed", help="Off: the histogram of |x| that symmetric methods use.")

config = MethodConfig()
results = {}
for m in ("minmax", "kl"):
    results[m] = METHODS[m](t, config)  # one tensor: cheap, and gives the curve the table does not hold
st.plotly_chart(histogram_figure(t, results, signed=signed, log_y=log_y), key="hist_chart")

cols = st.columns(4)
cols[0].metric("min", f"{t.min:.4g}")
cols[1].metric("max", f"{t.max:.4g}")
cols[2].metric("exact zeros", f"{t.zero_count / max(t.count, 1):.1%}")
cols[3].metric("NaN / Inf", t.nonfinite)

kl = results["kl"]
st.subheader("KL divergence against threshold")
if kl.curve is not None and kl.curve.x.size > 1:
    st.plotly_chart(curve_figure(kl), key="kl_chart")
else:
    st.caption("This tensor's histogram has too few populated bins for a KL search: KL equals MinMax here.")

st.subheader("Calibration table")
method = st.selectbox("Method for the table", list(METHODS), index=list(METHODS).index("kl"), format_func=lambda k: METHOD_LABELS.get(k, k), key="table_method")
table = state.table_for(method, config)
if table is not None:
    st.download_button(
        "Download table.json", dumps(table), file_name="table.json", mime="application/json", key="download_table"
    )
