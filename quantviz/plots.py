"""Plotly figures of statistics and thresholds (data in, figure out; the pages only display them)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import plotly.graph_objects as go

from quantviz.calib import METHOD_LABELS, Threshold
from quantviz.calib.log2 import Log2Comparison
from quantviz.runs import Comparison, gain
from quantviz.stats import TensorStats

METHOD_COLORS = {
    "minmax": "#d62728",
    "ema": "#ff7f0e",
    "percentile": "#9467bd",
    "mse": "#2ca02c",
    "kl": "#1f77b4",
    "kl_ncnn": "#bcbd22",
    "aciq": "#8c564b",
    "eq": "#e377c2",
    "override": "#17becf",
}


def histogram_figure(
    stats: TensorStats,
    thresholds: Mapping[str, Threshold],
    *,
    signed: bool = True,
    log_y: bool = True,
    title: str | None = None,
) -> go.Figure:
    """The tensor's histogram with each method's clip points as labelled vertical lines, tails shaded."""
    hist = stats.signed_hist if signed else stats.abs_hist
    counts = hist.counts
    nz = np.flatnonzero(counts)
    lo, hi = (int(nz[0]), int(nz[-1]) + 1) if nz.size else (0, 1)
    centers = hist.centers[lo:hi]
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=centers,
            y=counts[lo:hi],
            width=hist.width,
            marker_color="#7f7f7f",
            name="count",
            hovertemplate="x=%{x:.4g}<br>count=%{y}<extra></extra>",
        )
    )
    xmin, xmax = float(hist.edges[lo]), float(hist.edges[hi])
    # Shapes and annotations are built as plain dicts and set once: plotly's add_vline/add_vrect
    # validate the whole layout on every call (about 20 ms each), too slow for a rerun budget.
    shapes: list[dict[str, Any]] = []
    notes: list[dict[str, Any]] = []
    for i, (key, th) in enumerate(thresholds.items()):
        color = METHOD_COLORS.get(key, METHOD_COLORS.get(th.method, "#000000"))
        label = METHOD_LABELS.get(key, key)
        points = [th.min, th.max] if signed else [th.threshold]
        for j, x in enumerate(points):
            shapes.append({"type": "line", "x0": x, "x1": x, "y0": 0, "y1": 1, "xref": "x", "yref": "paper",
                           "line": {"color": color, "width": 2, "dash": "dash" if i % 2 else "solid"}})  # fmt: skip
            notes.append({"x": x, "y": 1.0 - 0.06 * i, "xref": "x", "yref": "paper", "text": f"{label} {x:.4g}", "showarrow": False,
                          "font": {"color": color, "size": 11}, "xanchor": "left" if j or not signed else "right",
                          "bgcolor": "rgba(255,255,255,0.7)"})  # fmt: skip
        # shade the clipped tails of each method, faintly
        tails = []
        if signed and th.min > xmin:
            tails.append((xmin, th.min))
        upper = th.max if signed else th.threshold
        if upper < xmax:
            tails.append((upper, xmax))
        for x0, x1 in tails:
            shapes.append({"type": "rect", "x0": x0, "x1": x1, "y0": 0, "y1": 1, "xref": "x", "yref": "paper",
                           "fillcolor": color, "opacity": 0.06, "line": {"width": 0}, "layer": "below"})  # fmt: skip
    fig.update_layout(
        shapes=shapes,
        annotations=notes,
        title=title or stats.name,
        xaxis_title="x" if signed else "|x|",
        yaxis_title="count",
        yaxis_type="log" if log_y else "linear",
        bargap=0,
        showlegend=False,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        height=420,
    )
    return fig


def curve_figure(th: Threshold, title: str | None = None) -> go.Figure:
    """A method's curve (e.g. KL divergence against threshold) with its chosen point marked."""
    if th.curve is None:
        raise ValueError(f"method {th.method} returned no curve")
    c = th.curve
    finite = np.isfinite(c.y)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=c.x[finite], y=c.y[finite], mode="lines", name=c.y_label, line={"color": METHOD_COLORS.get(th.method, "#1f77b4")}))
    idx = int(np.argmin(np.abs(c.x - c.chosen)))
    fig.add_trace(
        go.Scatter(
            x=[c.chosen], y=[c.y[idx]], mode="markers+text", marker={"size": 11, "color": "#d62728", "symbol": "x"},
            text=[f"min at {c.chosen:.4g}"], textposition="top right", name="chosen",
        )
    )  # fmt: skip
    fig.update_layout(
        title=title or f"{METHOD_LABELS.get(th.method, th.method)}: {c.y_label} against {c.x_label}",
        xaxis_title=c.x_label,
        yaxis_title=c.y_label,
        showlegend=False,
        height=360,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
    )
    return fig


