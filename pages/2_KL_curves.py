"""KL curves: KL divergence against threshold for TensorRT's and ncnn's search, each argmin marked; try any
threshold and see its cost."""

from __future__ import annotations

import math

import streamlit as st

from quantviz.calib import METHODS
from quantviz.calib.kl_at import kl_at
from quantviz.calib.result import make_threshold
from quantviz.errors import QuantvizError
from quantviz.plots import kl_curves_figure
from quantviz.summary import clipped_fraction, curve_value_at, expected_mse
from ui import state
from ui.errors import callback

st.set_page_config(page_title="quantviz: KL curves", page_icon=":material/show_chart:", layout="wide")
st.title("KL curves")
stats = state.need_stats()
review = state.review()
names = [n for n in stats.tensors if not stats.tensors[n].empty]
infos = stats.infos


def _label(name: str) -> str:
    i = infos.get(name)
    return f"{name}  ·  {i.op_type} {i.shape_text()}" if i else name


tensor = state.tensor_picker(names, _label, "kl_tensor")
t = stats.tensors[tensor]
kl = METHODS["kl"](t, review.config)
ncnn = METHODS["kl_ncnn"](t, review.config)
if kl.curve is None or kl.curve.x.size < 2:
    st.info("This tensor's histogram has too few populated bins for a KL search: KL equals MinMax here.")
    st.stop()

absmax = float(t.absmax)
step = float(kl.curve.x[1] - kl.curve.x[0])
current = float(min(review.choice(tensor).override or kl.threshold, absmax))
# the slider and the typed value share one value: a draft of the current model's work on this tensor,
# dropped once the tensor's own threshold changes (so the controls never show a stale value)
w = state.work()
draft = w.drafts.get(tensor) if w is not None else None
tried = draft[1] if draft is not None and draft[0] == current else current
state.controlled("kl_slider", float(min(max(tried, step), absmax)))
state.controlled("kl_typed", float(tried))


def _keep(value: float) -> None:
    if w is not None:
        w.drafts[tensor] = (current, float(value))


@callback
def _from_slider() -> None:
    _keep(st.session_state["kl_slider"])


@callback
def _from_typed() -> None:
    _keep(st.session_state["kl_typed"])


c1, c2 = st.columns([3, 1])
c1.slider("Threshold", min_value=step, max_value=absmax, step=step, key="kl_slider", on_change=_from_slider, format="%.5g")
c2.number_input("or type it", min_value=0.0, key="kl_typed", on_change=_from_typed, format="%.6g")
chosen = float(st.session_state["kl_typed"])

log_y = st.toggle("Log y-axis", key="kl_log_y", help="The minimum of a flat curve shows on a log scale.")
# ncnn's search has no curve for a constant tensor (its value is kept): then TensorRT's alone
fig = kl_curves_figure([kl, ncnn] if ncnn.curve is not None else [kl], log_y=log_y)
fig.add_vline(x=chosen, line_color="#17becf", line_dash="dot", annotation_text=f"trying {chosen:.4g}")
st.plotly_chart(fig, key="kl_chart")
st.caption(
    f"TensorRT's KL (blue, minimum at {kl.threshold:.4g}) spreads each of the 128 quantized bins over its non-empty "
    f"histogram bins only, so clipping into an empty bin costs infinitely much; ncnn's (olive, minimum at "
    f"{ncnn.threshold:.4g}) averages over every bin and adds 0.0001 to each, so its curve is smooth and finite, "
    "and it reports the centre of the chosen bin."
)

trial = make_threshold("override", -chosen, chosen, review.config)
m = st.columns(5)
at_chosen = kl_at(t, chosen, review.config, "kl") if chosen > 0 else float("inf")
m[0].metric(
    "KL at this threshold",
    f"{at_chosen:.4g}" if math.isfinite(at_chosen) else "∞",
    help=f"TensorRT's KL divergence at this very threshold (ncnn's: {kl_at(t, chosen, review.config, 'kl_ncnn'):.4g})"
    if math.isfinite(at_chosen)
    else "Infinite: the histogram bin just below this threshold is empty while values lie beyond it, so the clipped "
    "mass lands where the quantized distribution has none (TensorRT's KL has no smoothing). The curve skips these points.",
)
m[1].metric("KL minimum", f"{curve_value_at(kl.curve, kl.threshold):.4g}", help=f"at {kl.threshold:.4g}")
m[2].metric("MSE at this threshold", f"{expected_mse(t, trial):.3e}", help=f"KL's own threshold: {expected_mse(t, kl):.3e}")
m[3].metric("clipped mass", f"{clipped_fraction(t, -chosen, chosen):.3%}")
m[4].metric("vs MinMax", f"{chosen / absmax:.1%}" if absmax else "-")

b1, b2 = st.columns(2)
if b1.button(f"Use {chosen:.4g} for this tensor", key="kl_use"):
    try:
        state.set_review(review.with_choice(tensor, override=chosen))
        state.flash("success", f"{tensor} now uses the threshold {chosen:.4g} (kept in the review and the exports).")
        st.rerun()
    except QuantvizError as exc:
        st.error(str(exc))
if review.choice(tensor).override is not None and b2.button("Back to the default method", key="kl_reset"):
    state.set_review(review.with_choice(tensor, override=None))
    st.rerun()
