"""Layer sensitivity: per-layer error (1 - cosine on a log axis, SNR, cosine), isolated and accumulated,
worst first; per layer, which part (input, weights, output) makes it sensitive and which method fixes
it, choose a method, type a threshold, keep it in float, leave a note, recompute its error; domain
warnings with their fix; best method per layer; EQ's per-round trace. Long work shows its phase, count,
time left and a Cancel. Every figure comes from quantviz (sensitivity, sensitivity_fix, error_chart,
domain_warnings, easyquant, progress)."""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial
from typing import Any

import pandas as pd
import streamlit as st

from quantviz.calib import METHOD_LABELS, METHODS
from quantviz.data import default_labels, open_source
from quantviz.domain_warnings import DomainWarning, Fix, apply_fix, domain_warnings, for_layer
from quantviz.easyquant import EQ_MODES, EQConfig, calibrate_eq
from quantviz.error_chart import COSINE, ONE_MINUS_COS, SNR, error_text, layer_error_figure, one_minus_cosine, parts_figure
from quantviz.errors import CancelledError, QuantvizError
from quantviz.export.names import LAYERS_CSV, REPORT_HTML, artefact_name
from quantviz.plots import eq_trace_figure, run_delta_figure
from quantviz.progress import CancelToken, Eta, Step, phased, text
from quantviz.report import snr_figure, to_csv, to_html
from quantviz.review import adopt_table_scales, apply_method_picks, fused_tensors
from quantviz.runs import ACCUMULATED, ISOLATED, compare, gain
from quantviz.sensitivity import BEST_CANDIDATES, analyze, best_method_picks, layer_error
from quantviz.sensitivity_fix import fix_candidates
from ui import state
from ui.errors import callback
from ui.graph_panel import graph_context
from ui.profile_panel import engine_profile_expander

st.set_page_config(page_title="quantviz: layer sensitivity", page_icon=":material/troubleshoot:", layout="wide")
st.title("Layer sensitivity")
stats = state.need_stats()
model, calib = state.model_and_source()
if model is None or calib is None:
    st.info(
        "This page runs the model: the statistics were opened from a file, so the model and the data are not "
        "loaded. Choose them on the Home page and run the collection (the review's choices and notes are kept)."
    )
    st.page_link("pages/0_Home.py", label="Go to Home", icon=":material/home:")
    st.stop()

AUTO_RUN_TENSORS = 100  # small models are analysed on arrival; larger ones wait for the button
DEFAULT_SAMPLES = 256
SHOWN_LAYERS = (20, 40, 80, 160)  # bars per chart on big models; the table and the report keep them all

w = state.current_work()
controls = state.session().controls

# --- which samples ---------------------------------------------------------------------------------
sample_key = state.sample_key_of(model)
LABELLED = "Sample evaluation set (labelled)"
choices = ["Calibration set"] + ([LABELLED] if sample_key else []) + ["Upload a labelled .npz"]
if controls.sens_data is None:
    controls.sens_data = LABELLED if sample_key else choices[0]
c1, c2, c3 = st.columns([2, 1, 1])
where = c1.radio("Analyse on", choices, horizontal=True, **state.bound("sens_data", choices))
labels = None
source = calib
try:
    if where == LABELLED and sample_key is not None:
        source, labels = state.labelled_sample_source(sample_key, model)
    elif where == "Upload a labelled .npz":
        up = st.file_uploader(
            "An .npz with the model inputs and a 'label' array (one class index per sample)", type=["npz"], key="sens_upload"
        )
        if up is None:
            st.info("Upload an .npz, or analyse on the calibration set.")
            st.stop()
        source = open_source(up.getvalue(), model.inputs, name=up.name)
        labels = default_labels(up.getvalue())
        if labels is None:
            st.warning(f"'{up.name}' has no 'label' array: the figures are shown without accuracy.")
except QuantvizError as exc:
    st.error(str(exc))
    st.stop()

if controls.sens_samples is None or not 1 <= controls.sens_samples <= source.num_samples:
    controls.sens_samples = min(DEFAULT_SAMPLES, source.num_samples)
samples = int(c2.number_input("Samples", min_value=1, max_value=source.num_samples, **state.bound("sens_samples")))
mode = c3.radio("Sort by", ("isolated", "accumulated"), horizontal=True, **state.bound("sens_mode", ("isolated", "accumulated")))
review = state.review()
table = state.current_table()
engine_profile_expander(table, "sens")
key = state.derived_key("analysis", (source.data_id, samples, labels is not None))
report = state.stored(key)


