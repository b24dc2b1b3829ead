"""quantviz home: choose a model and a calibration set, run the collection, see a summary.

The bundled sample model and its calibration set are collected on a session's first visit (and when
another sample is picked), so the first screen already shows data. Coming back here never changes the
current model: only Run, a new sample pick or an opened file does. Other pages read the statistics
collected here; every control's value lives in the session's typed state (ui/state.py).
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from quantviz.config import CollectConfig
from quantviz.data import CalibrationSource, ImagePreprocess, open_source
from quantviz.distributed import ClusterConfig
from quantviz.errors import QuantvizError
from quantviz.limits import UPLOAD_LIMIT_MB
from quantviz.model import LoadedModel
from quantviz.preflight import BLOCKING, INFO, WARNING, blocking, preflight
from quantviz.review import for_statistics, open_review
from quantviz.samples import SAMPLES, Sample
from quantviz.stats import CalibrationStats
from ui import state
from ui.overview_panel import overview_panel
from ui.profile_panel import engine_profile_expander
from ui.state import DATA_SOURCES, MODEL_SOURCES

st.set_page_config(page_title="quantviz", page_icon=":material/insights:", layout="wide")

BIN_CHOICES = (512, 1024, 2048, 4096, 8192)

st.title("quantviz")
st.caption("Look inside INT8 post-training quantization: per-tensor distributions, clipping thresholds, and their cost.")
session = state.session()
state.show_flashes()


def _auto() -> None:
    session.auto_collect = True


def _model_sources() -> tuple[str, ...]:
    return MODEL_SOURCES if state.paths_allowed() else MODEL_SOURCES[:2]


# The chosen model's path or upload bytes: what Ray's workers open (None: an upload no longer at hand)
model_origin: str | bytes | None = None


def _choose_model() -> tuple[LoadedModel | None, Sample | None]:
    global model_origin
    kinds = _model_sources()
    kind = st.radio("Model", kinds, horizontal=True, **state.bound("model_source", kinds))
    if kind == MODEL_SOURCES[0]:
        key = st.selectbox(
            "Sample model", list(SAMPLES), format_func=lambda k: SAMPLES[k].label, **state.bound("sample_model", list(SAMPLES), _auto)
        )  # fmt: skip
        model_origin = str(SAMPLES[key].model)
        return state.model_from(model_origin), SAMPLES[key]
    if kind == MODEL_SOURCES[1]:
        up = st.file_uploader(f"ONNX model (up to {UPLOAD_LIMIT_MB} MB)", type=["onnx"], key="model_upload")
        if up is None:
            kept, _ = state.model_and_source()
            if kept is not None and state.sample_key_of(kept) is None:  # the upload this session made before
                st.caption(f"Keeping {kept.name}, uploaded before; upload another file to replace it.")
                return kept, None
            st.info("Upload an .onnx file, or pick the bundled sample.")
            return None, None
        model_origin = up.getvalue()
        return state.model_from(model_origin, name=up.name), None
    path = st.text_input("Path of an .onnx file on the machine running quantviz", **state.bound("model_path"))
    if not path:
        return None, None
    model_origin = str(state.checked_path(path))
    return state.model_from(model_origin), None


def _preprocess() -> ImagePreprocess:
    with st.expander("Image preprocessing", expanded=True):
        c1, c2, c3 = st.columns(3)
        color = c1.selectbox("Colour", ("rgb", "bgr", "gray"), **state.bound("pre_color", ("rgb", "bgr", "gray")))
        layout = c2.selectbox("Layout", ("nchw", "nhwc"), **state.bound("pre_layout", ("nchw", "nhwc")))
        scale = c3.number_input("Scale", format="%.6f", **state.bound("pre_scale"))
        mean = st.text_input("Mean (per channel, comma separated)", **state.bound("pre_mean"))
        std = st.text_input("Std (per channel, comma separated)", **state.bound("pre_std"))
        try:
            return ImagePreprocess(
                color=color, layout=layout, scale=scale,
                mean=tuple(float(v) for v in mean.split(",")), std=tuple(float(v) for v in std.split(",")),
            )  # fmt: skip
        except ValueError as exc:
            raise QuantvizError("Mean and std must be numbers separated by commas.") from exc


def _choose_data(model: LoadedModel, sample: Sample | None) -> CalibrationSource | None:
    kinds = [k for k in DATA_SOURCES if (k != DATA_SOURCES[0] or sample is not None) and (k != DATA_SOURCES[2] or state.paths_allowed())]
    kind = st.radio("Calibration data", kinds, horizontal=True, **state.bound("data_source", kinds, _auto))
    if kind == DATA_SOURCES[0] and sample is not None:
        return open_source(sample.calib, model.inputs)
    if kind == DATA_SOURCES[1]:
        up = st.file_uploader(
            f"Calibration arrays: .npz keyed by input name, or .npy (first axis = samples; up to {UPLOAD_LIMIT_MB} MB)",
            type=["npz", "npy"],
            key="data_upload",
        )
        if up is None:
            kept_model, kept = state.model_and_source()
            if kept is not None and kept_model is not None and kept_model.sha256 == model.sha256 and not kept.synthetic:
                st.caption(f"Keeping {kept.description}, uploaded before; upload another file to replace it.")
                return kept
            st.info("Upload an .npz or .npy whose arrays match the model inputs.")
            return None
        return open_source(up.getvalue(), model.inputs, name=up.name)
    if kind == DATA_SOURCES[2]:
        path = st.text_input("Path: .npz, .npy, .zip of images, or a folder of images", **state.bound("data_path"))
        if not path:
            return None
        p = state.checked_path(path)
        pre = _preprocess() if p.is_dir() or p.suffix.lower() == ".zip" else None
        return open_source(p, model.inputs, preprocess=pre)
    n = st.number_input("Synthetic samples", min_value=1, max_value=10_000, **state.bound("synthetic_n"))
    return open_source(f"synthetic:{int(n)}", model.inputs)


def _summary(stats: CalibrationStats) -> None:
    infos = stats.infos
    ops = pd.Series([i.op_type for i in infos.values()]).value_counts()
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Tensors", len(stats.tensors))
    c2.metric("Op types", len(ops))
    c3.metric("Samples", stats.samples)
    c4.metric("Histogram bins", stats.config.bins)
    st.caption(f"Model **{stats.model_name}** · data: {stats.data_description}")
    if stats.synthetic:
        st.warning("The calibration data is synthetic (random): thresholds from it say little about real inputs.")
    bad = stats.nonfinite_tensors
    if bad:
        st.warning(
            f"{len(bad)} tensors had NaN or Inf values, kept out of their ranges: "
            + ", ".join(f"{n} ({stats.tensors[n].nonfinite})" for n in bad[:10])
        )
    empty = stats.empty_tensors
    if empty:
        st.warning(f"{len(empty)} tensors were empty (no finite values) and get no threshold: " + ", ".join(empty[:10]))
    overview_panel(stats)
    st.dataframe(ops.rename_axis("op type").reset_index(name="tensors"), hide_index=True, key="op_table", height="content")
    st.page_link("pages/1_Distributions.py", label="Open the distributions", icon=":material/bar_chart:")


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _open_review_file(name: str, raw: bytes) -> None:
    """A review (or statistics) file: its own model's, or, for another model, an offer to apply it."""
    opened = open_review(raw)
    stats_from_file, review_from_file = opened.stats, opened.review
    current = state.current_stats()
    if current is not None and current.model_sha256 != stats_from_file.model_sha256:
        session.pending = state.PendingReview(name, stats_from_file, review_from_file, opened.runs)
        return
    state.put_stats(stats_from_file, review_from_file, opened.runs)
    session.pending = None
    session.auto_collect = False
    st.success(
        f"Opened {stats_from_file.model_name}: {len(stats_from_file.tensors)} tensors, "
        f"{_count(len(review_from_file.notes), 'note')}, {_count(len(review_from_file.choices), 'choice')}"
        + (f", {_count(len(opened.runs), 'analysis run')} (Layer sensitivity, Runs)." if opened.runs else ".")
    )


