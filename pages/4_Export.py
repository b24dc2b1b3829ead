"""Export: the reviewed table in every format, the review file, and import + diff of another table."""

from __future__ import annotations

import functools
from dataclasses import asdict, replace

import pandas as pd
import streamlit as st

from quantviz.calib import METHOD_LABELS
from quantviz.errors import QuantvizError
from quantviz.export.diff import diff_tables, match_tables
from quantviz.export.names import LAYERS_CSV, REPORT_HTML, REVIEW, artefact_name, download_name
from quantviz.export.registry import FORMATS, ExportOptions, export_bytes, import_bytes
from quantviz.export.tensorrt import DEFAULT_TRT_HEADER, check_header
from quantviz.limits import UPLOAD_LIMIT_MB
from quantviz.qdq import int8_kernels_saturate
from quantviz.review import apply_overrides, review_bytes
from ui import state

st.set_page_config(page_title="quantviz: export", page_icon=":material/download:", layout="wide")
st.title("Export")
stats = state.need_stats()
review = state.review()
model, calib = state.model_and_source()
table = state.current_table()
w = state.work()
assert w is not None  # need_stats() returned: there is a current model
controls = state.session().controls
if controls.trt_header is None:
    controls.trt_header = DEFAULT_TRT_HEADER

kept_float = [n for n, e in table.tensors.items() if e.float_kept]
c = st.columns(4)
c[0].metric("Tensors in the table", len(table.tensors))
label = METHOD_LABELS.get(review.default_method, review.default_method)
c[1].metric("Default method", label.split(" (")[0], help=label)
c[2].metric("Per-tensor choices", len(review.choices))
c[3].metric("Kept in float", len(kept_float))
profile_kept = sum(1 for e in table.tensors.values() if e.extra.get("profile_float"))
if profile_kept:
    st.caption(f"{profile_kept} of them by the engine profile '{table.settings.get('profile')}' (see Engine profile on Home).")
for v in dict(table.settings.get("bias_overflow") or {}).values():
    st.warning(v["text"])
for text in dict(table.settings.get("output_clip_warnings") or {}).values():
    st.warning(text)
if model is None:
    st.info("The model is not loaded on this server (statistics opened from a file): formats that need it (ncnn layer names, QDQ model) are off. Load the model on Home to enable them.")

trt_header = st.text_input(
    "TensorRT cache header (must match the TensorRT version and calibrator that reads it)", **state.bound("trt_header")
)
try:
    options = ExportOptions(model=model, trt_header=check_header(trt_header.strip()))
except QuantvizError as exc:
    st.error(str(exc))
    options = ExportOptions(model=model)

HEAVY = {"qdq"}  # built on request: a rerun must stay fast

st.subheader("Calibration table")
for name, fmt in FORMATS.items():
    left, right = st.columns([3, 2])
    left.markdown(f"**{name}** · {fmt.description}")
    if model is None and fmt.needs_model(table):
        right.caption("needs the model")
        continue
    fmt_options = options
    if name == "qdq":
        reduce_range = right.checkbox(
            "7-bit weights (reduce range)", **state.bound("qdq_reduce_range"),
            help="Weights quantized to -63..63 (each weight scale times 127/63), as onnxruntime's reduce_range.",
        )  # fmt: skip
        if int8_kernels_saturate():
            right.info(
                "This CPU has AVX2 but no VNNI, where onnxruntime's fused int8 kernels can saturate with 8-bit weights: "
                "tick 7-bit weights to run the QDQ model in onnxruntime on this machine."
            )
        fmt_options = replace(options, reduce_range=reduce_range)
    file_name = download_name(stats.model_name, fmt)
    if name in HEAVY and not controls.qdq_prepared:
        if right.button(f"Build {file_name}", key=f"prepare_{name}"):
            controls.qdq_prepared = True
            st.rerun()
        continue
    try:
        # written once per table and options, not on every rerun (the QDQ model runs onnxruntime's quantizer)
        export_key = state.derived_key("export", (name, fmt_options.reduce_range, fmt_options.trt_header, model is not None))
        data = state.cached(export_key, functools.partial(export_bytes, table, name, fmt_options))
    except QuantvizError as exc:
        right.error(str(exc))
        continue
    right.download_button(f"Download {file_name}", data, file_name=file_name, mime=fmt.mime, key=f"export_{name}")

st.subheader("Analysis report")
st.caption("An HTML page, readable offline (plotly embedded): end-to-end figures, per-layer cosine and SNR, the scales.")
last = w.last_analysis
report = state.stored(last) if last is not None and last.stats == state.current_key() else None
if report is not None and last is not None and (last.review, last.per_channel) != (review.fingerprint(), state.per_channel()):
    report = None  # an analysis of another table: not this one's report