CANCEL = "sens_cancel_token"  # the CancelToken of the work running in this session, while it runs
# A session runs one script at a time and the Cancel callback has already run: a token left here is
# from a run stopped by another click, not from running work
st.session_state.pop(CANCEL, None)


@callback
def _cancel() -> None:
    # A click during a run also makes Streamlit stop that run at its next progress report (before the
    # result is stored); the token stops the engine at its next batch either way.
    running = st.session_state.pop(CANCEL, None)
    if running is not None:
        token, phase = running
        token.cancel()
        state.flash("info", f"{phase} cancelled: what was shown before is kept.")


def _long_work(phase: str, work: Any) -> Any:
    """Run work(report, token) under a progress bar (phase, done / total in its unit, time left) with
    the page's Cancel; None when it was cancelled or failed (the message is shown, nothing replaced)."""
    bar = st.progress(0.0, text=f"{phase}...")
    eta = Eta()
    token = CancelToken()
    st.session_state[CANCEL] = (token, phase)

    def report(step: Step) -> None:
        bar.progress(min(step.done / max(step.total, 1), 1.0), text=text(step, eta.left(step)))

    try:
        result = work(report, token)
    except CancelledError as exc:
        st.session_state.pop(CANCEL, None)
        bar.empty()
        st.info(f"{exc} What was shown before is kept.")
        return None
    except QuantvizError as exc:
        st.session_state.pop(CANCEL, None)
        bar.empty()
        st.error(str(exc))
        return None
    st.session_state.pop(CANCEL, None)
    bar.empty()
    return result


def _cancel_button(col: Any, where: str) -> None:
    col.button("Cancel", key=f"sens_cancel_{where}", on_click=_cancel, help="Stops the running work within a batch; what was shown before is kept.")


b_run, b_cancel = st.columns([1, 6])
run = b_run.button("Analyse", type="primary", key="sens_run", help="Runs the QDQ model and every layer's isolated copy (and its parts)")
_cancel_button(b_cancel, "analyse")
# after best-method or EQ changed the table, its analysis starts by itself (w.reanalyse names what changed)
after_change, w.reanalyse = w.reanalyse, None
if run or (after_change is not None and report is None) or (report is None and len(stats.tensors) <= AUTO_RUN_TENSORS and w.auto_tried != key):
    w.auto_tried = key
    lab = None if labels is None else labels[:samples]
    done = _long_work(
        "Analysis",
        lambda rep, token: analyze(
            model, table, source, samples=samples, progress=phased(rep, "Analysis of every layer and its parts"), cancel=token,
            labels=lab, per_channel=state.per_channel(),
        ),
    )  # fmt: skip
    if done is not None:
        report = state.store(key, done)
        w.last_analysis = key
        state.add_run(done, label=after_change)  # every completed analysis is kept as a run (Runs, below)
shown = key
if report is None:
    older = state.stored(w.last_analysis) if w.last_analysis is not None and w.last_analysis.stats == key.stats else None
    if older is None or w.last_analysis is None:
        st.info("Press Analyse to measure every layer's error with the current table.")
        st.stop()
    report, shown = older, w.last_analysis
    why = (
        "the table changed since (a method, threshold or float choice)"
        if shown.review != key.review
        else "the weights were per-channel then" if shown.per_channel != key.per_channel and shown.per_channel
        else "the weights were per-tensor then" if shown.per_channel != key.per_channel
        else "it ran on other samples"
    )
    st.warning(f"This analysis is older: {why}. Press Analyse to update it.")
else:
    w.last_analysis = key

# --- end to end -------------------------------------------------------------------------------------
st.subheader("End to end")
for o in report.outputs:
    m = st.columns(5)
    m[0].metric(f"{o.output}: cosine", f"{o.figures.cosine:.6f}")
    m[1].metric("SNR", f"{o.figures.snr_db:.2f} dB")
    if o.top1_agreement is not None:
        m[2].metric("top-1 agreement", f"{o.top1_agreement:.2%}")
    if o.accuracy_float is not None and o.accuracy_quantized is not None:
        m[3].metric("accuracy quantized", f"{o.accuracy_quantized:.2%}", f"{o.accuracy_quantized - o.accuracy_float:+.2%}")
        m[4].metric("accuracy float", f"{o.accuracy_float:.2%}")
    d = o.detail
    if d is not None:
        n = st.columns(4)
        n[0].metric("max |error|", f"{d.max_abs_error:.4g}")
        n[1].metric("mean |error|", f"{d.mean_abs_error:.4g}")
        if d.saturated_share is not None:
            n[2].metric("saturated", f"{d.saturated_share:.2%}")
        if d.decision_agreement is not None:
            n[3].metric(f"decisions agree ({d.decision})", f"{d.decision_agreement:.2%}")
        elif d.across_cosine is not None:
            n[3].metric("cosine across samples", f"{d.across_cosine:.6f}")
            st.caption(f"'{o.output}' holds one value per sample: its per-sample cosine is always 1, so it is judged across samples.")