def kl_curves_figure(curves: list[Threshold], log_y: bool = False, title: str | None = None) -> go.Figure:
    """Several KL methods' curves on one axis, each with its argmin marked (traces: curve, marker, in
    the order given). Infinite points are left out; log_y puts the y-axis on a log scale, where the
    flat bottom of a curve and its minimum stay visible (zeros, a perfect fit, are then left out too)."""
    fig = go.Figure()
    for th in curves:
        if th.curve is None:
            raise ValueError(f"method {th.method} returned no curve")
        c = th.curve
        keep = np.isfinite(c.y) & ((c.y > 0) if log_y else True)
        color = METHOD_COLORS.get(th.method, "#1f77b4")
        label = METHOD_LABELS.get(th.method, th.method)
        fig.add_trace(go.Scatter(x=c.x[keep], y=c.y[keep], mode="lines", name=label, line={"color": color}))
        idx = int(np.argmin(np.abs(c.x - c.chosen)))
        fig.add_trace(
            go.Scatter(
                x=[c.chosen], y=[c.y[idx]], mode="markers+text", marker={"size": 11, "color": color, "symbol": "x"},
                text=[f"min at {c.chosen:.4g}"], textposition="top right", name=f"{label}: chosen", showlegend=False,
            )
        )  # fmt: skip
    fig.update_layout(
        title=title or "KL divergence against threshold",
        xaxis_title="threshold",
        yaxis_title="KL divergence",
        yaxis_type="log" if log_y else "linear",
        height=380,
        legend={"orientation": "h", "y": -0.2},
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
    )
    return fig


def weight_channels_figure(name: str, absmax: np.ndarray, scales: np.ndarray, title: str | None = None) -> go.Figure:
    """Per-output-channel weight abs-max (bars) and int8 scale (markers, right axis)."""
    ch = np.arange(absmax.size)
    fig = go.Figure()
    fig.add_trace(go.Bar(x=ch, y=absmax, name="abs-max", marker_color="#7f7f7f", hovertemplate="channel %{x}<br>abs-max %{y:.4g}<extra></extra>"))
    fig.add_trace(
        go.Scatter(x=ch, y=scales, name="scale", mode="markers", yaxis="y2", marker={"color": "#1f77b4", "size": 7},
                   hovertemplate="channel %{x}<br>scale %{y:.4g}<extra></extra>")
    )  # fmt: skip
    ratio = float(absmax.max() / absmax[absmax > 0].min()) if np.any(absmax > 0) else 1.0
    fig.update_layout(
        title=title or f"{name}: per-channel weight range (max/min ratio {ratio:.1f})",
        xaxis_title="output channel",
        yaxis_title="abs-max",
        yaxis2={"title": "scale", "overlaying": "y", "side": "right", "rangemode": "tozero"},
        height=320,
        margin={"l": 60, "r": 60, "t": 50, "b": 50},
        legend={"orientation": "h", "y": 1.12, "x": 1, "xanchor": "right"},
        bargap=0.1,
    )
    return fig


def log2_figure(cmp: Log2Comparison) -> go.Figure:
    """Mean squared error per |x| bin of linear int8 and of log2 quantization, on a log y axis."""
    fig = go.Figure()
    for y, name, color in ((cmp.linear_error, f"linear (MSE {cmp.linear_mse:.2e})", "#1f77b4"), (cmp.log2_error, f"log2 (MSE {cmp.log2_mse:.2e})", "#e377c2")):
        fig.add_trace(go.Scatter(x=cmp.centers, y=y, mode="lines", name=name, line={"color": color}))
    fig.add_vline(x=cmp.threshold, line_dash="dot", annotation_text=f"T = {cmp.threshold:.4g}")
    fig.update_layout(
        title="Error of a value by its magnitude: log2 is finer near 0, linear near T",
        xaxis_title="|x|", yaxis_title="mean squared error", yaxis_type="log", height=320,
        margin={"l": 60, "r": 20, "t": 50, "b": 50}, legend={"orientation": "h", "y": 1.12, "x": 1, "xanchor": "right"},
    )  # fmt: skip
    return fig