def _pending_offer() -> None:
    pending = session.pending
    current = state.current_stats()
    if pending is None or current is None:
        return
    matching, rest = for_statistics(pending.review, current)
    st.warning(
        f"'{pending.file_name}' is the review of {pending.stats.model_name} "
        f"(model {pending.stats.model_sha256[:12]}), not of the current model {current.model_name} "
        f"(model {current.model_sha256[:12]})."
    )
    c1, c2, c3 = st.columns(3)
    if c1.button(f"Apply its {_count(len(matching.choices), 'choice')} on tensors {current.model_name} has", key="pending_apply",
                 disabled=not matching.choices and not matching.weight_scales):  # fmt: skip
        mine = state.review()
        merged = mine
        for n, c in matching.choices.items():
            merged = merged.with_choice(n, method=c.method, override=c.override, float_kept=c.float_kept, note=c.note)
        state.set_review(merged)
        session.pending = None
        state.flash("success", f"{_count(len(matching.choices), 'choice')} of '{pending.file_name}' applied to {current.model_name}.")
        st.rerun()
    if c2.button(f"Open it on its own model ({pending.stats.model_name})", key="pending_own"):
        state.put_stats(pending.stats, pending.review, pending.runs)
        session.pending = None
        session.auto_collect = False
        st.rerun()
    if c3.button("Ignore the file", key="pending_ignore"):
        session.pending = None
        st.rerun()
    if rest:
        st.caption(f"{_count(len(rest), 'tensor')} of the file that {current.model_name} lacks (not applied): " + ", ".join(rest[:50]))