st.caption(
    f"{report.samples} samples of {report.data_description}; {len(report.layers)} layers; "
    f"{'per-channel' if report.per_channel else 'per-tensor'} weights; BatchNorm folded: {len(report.folded)}"
    + (f"; kept in float: {', '.join(report.kept_float)}" if report.kept_float else "")
)

# --- runs: two analyses side by side -------------------------------------------------------------------
runs = state.runs()
if len(runs) >= 2 and w.run_pair is not None:
    a_id, b_id = w.run_pair
    if a_id != b_id and runs[-1].id == b_id and any(r.id == a_id for r in runs):
        ra = next(r for r in runs if r.id == a_id)
        rb = runs[-1]
        latest = state.cached(state.derived_key("run comparison", (a_id, b_id, ISOLATED), with_review=False), partial(compare, ra, rb, ISOLATED))
        for o in latest.outputs:
            st.caption(
                f"**{rb.name}** against **{ra.name}**: {o.output} cosine {o.a_cosine:.6f} -> {o.b_cosine:.6f} "
                f"({o.cosine_gain:+.6f}), SNR {o.snr_gain_db:+.2f} dB. Compare them under Runs."
            )


def _pick_runs() -> None:
    w.run_pair = (st.session_state["runs_a"], st.session_state["runs_b"])


def _rename_run() -> None:
    if w.run_pair is not None:
        state.rename_run(w.run_pair[1], st.session_state["runs_name"])


with st.expander(f"Runs ({len(runs)} kept: each analysis of this model, the last {state.RUNS_KEPT})", expanded=False):
    if len(runs) < 2:
        st.caption("Each analysis is kept as a run. Analyse again with another table (a method, best method, EQ) to compare two.")
    else:
        ids = [r.id for r in runs]
        names = {r.id: r.name for r in runs}
        pa, pb = w.run_pair if w.run_pair is not None and set(w.run_pair) <= set(ids) else (ids[-2], ids[-1])
        w.run_pair = (pa, pb)
        ca, cb = st.columns(2)
        ca.selectbox("Run A (before)", ids, format_func=names.__getitem__, key=state.controlled("runs_a", pa), on_change=callback(_pick_runs))
        cb.selectbox("Run B (after)", ids, format_func=names.__getitem__, key=state.controlled("runs_b", pb), on_change=callback(_pick_runs))
        ra, rb = next(r for r in runs if r.id == pa), next(r for r in runs if r.id == pb)
        ca.caption(f"{ra.when} UTC; {ra.settings}")
        cb.caption(f"{rb.when} UTC; {rb.settings}")
        cb.text_input("Name of run B", key=state.controlled("runs_name", rb.name), on_change=callback(_rename_run))
        by = st.radio("Sort layers by gain", (ISOLATED, ACCUMULATED), horizontal=True, **state.bound("runs_by", (ISOLATED, ACCUMULATED)))
        cmp = state.cached(state.derived_key("run comparison", (pa, pb, by), with_review=False), partial(compare, ra, rb, by))
        for o in cmp.outputs:
            e = st.columns(3)
            e[0].metric(f"{o.output}: cosine, B", f"{o.b_cosine:.6f}", f"{o.cosine_gain:+.6f} vs A")
            e[1].metric(f"{o.output}: SNR, B", f"{o.b_snr_db:.2f} dB", f"{o.snr_gain_db:+.2f} dB vs A")
            if o.a_accuracy is not None and o.b_accuracy is not None:
                e[2].metric(f"{o.output}: accuracy, B", f"{o.b_accuracy:.2%}", f"{o.b_accuracy - o.a_accuracy:+.2%} vs A")
        won = sum(1 for d in cmp.layers if gain(d, by) > 0)
        lost = sum(1 for d in cmp.layers if gain(d, by) < 0)
        st.caption(
            f"{cmp.thresholds_changed} tensors have another threshold in B; {won} layers gain, {lost} lose ({by} SNR)"
            + (f"; measured in A only: {', '.join(cmp.only_a)}" if cmp.only_a else "")
            + (f"; measured in B only: {', '.join(cmp.only_b)}" if cmp.only_b else "")
        )

        def _delta_frame() -> pd.DataFrame:
            return pd.DataFrame(
                {
                    "layer": d.layer,
                    "op": d.op_type,
                    "SNR gain isolated dB": d.isolated_snr_gain_db,
                    "1 - cos isolated A": d.a_isolated,
                    "1 - cos isolated B": d.b_isolated,
                    "SNR gain accumulated dB": d.accumulated_snr_gain_db,
                    "1 - cos accumulated A": d.a_accumulated,
                    "1 - cos accumulated B": d.b_accumulated,
                }
                for d in cmp.layers
            )

        rkey = state.derived_key("run delta", (pa, pb, by), with_review=False)
        st.plotly_chart(state.cached(replace(rkey, kind="run delta figure"), partial(run_delta_figure, cmp)), key="runs_chart")
        st.dataframe(
            state.cached(rkey, _delta_frame), hide_index=True, key="runs_table",
            column_config={
                **{c: st.column_config.NumberColumn(format="%.3e") for c in ("1 - cos isolated A", "1 - cos isolated B", "1 - cos accumulated A", "1 - cos accumulated B")},
                **{c: st.column_config.NumberColumn(format="%+.2f") for c in ("SNR gain isolated dB", "SNR gain accumulated dB")},
            },
        )  # fmt: skip

