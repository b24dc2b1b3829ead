"""Graph context of a tensor or a layer (Distributions and Layer sensitivity): its producers and
consumers two hops each way as a clickable graph (quantviz.graph, quantviz.graph_view), with the
layer's input and output histograms and its per-channel weight ranges side by side, each with the
current table's clip points. A click on a node or a tensor opens that tensor (and its layer)."""

from __future__ import annotations

from collections.abc import Collection
from functools import partial

import streamlit as st

from quantviz.graph import GraphIndex, Neighbourhood
from quantviz.graph_view import clip_histogram_figure, neighbourhood_figure, weight_clip_figure
from quantviz.stats import CalibrationStats
from quantviz.weights import WeightQuant
from ui import state

SHOWN_INPUTS = 2  # input histograms drawn beside the output (an Add or Concat may read more)


def graph_index(stats: CalibrationStats) -> GraphIndex:
    """The float tensors' graph, built once per statistics (from the model when it is loaded, else from
    the statistics' own producer and consumer names)."""
    model, _ = state.model_and_source()

    def make() -> GraphIndex:
        if model is not None and model.sha256 == stats.model_sha256:
            return GraphIndex.from_onnx(model.proto.graph.node, stats.tensors)
        return GraphIndex.from_infos({n: i for n, i in stats.infos.items() if n in stats.tensors})

    return state.cached(state.derived_key("graph index", (model is not None,), with_review=False), make)


def _weights_of(stats: CalibrationStats, hood: Neighbourhood, index: GraphIndex) -> list[WeightQuant]:
    """The constant weights of the centre layer (for a BatchNormalization, the Conv folded into it)."""
    model, _ = state.model_and_source()
    if model is None:
        return []
    node = hood.centre
    g = index.nodes.get(node)
    if g is not None and g.op_type == "BatchNormalization" and g.inputs:
        node = index.producer.get(g.inputs[0], node)
    return [w for w in state.weights_of(model, state.per_channel()).values() if w.node == node]


def graph_context(
    stats: CalibrationStats, where: str, tensor: str | None = None, layer: str | None = None, layers: Collection[str] | None = None,
    show_output: bool = True,
) -> None:
    """Draw the context of a tensor (centred on its producer) or of a layer. where: a short page name,
    for widget keys. layers: the layers the page lists (Layer sensitivity): a click on one of them opens
    it there, a click on anything else opens the tensor on Distributions; None: the tensor opens here.
    show_output: False where the page already draws the tensor's histogram with its clip points."""
    index = graph_index(stats)
    if layer is not None and layer not in index.nodes and tensor is None:
        st.caption(f"{layer} is not in the graph of the float tensors.")
        return
    hood = index.neighbourhood(tensor=tensor, node=layer if tensor is None else None)
    w = state.current_work()
    table = state.current_table()
    fig = state.cached(
        state.derived_key("graph figure", (hood.centre, hood.tensor), with_review=False), lambda: neighbourhood_figure(hood)
    )
    chart_key = f"{where}_graph::{hood.centre}"  # a new centre is a new chart: no stale selection
    event = st.plotly_chart(fig, on_select="rerun", selection_mode="points", key=chart_key)
    points = event.get("selection", {}).get("points", []) if event else []
    picked = points[0].get("customdata") if points else None
    picked = picked[0] if isinstance(picked, list) and picked else picked
    if not isinstance(picked, str) or picked not in stats.tensors:
        w.graph_clicked = None
    elif w.graph_clicked != (chart_key, picked):  # a new click (a selection outlives reruns)
        w.graph_clicked = (chart_key, picked)
        w.tensor = picked
        producer = index.producer.get(picked)
        if layers is None:
            st.rerun()
        if producer in layers:
            w.layer = producer
            st.rerun()
        st.switch_page("pages/1_Distributions.py")  # not a layer of the analysis: its distribution
    st.caption("Data flows left to right; red: this layer, green: graph inputs; diamonds are tensors. Click a node or a tensor to open it.")
    centre = index.nodes.get(hood.centre)
    inputs = [i for i in (centre.inputs if centre is not None else ()) if i in stats.tensors][:SHOWN_INPUTS]
    output = hood.tensor if hood.tensor in stats.tensors else None
    weights = _weights_of(stats, hood, index)
    panels = [("input", n) for n in inputs] + ([("output", output)] if output and show_output else [])
    cols = st.columns(len(panels) + (1 if weights else 0) or 1)
    for col, (role, name) in zip(cols, panels, strict=False):
        t = stats.tensors[name]
        if t.empty:
            col.caption(f"{role} {name}: no finite values.")
            continue
        entry = table.tensors.get(name)
        col.plotly_chart(
            state.cached(state.derived_key("context histogram", (name, role)), partial(clip_histogram_figure, t, entry, role)),
            key=f"{where}_ctx_{role}::{name}",
        )  # fmt: skip
    if weights:
        wq = weights[0]
        override = table.weights.get(wq.name, {}).get("scales") if table.weights else None
        fig_w = state.cached(
            state.derived_key("context weights", (wq.name,)), lambda: weight_clip_figure(wq if override is None else _with_scales(wq, override))
        )
        cols[-1].plotly_chart(fig_w, key=f"{where}_ctx_w::{wq.name}")
    elif model_missing():
        st.caption("Weights: load the model on Home to see them.")


def model_missing() -> bool:
    model, _ = state.model_and_source()
    return model is None


def _with_scales(w: WeightQuant, scales: object) -> WeightQuant:
    """The weight with the table's scales (EQ's adopted ones), when they fit its channels."""
    from dataclasses import replace

    import numpy as np

    arr = np.asarray(scales, dtype=np.float32).reshape(-1)
    return replace(w, scales=arr) if arr.size == w.scales.size else w
