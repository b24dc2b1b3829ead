"""Figures of a layer's graph context: its neighbourhood as a small clickable graph
(quantviz.graph.Neighbourhood), its input and output histograms with the table's clip points, and its
per-channel weight ranges with each channel's clip point (127 x scale). Data in, figure out."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import plotly.graph_objects as go

from quantviz.calib import METHOD_LABELS
from quantviz.config import INT8_MAX
from quantviz.graph import Neighbourhood
from quantviz.plots import METHOD_COLORS
from quantviz.stats import TensorStats
from quantviz.table import TensorEntry
from quantviz.weights import WeightQuant

NODE_COLOR = "#1f77b4"
CENTRE_COLOR = "#d62728"
INPUT_COLOR = "#2ca02c"
LABEL_CHARS = 22  # a node's name is cut to this on the picture (hover shows all of it)


def _short(name: str) -> str:
    return name if len(name) <= LABEL_CHARS else "…" + name[-(LABEL_CHARS - 1) :]


def node_positions(hood: Neighbourhood) -> dict[str, tuple[float, float]]:
    """x: the level (hops from the centre); y: nodes of a level spread evenly around 0, in the order
    the walk found them."""
    by_level: dict[int, list[str]] = defaultdict(list)
    for n in hood.nodes:
        by_level[n.level].append(n.name)
    pos: dict[str, tuple[float, float]] = {}
    for level, names in by_level.items():
        k = len(names)
        for i, name in enumerate(names):
            pos[name] = (float(level), (k - 1) / 2 - i)
    return pos


def _figure(spec: dict[str, Any]) -> go.Figure:
    """A figure from a plain spec, without plotly's per-property validation: these figures are built
    on every first visit of a tensor and must stay within the rerun budget (validation is ~8x the cost;
    the specs here use only documented attributes, and the tests read them back)."""
    return go.Figure(spec, _validate=False)


def neighbourhood_figure(hood: Neighbourhood, title: str | None = None) -> go.Figure:
    """The neighbourhood as a graph, data flowing left to right. Trace 0: the edges; trace 1: one
    marker a tensor (hover: its name; customdata: the tensor, a click opens it); trace 2: the nodes
    (customdata: the tensor a click opens)."""
    pos = node_positions(hood)
    ex: list[float | None] = []
    ey: list[float | None] = []
    mx, my, mt = [], [], []
    for e in hood.edges:
        (x0, y0), (x1, y1) = pos[e.source], pos[e.target]
        ex += [x0, x1, None]
        ey += [y0, y1, None]
        mx.append((x0 + x1) / 2)
        my.append((y0 + y1) / 2)
        mt.append(e.tensor)
    names = [n.name for n in hood.nodes]
    colors = [CENTRE_COLOR if n.level == 0 else INPUT_COLOR if n.op_type == "Input" else NODE_COLOR for n in hood.nodes]
    cut = ", ".join(f"{k} more at {lvl:+d}" for lvl, k in sorted(hood.cut.items()))
    levels = [n.level for n in hood.nodes]
    span = max(levels.count(lvl) for lvl in set(levels))
    data = [
        {"type": "scatter", "x": ex, "y": ey, "mode": "lines", "line": {"color": "#aaaaaa", "width": 1.5}, "hoverinfo": "skip", "showlegend": False},
        {"type": "scatter", "x": mx, "y": my, "mode": "markers", "customdata": mt, "showlegend": False, "name": "tensors",
         "marker": {"size": 9, "symbol": "diamond", "color": ["#ff7f0e" if t == hood.tensor else "#bbbbbb" for t in mt]},
         "hovertemplate": "tensor %{customdata}<br>click to open<extra></extra>"},
        {"type": "scatter", "x": [pos[n][0] for n in names], "y": [pos[n][1] for n in names], "mode": "markers+text", "showlegend": False,
         "name": "nodes", "text": [f"{n.op_type}<br>{_short(n.name)}" for n in hood.nodes], "textposition": "bottom center",
         "textfont": {"size": 10}, "customdata": [n.opens or "" for n in hood.nodes],
         "hovertext": [f"{n.op_type} {n.name}<br>" + (f"opens {n.opens}" if n.opens else "no tensor to open") for n in hood.nodes],
         "hovertemplate": "%{hovertext}<extra></extra>",
         "marker": {"size": [22 if n.level == 0 else 16 for n in hood.nodes], "symbol": "square", "color": colors,
                    "line": {"width": 1, "color": "#333333"}}},
    ]  # fmt: skip
    layout = {
        "title": {"text": title or f"Graph context of {_short(hood.centre)}" + (f" ({cut})" if cut else "")},
        "xaxis": {"visible": False, "range": [min(levels) - 0.6, max(levels) + 0.6]},
        "yaxis": {"visible": False, "range": [-(span / 2) - 0.3, span / 2 + 0.1]},
        "height": max(260, 90 * span + 80),
        "margin": {"l": 10, "r": 10, "t": 40, "b": 10},
        "plot_bgcolor": "white",
    }
    return _figure({"data": data, "layout": layout})


def clip_histogram_figure(t: TensorStats, entry: TensorEntry | None, role: str) -> go.Figure:
    """One tensor's signed histogram (log counts) with the table's clip points as vertical lines, the
    clipped tails shaded (none when it is kept in float or has no entry). The same picture as
    quantviz.plots.histogram_figure for one method, built without validation (see _figure)."""
    hist = t.signed_hist
    nz = np.flatnonzero(hist.counts)
    lo, hi = (int(nz[0]), int(nz[-1]) + 1) if nz.size else (0, 1)
    xmin, xmax = float(hist.edges[lo]), float(hist.edges[hi])
    shapes: list[dict[str, Any]] = []
    notes: list[dict[str, Any]] = []
    clipped = entry is not None and not entry.float_kept
    if entry is not None and clipped:
        color = METHOD_COLORS.get(entry.method, "#000000")
        for j, x in enumerate((entry.min, entry.max)):
            shapes.append({"type": "line", "x0": x, "x1": x, "y0": 0, "y1": 1, "xref": "x", "yref": "paper", "line": {"color": color, "width": 2}})
            notes.append({"x": x, "y": 1.0, "xref": "x", "yref": "paper", "text": f"{x:.4g}", "showarrow": False, "font": {"color": color, "size": 11},
                          "xanchor": "left" if j else "right", "bgcolor": "rgba(255,255,255,0.7)"})  # fmt: skip
        for x0, x1 in ((xmin, entry.min), (entry.max, xmax)):
            if x1 > x0:
                shapes.append({"type": "rect", "x0": x0, "x1": x1, "y0": 0, "y1": 1, "xref": "x", "yref": "paper", "fillcolor": color,
                               "opacity": 0.08, "line": {"width": 0}, "layer": "below"})  # fmt: skip
    what = "kept in float" if entry is not None and entry.float_kept else "no table entry" if entry is None else METHOD_LABELS.get(entry.method, entry.method)
    data = [{"type": "bar", "x": hist.centers[lo:hi], "y": hist.counts[lo:hi], "width": hist.width, "marker": {"color": "#7f7f7f"},
             "name": "count", "hovertemplate": "x=%{x:.4g}<br>count=%{y}<extra></extra>"}]  # fmt: skip
    layout = {
        "title": {"text": f"{role}: {_short(t.name)} ({what})", "font": {"size": 13}},
        "shapes": shapes, "annotations": notes, "xaxis": {"title": {"text": "x"}}, "yaxis": {"title": {"text": "count"}, "type": "log"},
        "bargap": 0, "showlegend": False, "height": 300, "margin": {"l": 50, "r": 10, "t": 40, "b": 40},
        "meta": {"tensor": t.name, "role": role},
    }  # fmt: skip
    return _figure({"data": data, "layout": layout})


def weight_clip_figure(w: WeightQuant, title: str | None = None) -> go.Figure:
    """Per-output-channel weight abs-max (bars) and each channel's clip point, 127 x scale (markers):
    a marker below its bar clips that channel (EQ's scales can)."""
    ch = np.arange(w.absmax.size)
    clip = w.scales.astype(np.float64) * INT8_MAX
    if clip.size == 1 and ch.size > 1:
        clip = np.full(ch.size, clip[0])
    positive = w.absmax[w.absmax > 0]
    ratio = float(w.absmax.max() / positive.min()) if positive.size else 1.0
    data = [
        {"type": "bar", "x": ch, "y": w.absmax, "name": "abs-max", "marker": {"color": "#7f7f7f"},
         "hovertemplate": "channel %{x}<br>abs-max %{y:.4g}<extra></extra>"},
        {"type": "scatter", "x": ch, "y": clip, "name": "clip (127 x scale)", "mode": "markers",
         "marker": {"color": METHOD_COLORS["kl"], "size": 10, "symbol": "line-ew-open", "line": {"width": 2, "color": METHOD_COLORS["kl"]}},
         "hovertemplate": "channel %{x}<br>clip %{y:.4g}<extra></extra>"},
    ]  # fmt: skip
    layout = {
        "title": {"text": title or f"weights {_short(w.name)}: {'per channel' if w.per_channel else 'per tensor'}, max/min {ratio:.1f}",
                  "font": {"size": 13}},
        "xaxis": {"title": {"text": "output channel (clip at 127 x scale)"}}, "yaxis": {"title": {"text": "|w|"}},
        "height": 300, "bargap": 0.1, "margin": {"l": 50, "r": 10, "t": 40, "b": 40},
        "legend": {"orientation": "h", "y": 1.0, "x": 1, "xanchor": "right", "yanchor": "bottom"}, "meta": {"weight": w.name},
    }  # fmt: skip
    return _figure({"data": data, "layout": layout})