# --- domain warnings ----------------------------------------------------------------------------------
@callback
def _apply(*fixes: Fix) -> None:
    for fix in fixes:
        if fix.kind == "per_channel":
            controls.per_channel = True
        else:
            state.set_review(apply_fix(state.review(), fix))
    state.flash("success", f"Done: {fixes[0].label}. Press Analyse to measure the model with it.")


def _draw_warnings(items: list[DomainWarning], where: str) -> None:
    for i, dw in enumerate(items):
        box = st.container(border=True)
        box.warning(f"**{dw.kind}**: {dw.text}")
        if dw.fix is not None:
            box.button(dw.fix.label, key=f"warn_fix::{where}::{i}::{dw.kind}", on_click=_apply, args=(dw.fix,))


warnings = state.cached(
    state.derived_key("domain warnings", (review.profile,)),
    partial(domain_warnings, table, stats, state.weights_of(model, True), per_channel=state.per_channel(), profile=review.profile),
)
if warnings:
    with st.expander(f"Warnings ({len(warnings)}), each with its fix", expanded=len(warnings) <= 3):
        _draw_warnings(warnings, "all")

# --- per-layer charts --------------------------------------------------------------------------------
layers = {le.layer: le for le in report.layers}
order = [le.layer for le in report.worst_first(mode)]
shown_layers = None
if len(order) > SHOWN_LAYERS[0]:
    pick_n = st.select_slider("Layers in the chart (worst first)", options=[*SHOWN_LAYERS, "all"], **state.bound("sens_limit", [*SHOWN_LAYERS, "all"]))
    shown_layers = None if pick_n == "all" else int(pick_n)
VIEWS = {"1 - cosine (log)": (ONE_MINUS_COS, True), "1 - cosine (linear)": (ONE_MINUS_COS, False), "SNR (dB)": (SNR, False), "cosine": (COSINE, False)}
view = st.radio("Error shown as", list(VIEWS), horizontal=True, **state.bound("sens_measure", list(VIEWS)))
measure, log_axis = VIEWS[view]
tab_cos, tab_snr, tab_table = st.tabs(["Error per layer (click a bar)", "SNR along the graph", "All layers"])
with tab_cos:
    event = st.plotly_chart(
        state.cached(replace(shown, kind="error figure", params=(*shown.params, mode, shown_layers, measure, log_axis)),
                     lambda: layer_error_figure(report, mode, shown_layers, measure, log_axis)),
        on_select="rerun",
        selection_mode="points",
        key="sens_chart",
    )  # fmt: skip
with tab_snr:
    st.plotly_chart(state.cached(replace(shown, kind="snr figure"), lambda: snr_figure(report)), key="sens_snr")
SCI = st.column_config.NumberColumn(format="%.3e")  # 1 - cosine: 9.0e-05 and 2.0e-05, not 0.9999 twice
COS = st.column_config.NumberColumn(format="%.8f")


def _part_cos(le: Any, part: str) -> float:
    f = getattr(le.parts, part) if le.parts is not None else None
    return one_minus_cosine(f.cosine) if f is not None else math.nan