if report is None:
    if model is None or calib is None:
        st.caption("The analysis runs the model: load the model and its data on Home.")
    elif st.button("Analyse the current table (calibration set, up to 256 samples)", key="export_analyse"):
        from quantviz.sensitivity import analyze

        bar = st.progress(0.0, text="Analysing")
        try:
            n = min(256, calib.num_samples)
            report = analyze(
                model, table, calib, samples=n, per_channel=state.per_channel(),
                progress=lambda d, t: bar.progress(min(d / max(t, 1), 1.0), text=f"Analysing: {d} / {t} samples"),
            )  # fmt: skip
            key = state.derived_key("analysis", (calib.data_id, n, False))
            state.store(key, report)
            w.last_analysis = key
        except QuantvizError as exc:
            st.error(str(exc))
        finally:
            bar.empty()
if report is not None:
    from quantviz.report import to_csv, to_html

    h1, h2 = st.columns(2)
    html_name, csv_name = artefact_name(stats.model_name, REPORT_HTML), artefact_name(stats.model_name, LAYERS_CSV)
    h1.download_button(f"Download {html_name}", to_html(report), html_name, "text/html", key="export_html")
    h2.download_button(f"Download {csv_name}", to_csv(report), csv_name, "text/csv", key="export_layers")

st.subheader("Your choices")
rows = [
    {"tensor or weight": n, "method": c.method or "", "typed threshold": c.override, "kept in float": c.float_kept, "note": c.note}
    for n, c in review.choices.items()
] + [
    {"tensor or weight": n, "method": "EQ weight scales", "typed threshold": None, "kept in float": False, "note": ""}
    for n in review.weight_scales
]
if not rows:
    st.caption(f"No choice yet: every tensor takes the default method ({label}).")
else:
    st.caption("Every choice of this model's review; select rows and remove them (each goes back to the default method).")
    chosen_rows = st.dataframe(
        pd.DataFrame(rows), hide_index=True, key="choices_table", on_select="rerun", selection_mode="multi-row"
    )  # fmt: skip
    picked = [str(rows[i]["tensor or weight"]) for i in chosen_rows.selection.rows if i < len(rows)]
    r1, r2 = st.columns(2)
    if r1.button(f"Remove the {len(picked)} selected", key="choices_remove", disabled=not picked):
        state.set_review(review.without(picked, weights=picked))
        state.flash("success", f"Removed: {', '.join(picked)}.")
        st.rerun()
    if r2.button("Remove every choice", key="choices_clear"):
        state.set_review(review.without(review.choices, weights=review.weight_scales))
        state.flash("success", f"Every choice removed ({len(rows)}); the review keeps its default method.")
        st.rerun()

st.subheader("Review")
st.caption("One file with the statistics, every choice and every note, and the Layer sensitivity runs: open it on Home (sidebar) to carry on the review.")
runs = state.runs()  # the model's analysis runs travel in the review file (quantviz.runs)
review_file = state.cached(
    state.derived_key("review file", tuple((r.id, r.name) for r in runs)), lambda: review_bytes(stats, review, runs)
)  # the statistics are compressed into it: once per review, not on every rerun
review_name = artefact_name(stats.model_name, REVIEW)
st.download_button(
    f"Download {review_name}", review_file, file_name=review_name, mime="application/octet-stream", key="export_review"
)

st.subheader("Compare with another table")
up = st.file_uploader(
    f"A table in any supported format ({', '.join(FORMATS)}; up to {UPLOAD_LIMIT_MB} MB)", key="import_table"
)
if up is not None:
    try:
        other = import_bytes(up.getvalue(), None, ExportOptions(model=model), filename=up.name)
    except QuantvizError as exc:
        st.error(str(exc))
    else:
        rows = pd.DataFrame([asdict(r) for r in diff_tables(table, other)])
        match = match_tables(table, other)
        for text in match.warnings():
            st.warning(text)
        if match.few:
            with st.expander(f"The {len(match.unknown)} tensors of {up.name} this model lacks", expanded=True):
                st.dataframe(pd.DataFrame({"tensor": match.unknown}), hide_index=True, key="import_unknown")
        st.caption(
            f"{len(other.tensors)} tensors read from {up.name}, {len(match.matched)} of them in this model "
            f"({len(match.uncovered)} of the model's tensors not in the file); sorted by how far the thresholds differ."
        )
        st.dataframe(rows, hide_index=True, key="diff_table")
        thresholds = {n: float(e.threshold) for n, e in other.tensors.items()}
        if thresholds and st.button(f"Use its {len(thresholds)} thresholds as overrides", key="adopt_import"):
            applied = apply_overrides(state.review(), thresholds, stats)
            state.set_review(applied.review)
            state.flash(
                "success",
                f"{len(applied.changed)} thresholds adopted; they show on every page and in every export."
                + (f" {len(applied.skipped)} left out: " + ", ".join(f"{n} ({why})" for n, why in list(applied.skipped.items())[:10])
                   if applied.skipped else ""),
            )  # fmt: skip
            st.rerun()
