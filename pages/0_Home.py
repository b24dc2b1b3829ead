"""quantviz home: choose a model and a calibration set, run the collection, see a summary.

The bundled sample model and its calibration set are chosen on first load, so the first screen
already shows data. Pages (pages/) read the statistics collected here.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from quantviz.config import DEFAULT_BATCH_SIZE, DEFAULT_BINS, UPLOAD_LIMIT_MB, CollectConfig
from quantviz.data import ImagePreprocess, open_source
from quantviz.errors import QuantvizError
from quantviz.review import load_review
from quantviz.samples import DEFAULT_SAMPLE, SAMPLES
from ui import state

st.set_page_config(page_title="quantviz", page_icon=":material/insights:", layout="wide")

MODEL_SOURCES = ("Bundled sample", "Upload a model", "Path on this machine")
DATA_SOURCES = ("Sample calibration set", "Upload .npz / .npy", "Path on this machine", "Synthetic (random)")
BIN_CHOICES = (512, 1024, 2048, 4096, 8192)

st.title("quantviz")
st.caption("Look inside INT8 post-training quantization: per-tensor distributions, clipping thresholds, and their cost.")


def _choose_model():
    kind = st.radio("Model", MODEL_SOURCES, key="model_source", horizontal=True)
    if kind == MODEL_SOURCES[0]:
        key = st.selectbox(
            "Sample model", list(SAMPLES), index=list(SAMPLES).index(DEFAULT_SAMPLE),
            format_func=lambda k: SAMPLES[k].label, key="sample_model",
        )  # fmt: skip
        return state.model_from(str(SAMPLES[key].model)), SAMPLES[key]
    if kind == MODEL_SOURCES[1]:
        up = st.file_uploader(f"ONNX model (up to {UPLOAD_LIMIT_MB} MB)", type=["onnx"], key="model_upload")
        if up is None:
            st.info("Upload an .onnx file, or pick the bundled sample.")
            return None, None
        return state.model_from(up.getvalue(), name=up.name), None
    path = st.text_input("Path of an .onnx file on the machine running quantviz", key="model_path")
    if not path:
        return None, None
    return state.model_from(path.strip()), None


def _choose_data(model, sample):
    kinds = DATA_SOURCES if sample is not None else DATA_SOURCES[1:]
    kind = st.radio("Calibration data", kinds, key="data_source", horizontal=True)
    if kind == DATA_SOURCES[0]:
        return open_source(sample.calib, model.inputs)
    if kind == DATA_SOURCES[1]:
        up = st.file_uploader(
            f"Calibration arrays: .npz keyed by input name, or .npy (first axis = samples; up to {UPLOAD_LIMIT_MB} MB)",
            type=["npz", "npy"],
            key="data_upload",
        )
        if up is None:
            st.info("Upload an .npz or .npy whose arrays match the model inputs.")
            return None
        return open_source(up.getvalue(), model.inputs, name=up.name)
    if kind == DATA_SOURCES[2]:
        path = st.text_input("Path: .npz, .npy, .zip of images, or a folder of images", key="data_path")
        if not path:
            return None
        pre = None
        p = Path(path.strip())
        if p.is_dir() or p.suffix.lower() == ".zip":
            with st.expander("Image preprocessing", expanded=True):
                c1, c2, c3 = st.columns(3)
                color = c1.selectbox("Colour", ("rgb", "bgr", "gray"), key="pre_color")
                layout = c2.selectbox("Layout", ("nchw", "nhwc"), key="pre_layout")
                scale = c3.number_input("Scale", value=1 / 255, format="%.6f", key="pre_scale")
                mean = st.text_input("Mean (per channel, comma separated)", "0", key="pre_mean")
                std = st.text_input("Std (per channel, comma separated)", "1", key="pre_std")
                try:
                    pre = ImagePreprocess(
                        color=color, layout=layout, scale=scale,
                        mean=tuple(float(v) for v in mean.split(",")), std=tuple(float(v) for v in std.split(",")),
                    )  # fmt: skip
                except ValueError as exc:
                    raise QuantvizError("Mean and std must be numbers separated by commas.") from exc
        return open_source(p, model.inputs, preprocess=pre)
    n = st.number_input("Synthetic samples", min_value=1, max_value=10_000, value=64, key="synthetic_n")
    return open_source(f"synthetic:{int(n)}", model.inputs)


def _summary(stats) -> None:
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
    st.dataframe(
        ops.rename_axis("op type").reset_index(name="tensors"), hide_index=True, key="op_table",
        height=min(36 * (len(ops) + 1) + 3, 600),  # every op type in view, no inner scroll for small models
    )  # fmt: skip
    st.page_link("pages/1_Distributions.py", label="Open the distributions", icon=":material/bar_chart:")


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


with st.sidebar:
    st.header("Open a saved review")
    saved = st.file_uploader(
        f"quantviz review or statistics file (.npz, up to {UPLOAD_LIMIT_MB} MB)", type=["npz"], key="stats_upload"
    )
    # An upload stays in its widget across reruns: open each file once, so choices made after stay.
    if saved is not None and st.session_state.get("qv_opened_file") != saved.file_id:
        try:
            stats_from_file, review_from_file = load_review(saved.getvalue())
            st.session_state[state.STATS_KEY] = state.put_stats(stats_from_file)
            state.set_review(review_from_file)
            st.session_state["qv_opened_file"] = saved.file_id
            st.success(
                f"Opened {stats_from_file.model_name}: {len(stats_from_file.tensors)} tensors, "
                f"{_count(len(review_from_file.notes), 'note')}, {_count(len(review_from_file.choices), 'choice')}."
            )
        except QuantvizError as exc:
            st.error(str(exc))

model = sample = source = None
try:
    model, sample = _choose_model()
    if model is not None:
        st.caption(
            f"**{model.name}** · {len(model.tensors)} float tensors · inputs: "
            + ", ".join(f"{i.name} {i.shape_text()} {i.dtype}" for i in model.inputs)
        )
        source = _choose_data(model, sample)
except QuantvizError as exc:
    st.error(str(exc))

with st.expander("Collection settings"):
    c1, c2, c3 = st.columns(3)
    max_samples = c1.number_input("Samples (0 = all)", min_value=0, value=0, step=16, key="collect_samples")
    bins = c2.selectbox("Histogram bins", BIN_CHOICES, index=BIN_CHOICES.index(DEFAULT_BINS), key="collect_bins")
    batch = c3.number_input("Batch size", min_value=1, value=DEFAULT_BATCH_SIZE, key="collect_batch")
config = CollectConfig(samples=int(max_samples) or None, bins=int(bins), batch_size=int(batch))

run_col, cancel_col = st.columns([1, 6])
run = run_col.button("Run collection", type="primary", key="run", disabled=source is None)
cancel_col.button("Cancel", key="cancel", help="Stops a running collection (statistics collected before are kept).")

# The bundled sample runs by itself, so the first screen shows data without any click.
current_key = st.session_state.get(state.STATS_KEY)
auto = (
    st.session_state.get("qv_opened_file") is None
    and sample is not None
    and source is not None
    and st.session_state.get("data_source", DATA_SOURCES[0]) == DATA_SOURCES[0]
    and (current_key is None or (current_key.model_sha256, current_key.data_id) != (model.sha256, source.data_id))
)
if source is not None and (run or auto):
    bar = st.progress(0.0, text="Collecting statistics...")

    def _progress(done: int, total: int) -> None:
        bar.progress(done / total if total else 1.0, text=f"Collecting statistics: {done}/{total} samples")

    try:
        st.session_state[state.STATS_KEY] = state.collected(model, source, config, _progress)
        bar.empty()
    except QuantvizError as exc:
        bar.empty()
        st.error(str(exc))

current = state.current_stats()
if current is not None:
    st.subheader("Summary")
    _summary(current)