def _all_layers() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "layer": le.layer,
            "op": le.op_type,
            "1 - cos isolated": one_minus_cosine(le.isolated.cosine),
            "1 - cos accumulated": one_minus_cosine(le.accumulated.cosine),
            "1 - cos input only": _part_cos(le, "input"),
            "1 - cos weights only": _part_cos(le, "weights"),
            "1 - cos output only": _part_cos(le, "output"),
            "sensitive part": (le.parts.worst or "") if le.parts is not None else "",
            "SNR isolated dB": le.isolated.snr_db,
            "SNR accumulated dB": le.accumulated.snr_db,
            "cosine isolated": le.isolated.cosine,
            "MSE isolated": le.isolated.mse,
        }
        for le in (layers[n] for n in order)
    )


with tab_table:
    st.dataframe(
        state.cached(replace(shown, kind="layers frame", params=(*shown.params, mode)), _all_layers),
        hide_index=True,
        key="sens_table",
        column_config={
            **{c: SCI for c in ("1 - cos isolated", "1 - cos accumulated", "1 - cos input only", "1 - cos weights only", "1 - cos output only", "MSE isolated")},
            "cosine isolated": COS,
        },
    )

# layers the review keeps in float stay listed (after an analysis they have no figures), so the choice
# can be undone from here
float_layers = {
    stats.infos[n].producer: n
    for n, c in review.choices.items()
    if c.float_kept and n in stats.infos and stats.infos[n].producer and stats.infos[n].producer not in layers
}
listed = order + [n for n in float_layers if n not in layers]

# a clicked bar opens its layer (only when the click is new: the selection outlives reruns)
points = event.get("selection", {}).get("points", []) if event else []
if points:
    p = points[0]
    picked = p.get("customdata")
    picked = picked[0] if isinstance(picked, list) else picked
    if picked is None:  # fall back on the bar's label "layer (op)"
        picked = next((n for n in order if p.get("y") == f"{n} ({layers[n].op_type})"), None)
    if picked in layers and w.clicked_layer != picked:
        w.clicked_layer = picked
        w.layer = picked
if w.layer not in listed:
    w.layer = listed[0]

# --- one layer ---------------------------------------------------------------------------------------
st.subheader("One layer")


@callback
def _pick_layer() -> None:
    w.layer = st.session_state["sens_layer"]


layer = st.selectbox(
    "Layer (worst first)",
    listed,
    key=state.controlled("sens_layer", w.layer),
    on_change=_pick_layer,
    format_func=lambda n: f"{n}  ·  {layers[n].op_type}" if n in layers else f"{n}  ·  kept in float",
)
le = layers.get(layer)
out = le.output_tensor if le is not None else float_layers[layer]
entry = table.tensors.get(out)
target = (entry.scale_from if entry is not None else None) or out
if le is None:
    st.caption(f"{layer} is kept in float: it has no int8 figures. Untick the box below to quantize it again.")