with st.sidebar:
    st.header("Open a saved review")
    saved = st.file_uploader(
        f"quantviz review or statistics file (.npz, up to {UPLOAD_LIMIT_MB} MB)", type=["npz"], key="stats_upload"
    )
    # An upload stays in its widget across reruns: open each file once, so choices made after stay.
    if saved is not None and session.opened_file != saved.file_id:
        session.opened_file = saved.file_id
        try:
            _open_review_file(saved.name, saved.getvalue())
        except QuantvizError as exc:
            st.error(str(exc))
_pending_offer()

# filled at the end of the script, so a collection made in this run is the one it names
current_line = st.empty()

model: LoadedModel | None = None
sample: Sample | None = None
source: CalibrationSource | None = None
try:
    model, sample = _choose_model()
    if model is not None:
        st.caption(
            f"**{model.name}** · {len(model.tensors)} float tensors · inputs: "
            + ", ".join(f"{i.name} {i.shape_text()} {i.dtype}" for i in model.inputs)
        )
        findings = preflight(model)
        stop = blocking(findings)
        for item in findings:
            if item.severity == BLOCKING:
                st.error(item.text)
            elif item.severity == WARNING:
                st.warning(item.text)
        infos = [i.text for i in findings if i.severity == INFO]
        if infos:
            with st.expander(f"Model pre-flight ({len(infos)} notes)"):
                st.markdown("\n".join(f"- {t}" for t in infos))
        # a blocking finding (an already quantized model) stops here: no data is asked, Run stays off
        source = None if stop is not None else _choose_data(model, sample)
except QuantvizError as exc:
    st.error(str(exc))

with st.expander("Collection settings"):
    c1, c2, c3 = st.columns(3)
    max_samples = c1.number_input("Samples (0 = all)", min_value=0, step=16, **state.bound("collect_samples"))
    bins = c2.selectbox("Histogram bins", BIN_CHOICES, **state.bound("collect_bins", BIN_CHOICES))
    batch = c3.number_input("Batch size", min_value=1, **state.bound("collect_batch"))
    on_ray = st.checkbox(
        "Collect on a Ray cluster", help="Shards of the data collected by Ray's workers and merged exactly (needs Ray installed).",
        **state.bound("collect_ray"),
    )  # fmt: skip
    address = ""
    if on_ray and state.paths_allowed():  # a visitor of a public server never points it at another machine
        address = st.text_input(
            "Cluster address (empty: a local Ray on this machine; auto; HOST:PORT; ray://HOST:10001)", **state.bound("collect_ray_address")
        ).strip()
config = CollectConfig(samples=int(max_samples) or None, bins=int(bins), batch_size=int(batch))
cluster = ClusterConfig(address=address or None) if on_ray else None

run_col, cancel_col = st.columns([1, 6])
run = run_col.button("Run collection", type="primary", key="run", disabled=source is None)
cancel_col.button("Cancel", key="cancel", help="Stops a running collection (statistics collected before are kept).")

# The bundled sample runs by itself on a first visit or when another sample is picked; coming back to
# Home with another choice in the boxes never replaces the current model without a click.
auto = session.auto_collect and sample is not None and source is not None and session.controls.data_source == DATA_SOURCES[0]
if model is not None and source is not None and (run or auto):
    session.auto_collect = False
    bar = st.progress(0.0, text="Collecting statistics...")

    def _progress(done: int, total: int) -> None:
        bar.progress(done / total if total else 1.0, text=f"Collecting statistics: {done}/{total} samples")

    try:
        state.collected(model, source, config, _progress, cluster=cluster, model_source=model_origin)
        session.pending = None
        bar.empty()
        state.show_flashes()
    except QuantvizError as exc:
        bar.empty()
        st.error(str(exc))

current = state.current_stats()
if current is not None:
    current_line.info(
        f"Current model: **{current.model_name}** · data: {current.data_description}. Pick another below and press Run to switch."
    )
    st.subheader("Summary")
    _summary(current)
    note = session.cluster_notes.get(state.current_key())  # type: ignore[arg-type]
    if note:
        st.caption(note)
    cur_model, _ = state.model_and_source()
    if cur_model is not None:
        try:
            engine_profile_expander(state.current_table(), "home")
        except QuantvizError as exc:
            st.error(str(exc))