def eq_trace_figure(layer: str, trace: list[Mapping[str, float]], initial: float | None = None) -> go.Figure:
    """EQ's cosine of one layer through its rounds: at each round's start, after the weight search,
    after the input search (quantviz.easyquant.EQRound as dicts)."""
    xs: list[str] = []
    ys: list[float] = []
    for r in trace:
        k = int(r["round"])
        for label, key in (("start", "start"), ("weights", "weights"), ("input", "input")):
            xs.append(f"round {k}: {label}")
            ys.append(float(r[key]))
    fig = go.Figure(go.Scatter(x=xs, y=ys, mode="lines+markers", line={"color": METHOD_COLORS["eq"]}, name="EQ"))
    if initial is not None:
        fig.add_hline(y=initial, line_dash="dot", line_color=METHOD_COLORS["kl"], annotation_text="KL start")
    fig.update_layout(
        title=f"EQ cosine trace of {layer}",
        yaxis={"title": "mean cosine of the layer output"},
        height=320,
        margin={"l": 10, "r": 10, "t": 50, "b": 40},
        showlegend=False,
    )
    return fig


MIXED_ACTION_STYLE = {  # quantviz.mixed step actions: legend label, colour, marker
    "int8": ("all int8", "#7f7f7f", "circle"),
    "add": ("added", "#1f77b4", "circle"),
    "bisect": ("bisection probe", "#9467bd", "diamond"),
    "remove": ("taken back to int8", "#2ca02c", "triangle-down"),
    "keep": ("needed (kept out)", "#d62728", "x"),
}


def picked_step(event: Mapping[str, Any] | None, steps: int) -> int | None:
    """The step of the search a click on tradeoff_figure picked: the customdata of the first selected
    point (st.plotly_chart's selection event) naming one of the `steps` the trace has; None when no
    selected point does (nothing selected, or only the greedy path's line, which carries no step)."""
    selection = (event or {}).get("selection") or {}
    for point in selection.get("points") or []:
        c = point.get("customdata")
        c = c[0] if isinstance(c, list | tuple) and c else c
        if isinstance(c, bool) or not isinstance(c, int | float | str):
            continue
        try:
            v = float(c)
        except ValueError:
            continue
        if v.is_integer() and 0 <= v < steps:
            return int(v)
    return None


def tradeoff_figure(mixed: Mapping[str, Any], x: str = "layers") -> go.Figure:
    """The mixed-precision search's trade-off: each measured step (quantviz.mixed, the table's
    settings["mixed"]) at (layers out of int8, or % of MACs) against the target's figure, the target
    as a horizontal line. customdata of every point is its step index (the page applies that step)."""
    trace = list(mixed.get("trace") or [])
    target = str(mixed.get("target", ""))
    kind = target.partition("=")[0]
    fig = go.Figure()

    def xs(s: Mapping[str, Any]) -> float:
        return float(s["layers_out"]) if x == "layers" else 100.0 * float(s["macs_share"])

    def ys(s: Mapping[str, Any]) -> float:
        v = s["value"]
        return float(v) if not isinstance(v, str) else float("nan")

    for action, (label, color, symbol) in MIXED_ACTION_STYLE.items():
        steps = [s for s in trace if s["action"] == action]
        if not steps:
            continue
        fig.add_trace(
            go.Scatter(
                x=[xs(s) for s in steps],
                y=[ys(s) for s in steps],
                mode="markers",
                name=label,
                marker={"color": color, "symbol": symbol, "size": 11},
                customdata=[s["step"] for s in steps],
                hovertemplate="step %{customdata}<br>%{x} out of int8<br>" + kind + " %{y:.5g}<extra>" + label + "</extra>",
            )
        )
    path = [s for s in trace if s["action"] in ("int8", "add")]
    if len(path) > 1:
        fig.add_trace(
            go.Scatter(
                x=[xs(s) for s in path], y=[ys(s) for s in path], mode="lines", name="greedy path",
                line={"color": "#1f77b4", "dash": "dot"}, hoverinfo="skip",
            )
        )  # fmt: skip
    threshold = mixed.get("target_value")
    if threshold is None:
        m = re.search(r"(?:>=|<=|=)\s*([-+0-9.eE]+)\s*$", target)
        threshold = float(m.group(1)) if m else None
    if threshold is not None:
        fig.add_hline(y=float(threshold), line_dash="dash", line_color="#d62728", annotation_text=f"target {target}")
        _focus_on_target(fig, float(threshold), [s for s in trace if s["action"] == "int8"][:1], [ys(s) for s in trace], kind)
    fig.update_layout(
        xaxis_title="layers out of int8" if x == "layers" else "% of MACs out of int8",
        yaxis_title=kind if kind != "metric" else "metric",
        legend={"orientation": "h", "yanchor": "top", "y": -0.18, "x": 0},  # under the x axis title, not over it
        margin={"t": 40, "b": 90},
        clickmode="event+select",
    )
    return fig