else:
    cols = st.columns(4)
    cols[0].metric("1 - cos isolated", f"{one_minus_cosine(le.isolated.cosine):.3e}", help=error_text(le.isolated))
    cols[1].metric("1 - cos accumulated", f"{one_minus_cosine(le.accumulated.cosine):.3e}", help=error_text(le.accumulated))
    cols[2].metric("SNR isolated", f"{le.isolated.snr_db:.2f} dB")
    cols[3].metric("SNR accumulated", f"{le.accumulated.snr_db:.2f} dB")
    _draw_warnings(for_layer(warnings, layer, {out, target}), "layer")
    worst = le.parts.worst if le.parts is not None else None
    if le.parts is not None and worst is not None:
        st.markdown("**Why is this layer sensitive?**")
        dc1, dc2 = st.columns([3, 2])
        dc1.plotly_chart(state.cached(replace(shown, kind="parts figure", params=(*shown.params, layer)), partial(parts_figure, le)), key="sens_parts")
        wf = getattr(le.parts, worst)
        what = {"input": "its input activations", "weights": "its weights (and bias)", "output": "its output"}[worst]
        dc2.markdown(
            f"The **{worst}** part makes it sensitive: with only {what} quantized, 1 - cos = "
            f"{one_minus_cosine(wf.cosine):.3e}, against {one_minus_cosine(le.isolated.cosine):.3e} with all three."
        )
        if worst == "weights":
            if not state.per_channel():
                dc2.button(
                    "Use per-channel weight scales", key="sens_fix_weights", on_click=_apply, args=(Fix("per_channel", "Use per-channel weight scales"),)
                )
            else:
                dc2.caption("The weights are already per channel: EQ (below) searches this layer's weight scales, or keep the layer in float.")
        else:
            fkey = replace(key, kind="part fix", params=(*key.params, layer, worst))
            if dc2.button(f"Find the method that fixes the {worst}", key="sens_find_fix"):
                found = _long_work(
                    f"Methods for the {worst} of {layer}",
                    lambda rep, token: fix_candidates(
                        model, stats, review, layer, worst, source, [review.default_method, *(m for m in BEST_CANDIDATES if m != review.default_method)],
                        samples=samples, per_channel=state.per_channel(), steps=rep, cancel=token,
                    ),
                )  # fmt: skip
                if found is not None:
                    state.store(fkey, found)
            _cancel_button(dc2, "fix")
            pf = state.stored(fkey)
            if pf is not None:
                now_c = one_minus_cosine(pf.current.cosine)
                dc2.dataframe(
                    pd.DataFrame(
                        {
                            "method": METHOD_LABELS.get(m, m),
                            f"1 - cos, {worst} only": one_minus_cosine(f.cosine),
                            "vs now (x)": one_minus_cosine(f.cosine) / now_c if now_c > 0 else math.nan,
                        }
                        for m, f in pf.by_method.items()
                    ),
                    hide_index=True,
                    key="sens_fix_table",
                    column_config={f"1 - cos, {worst} only": SCI, "vs now (x)": st.column_config.NumberColumn(format="%.3g")},
                )
                best = pf.best
                if best is not None:
                    label = f"Use {METHOD_LABELS.get(best, best)} for {', '.join(pf.tensors)}"
                    fixes = tuple(Fix("method", label, tensor=t, method=best) for t in pf.tensors)
                    dc2.button(label, key="sens_fix_apply", on_click=_apply, args=fixes, type="primary")
if st.toggle("Graph context: what feeds this layer and what it feeds (click to open)", **state.bound("sens_graph")):
    graph_context(stats, "sens", layer=layer, layers=listed)
if target != out:
    st.caption(
        f"Output **{out}** is fused with its activation and quantized with the scale of **{target}** "
        "(as engines fuse Conv+ReLU): the method and threshold below are that tensor's."
    )

t_stats = stats.tensors.get(target)
picks = w.best_picks.get(key.stats, {})
if le is not None and t_stats is not None and not t_stats.empty:
    results, df = state.method_rows(target)
    df = df.copy()
    pick = picks.get(layer)
    if pick is not None:
        df["cosine isolated (this layer)"] = [pick.cosines.get(mth, math.nan) for mth in results]
    st.dataframe(df, hide_index=True, key="sens_methods")

    method_names = list(METHODS)
    current = review.choice(target)

    @callback
    def _set_method() -> None:
        v = st.session_state[f"sens_method::{target}"]
        r = state.review()
        state.set_review(r.with_choice(target, method=None if v == r.default_method else v, override=None))
        w.drafts.pop(target, None)  # another method: a draft typed before is dropped (even when both thresholds agree)

    c1, c2, c3 = st.columns([2, 2, 1])
    c1.selectbox(
        f"Method for {target}",
        method_names,
        format_func=lambda k: str(METHOD_LABELS.get(k, k)) + (" (default)" if k == review.default_method else ""),
        key=state.controlled(f"sens_method::{target}", current.method or review.default_method),
        on_change=_set_method,
    )
    # the box shows the review's threshold, or what the person typed while that threshold stood: a draft
    # made before another method (best method per layer...) is dropped, so "Use it" never writes it
    chosen = float(current.override or (table.tensors[target].threshold if target in table.tensors else t_stats.absmax))
    draft = w.drafts.get(target)
    shown_value = draft[1] if draft is not None and draft[0] == chosen else chosen

    @callback
    def _typed() -> None:
        w.drafts[target] = (chosen, float(st.session_state[f"sens_override::{target}"]))

    typed = c2.number_input(
        "or type a threshold", min_value=0.0, format="%.6g",
        key=state.controlled(f"sens_override::{target}", shown_value), on_change=_typed,
    )  # fmt: skip
    c3.write("")
    if c3.button("Use it", key="sens_use"):
        try:
            state.set_review(review.with_choice(target, override=float(typed)))
            w.drafts.pop(target, None)
            st.rerun()
        except QuantvizError as exc:
            st.error(str(exc))
    if current.override is not None:
        st.caption(f"{target} uses the typed threshold {current.override:.6g}.")
        if st.button("Back to the method", key="sens_reset"):
            state.set_review(review.with_choice(target, override=None))
            st.rerun()


@callback
def _set_float() -> None:
    r = state.review()
    state.set_review(r.with_choice(out, float_kept=bool(st.session_state[f"sens_float::{out}"])))


@callback
def _set_note() -> None:
    r = state.review()
    state.set_review(r.with_choice(out, note=st.session_state[f"sens_note::{out}"].strip()))


st.checkbox(
    "Keep this layer in float (the table, the exports and the next analysis honour it)",
    key=state.controlled(f"sens_float::{out}", review.choice(out).float_kept),
    on_change=_set_float,
)
st.text_area(
    "Note for the team's review (kept in the review file and the JSON table)",
    key=state.controlled(f"sens_note::{out}", review.choice(out).note),
    on_change=_set_note,
)

if le is not None:
    rkey = replace(key, kind="layer error", params=(*key.params, layer))
    if st.button("Recompute this layer's error with the current table", key="sens_recompute"):
        try:
            with st.spinner("Running the layer's isolated copy"):
                state.store(rkey, layer_error(model, table, layer, source, samples=samples, per_channel=state.per_channel()))
        except QuantvizError as exc:
            st.error(str(exc))
    fig = state.stored(rkey)
    if fig is not None:
        now = st.columns(3)
        now[0].metric(
            "1 - cos isolated now", f"{one_minus_cosine(fig.cosine):.3e}", f"{le.isolated.cosine - fig.cosine:+.2e} vs the analysis",
            delta_color="inverse", help=error_text(fig),
        )  # fmt: skip
        now[1].metric("SNR isolated now", f"{fig.snr_db:.2f} dB", f"{fig.snr_db - le.isolated.snr_db:+.2f} dB")
        now[2].metric("MSE isolated now", f"{fig.mse:.3e}")

# --- best method per layer ----------------------------------------------------------------------------
st.subheader("Best method per layer")
st.caption(
    "Analyses the model once per method (that method on every tensor) and picks, for each layer, the method "
    "with the highest isolated cosine: a layer's isolated error depends only on its own input, weight and "
    "output scales. Tensors with a typed threshold keep it."
)
bb_run, bb_cancel = st.columns([2, 5])
best_clicked = bb_run.button("Find and apply the best method per layer", key="sens_best")
_cancel_button(bb_cancel, "best")
if best_clicked:
    order_m = [review.default_method] + [m for m in BEST_CANDIDATES if m != review.default_method]
    result = _long_work(
        "Best method per layer",
        lambda rep, token: best_method_picks(
            model, stats, source, order_m, review.config, samples=samples, per_channel=state.per_channel(), steps=rep,
            cancel=token, profile=review.profile, clip_outputs=review.clip_outputs,
        ),
    )  # fmt: skip
    found = result[0] if result is not None else None
    if found is not None:
        note = next((p.note for p in found.values() if p.note), "")
        start = state.review()
        if note:  # the whole-model check put one method everywhere (quantviz.sensitivity.best_method_picks)
            start = replace(start, default_method=next(iter(found.values())).method)
        applied = apply_method_picks(start, {p.output_tensor: p.method for p in found.values()}, stats, fused=fused_tensors(table))
        state.set_review(applied.review)
        w.best_picks[key.stats] = found
        w.reanalyse = "best method"
        done = f"{len(applied.changed)} tensors changed method: the model is analysed with them."
        state.flash("success", f"{note[:1].upper()}{note[1:]}. {done}" if note else done)
        st.rerun()
if picks:
    method_cols = list(dict.fromkeys(f"1 - cos {METHOD_LABELS.get(k, k)}" for p in picks.values() for k in p.cosines))
    st.caption("1 - cosine of each layer's isolated error with each method (smaller is better); the best one is picked.")
    st.dataframe(
        pd.DataFrame(
            {
                "layer": p.layer,
                "best method": METHOD_LABELS.get(p.method, p.method),
                "1 - cos best": one_minus_cosine(p.cosine),
                **{f"1 - cos {METHOD_LABELS.get(k, k)}": one_minus_cosine(v) for k, v in p.cosines.items()},
            }
            for p in sorted(picks.values(), key=lambda p: p.cosine)
        ),
        hide_index=True,
        key="sens_picks_table",
        column_config={c: SCI for c in ["1 - cos best", *method_cols]},
    )