def _focus_on_target(fig: go.Figure, threshold: float, int8: list[Mapping[str, Any]], values: list[float], kind: str) -> None:
    """Keep the steps that matter readable: when some steps lie far beyond the target (SNR of a model
    almost all in float: 140 dB against a 50 dB target), the y axis spans the target +- twice the gap
    the search had to close (all int8 to target); the steps left out are counted in a note, and the
    chart's autoscale button shows them."""
    if not int8 or isinstance(int8[0]["value"], str):
        return
    gap = abs(threshold - float(int8[0]["value"]))
    finite = [v for v in values if np.isfinite(v)]
    if not gap > 0 or not np.isfinite(gap):
        return
    lo, hi = threshold - 2 * gap, threshold + 2 * gap
    inside = [v for v in finite if lo <= v <= hi]
    outside = [v for v in finite if not lo <= v <= hi]
    if not outside:
        return
    a, b = min([*inside, threshold]), max([*inside, threshold])
    pad = 0.1 * (b - a if b > a else gap)
    fig.update_yaxes(range=[a - pad, b + pad])
    shown = ", ".join(f"{v:.4g}" for v in sorted(outside)[:3]) + (", ..." if len(outside) > 3 else "")
    fig.add_annotation(
        text=f"{len(outside)} step{'s' if len(outside) > 1 else ''} off the chart ({kind} {shown}): autoscale to see them",
        xref="paper", yref="paper", x=0, y=1.02, xanchor="left", yanchor="bottom", showarrow=False, font={"size": 11, "color": "#555"},
    )  # fmt: skip


GAIN_COLOR, LOSS_COLOR = "#2ca02c", "#d62728"


def run_delta_figure(comparison: Comparison, limit: int = 40) -> go.Figure:
    """Per-layer SNR gain of run B over run A (quantviz.runs.compare), largest gain on top, gains green
    and losses red. Beyond `limit` layers, the limit/2 largest gains and limit/2 largest losses."""
    deltas = [d for d in comparison.layers if math.isfinite(gain(d, comparison.by))]
    if len(deltas) > limit:
        deltas = deltas[: limit // 2] + deltas[-(limit - limit // 2) :]
    gains = [gain(d, comparison.by) for d in deltas]
    labels = [f"{d.layer} ({d.op_type})" for d in deltas]
    fig = go.Figure(
        go.Bar(
            x=gains, y=labels, orientation="h", marker_color=[GAIN_COLOR if g >= 0 else LOSS_COLOR for g in gains],
            customdata=[d.layer for d in deltas],
            hovertemplate="%{customdata}<br>SNR gain %{x:+.2f} dB<extra></extra>",
        )  # fmt: skip
    )
    fig.update_layout(
        title={"text": f"SNR gain per layer, {comparison.by}, B - A in dB<br><sup>green: B is better; red: A is better</sup>", "x": 0.01, "xanchor": "left"},
        height=max(260, 24 * len(deltas) + 140), margin={"l": 10, "r": 10, "t": 90, "b": 40},
        yaxis={"autorange": "reversed", "automargin": True}, xaxis={"side": "top", "zeroline": True},
        showlegend=False,
    )  # fmt: skip
    return fig