# --- EQ -----------------------------------------------------------------------------------------------
with st.expander("EasyQuant (EQ): search scales that maximise each layer's cosine", expanded=False):
    e1, e2, e3, e4, e5, e6 = st.columns(6)
    alpha = e1.number_input("alpha", min_value=0.01, **state.bound("eq_alpha"))
    beta = e2.number_input("beta", min_value=0.02, **state.bound("eq_beta"))
    n_cand = e3.number_input("candidates", min_value=2, step=10, **state.bound("eq_n"))
    rounds = e4.number_input("rounds", min_value=1, max_value=5, **state.bound("eq_rounds"))
    eq_samples = e5.number_input("samples", min_value=1, **state.bound("eq_samples"))
    eq_mode = e6.selectbox("mode", EQ_MODES, **state.bound("eq_mode", EQ_MODES))
    eq_run_col, eq_cancel_col = st.columns([1, 6])
    eq_clicked = eq_run_col.button("Run EQ", key="eq_run")
    _cancel_button(eq_cancel_col, "eq")
    if eq_clicked:
        cfg: EQConfig | None
        try:
            cfg = EQConfig(
                alpha=float(alpha), beta=float(beta), n=int(n_cand), rounds=int(rounds), max_samples=int(eq_samples), mode=eq_mode
            )
        except QuantvizError as exc:
            st.error(str(exc))
            cfg = None
        if cfg is not None:
            eq_key = state.derived_key("eq", (calib.data_id, cfg, review.profile, review.clip_outputs), with_review=False)
            eq_done = _long_work(
                "EQ",
                lambda rep, token: calibrate_eq(
                    model, stats, calib, cfg, progress=phased(rep, f"EQ search ({cfg.rounds} round(s), {cfg.n} candidates per scale)", "layer groups"),
                    cancel=token, method_config=review.config, per_channel=state.per_channel(), profile=review.profile,
                    clip_outputs=review.clip_outputs,
                ),
            )  # fmt: skip
            if eq_done is not None:
                state.store(eq_key, eq_done)
                w.last_eq = eq_key
    eq_table = state.stored(w.last_eq) if w.last_eq is not None and w.last_eq.stats == key.stats else None
    if eq_table is not None:
        eq_layers = eq_table.settings.get("eq", {}).get("layers", {})
        st.dataframe(
            pd.DataFrame(
                {
                    "layer": n,
                    "1 - cos at KL": one_minus_cosine(v["initial_cosine"]),
                    "1 - cos after EQ": one_minus_cosine(v["cosine"]),
                    "error left (x)": one_minus_cosine(v["cosine"]) / one_minus_cosine(v["initial_cosine"]),
                    "input scale": v["input_scale"],
                }
                for n, v in eq_layers.items()
            ),
            hide_index=True,
            key="eq_table",
            column_config={
                "1 - cos at KL": SCI, "1 - cos after EQ": SCI, "error left (x)": st.column_config.NumberColumn(format="%.3g"),
                "input scale": st.column_config.NumberColumn(format="%.4e"),
            },  # fmt: skip
        )
        if layer in eq_layers:
            v = eq_layers[layer]
            st.plotly_chart(eq_trace_figure(layer, v["trace"], v["initial_cosine"]), key="eq_trace")
        else:
            st.caption(f"EQ did not search {layer} (EQ searches Conv and Gemm layers); pick one to see its trace.")
        if st.button("Use EQ's scales (activation thresholds and per-channel weight scales)", key="eq_adopt"):
            applied = adopt_table_scales(state.review(), eq_table, stats, method_name="eq")
            state.set_review(applied.review)
            w.reanalyse = "EQ"
            state.flash(
                "success",
                f"{len(applied.changed)} tensors take EQ's thresholds and {len(applied.weights)} weights its scales: every page, the "
                "analysis and the exports use them; the model is analysed with them.",
            )
            st.rerun()
    if state.review().weight_scales and st.button("Back to abs-max weight scales", key="eq_weights_reset"):
        state.set_review(replace(state.review(), weight_scales={}))
        st.rerun()

# --- downloads ------------------------------------------------------------------------------------------
d1, d2 = st.columns(2)
# built when clicked (the HTML embeds plotly.js, several MB): a rerun that switches layer writes neither
csv_name, html_name = artefact_name(stats.model_name, LAYERS_CSV), artefact_name(stats.model_name, REPORT_HTML)
d1.download_button(f"Download {csv_name}", lambda: to_csv(report), csv_name, "text/csv", key="sens_csv")
d2.download_button(
    f"Download {html_name}", lambda: to_html(report), html_name, "text/html", key="sens_html", help="Offline HTML report, plotly embedded"
)
