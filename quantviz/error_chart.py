"""Per-layer error drawn so that methods and layers can be told apart (the app and the HTML report).

A cosine of 0.99991 and one of 0.99998 both read "0.9999" and look alike on a linear axis starting at
0.35; their 1 - cosine, 9.0e-5 and 2.0e-5, differ 4.5x and sit far apart on a log axis. So the default
measure is 1 - cosine on a log axis (smaller is better), the others SNR in dB (larger is better) and
the cosine itself on a linear axis. Values are written with enough digits (error_text). A tall chart
(hundreds of layers) repeats its value axis on top, and its legend sits under the title, never on it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import plotly.graph_objects as go

from quantviz.metrics import ErrorFigures
from quantviz.sensitivity import LayerError, LayerReport

ONE_MINUS_COS = "1 - cosine"
SNR = "SNR (dB)"
COSINE = "cosine"
MEASURES = (ONE_MINUS_COS, SNR, COSINE)
# 1 - cosine below this is float rounding (float32 sums carry ~1e-7 relative error per element, far
# less once averaged), drawn at this floor on a log axis
COS_FLOOR = 1e-12
ISOLATED_COLOR = "#1f77b4"
ACCUMULATED_COLOR = "#d62728"
BAR_HEIGHT_PX = 18
MIN_FIGURE_HEIGHT_PX = 320
TOP_MARGIN_PX = 130  # title, legend under it, then the value axis repeated on top of the bars
# log-axis labels 1e-05, 2e-05, 5e-05, 1e-04 (plotly's default reads 10.00004μ on a matched top axis)
LOG_TICKS = {"tickformat": ".0e", "dtick": "D2"}
DENSE_DECADES = 2.0  # beyond this span, 1-2-5 labels in a narrow chart run into each other
LABELS_PER_AXIS = 6  # at most about this many decade labels on a narrow log axis


def log_ticks(values: Iterable[float | None]) -> dict[str, object]:
    """Tick labels for a narrow log axis over these values: 1e-05, 2e-05, 5e-05... (LOG_TICKS) when they
    span at most DENSE_DECADES decades, else one label per decade (or per 2, 3... decades beyond
    LABELS_PER_AXIS decades), so that '2e-65e-61e-5' never reads as one word."""
    finite = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    span = math.log10(max(finite) / min(finite)) if finite else 0.0
    if span <= DENSE_DECADES:
        return dict(LOG_TICKS)
    return {"tickformat": ".0e", "dtick": max(1, math.ceil(span / LABELS_PER_AXIS))}


def one_minus_cosine(c: float) -> float:
    """1 - cosine, floored at COS_FLOOR (NaN stays NaN)."""
    if math.isnan(c):
        return math.nan
    return max(1.0 - c, COS_FLOOR)


def value(fig: ErrorFigures, measure: str) -> float:
    if measure == ONE_MINUS_COS:
        return one_minus_cosine(fig.cosine)
    if measure == SNR:
        return fig.snr_db
    if measure == COSINE:
        return fig.cosine
    raise ValueError(f"unknown measure '{measure}'; one of {', '.join(MEASURES)}")


def error_text(fig: ErrorFigures) -> str:
    """'1 - cos 3.21e-05 (cos 0.99996789), SNR 41.93 dB': enough digits to tell two methods apart."""
    if math.isnan(fig.cosine):
        return "no figure"
    snr = "inf" if math.isinf(fig.snr_db) and fig.snr_db > 0 else f"{fig.snr_db:.2f}"
    return f"1 - cos {1.0 - fig.cosine:.3g} (cos {fig.cosine:.8f}), SNR {snr} dB"


def _plotted(v: float) -> float | None:
    return v if math.isfinite(v) else None


def layer_error_figure(
    report: LayerReport, mode: str = "isolated", limit: int | None = None, measure: str = ONE_MINUS_COS, log: bool = True
) -> go.Figure:
    """Horizontal bars of each layer's isolated and accumulated error, sorted by the `mode` cosine,
    worst on top; limit: only that many of the worst layers. log: a log value axis (1 - cosine only)."""
    ordered = report.worst_first(mode)
    total = len(ordered)
    if limit is not None and limit < total:
        ordered = ordered[:limit]
    names = [f"{le.layer} ({le.op_type})" for le in ordered]
    log = log and measure == ONE_MINUS_COS
    fig = go.Figure()
    series: tuple[tuple[str, str, str], ...] = (("isolated", ISOLATED_COLOR, "isolated"), ("accumulated", ACCUMULATED_COLOR, "accumulated"))
    for label, color, which in series:

        def figures(le: LayerError, which: str = which) -> ErrorFigures:
            return le.isolated if which == "isolated" else le.accumulated

        fig.add_trace(
            go.Bar(
                y=names,
                x=[_plotted(value(figures(le), measure)) for le in ordered],
                orientation="h",
                name=label,
                marker_color=color,
                customdata=[[le.layer, error_text(figures(le))] for le in ordered],  # the app opens customdata[0]
                hovertemplate="%{y}<br>%{customdata[1]}<extra>" + label + "</extra>",
            )
        )
    axis_title = {ONE_MINUS_COS: "1 - cosine vs float (smaller is better)", SNR: "SNR vs float, dB (larger is better)", COSINE: "cosine vs float"}[measure]
    xaxis: dict[str, object] = {"title": axis_title, "type": "log" if log else "linear", "showgrid": True}
    if log:
        xaxis |= LOG_TICKS
    if measure == COSINE:
        finite = [v for v in (*fig.data[0].x, *fig.data[1].x) if v is not None]
        lo = min(finite) if finite else 0.0
        xaxis["range"] = [max(-1.0, lo - 0.1 * max(1.0 - lo, 1e-6)), 1.0]
    height = max(MIN_FIGURE_HEIGHT_PX, 2 * BAR_HEIGHT_PX * len(names) + TOP_MARGIN_PX + 60)
    shown = f": the {len(ordered)} worst of {total}" if len(ordered) < total else ""
    scale = " (log scale)" if log else ""
    fig.update_layout(
        title={
            "text": f"{measure}{scale} per layer, sorted by the {mode} error (worst at the top){shown}",
            "yref": "container", "y": 1 - 10 / height, "yanchor": "top", "x": 0.01, "xanchor": "left",
        },  # fmt: skip
        barmode="group",
        height=height,
        xaxis=xaxis,
        # the same axis on top: a 9,000 px chart is read from its top too
        xaxis2={**{k: v for k, v in xaxis.items() if k != "title"}, "overlaying": "x", "side": "top", "matches": "x", "showgrid": False},
        # worst on top; an explicit range, since the marker of the trace below would pad an autorange by
        # 5% of the axis (550 px of nothing on a 300-layer chart)
        yaxis={"range": [len(names) - 0.5, -0.5], "automargin": True},
        legend={"orientation": "h", "yref": "container", "y": 1 - 42 / height, "yanchor": "top", "x": 0.01, "xanchor": "left"},
        margin={"l": 10, "r": 10, "t": TOP_MARGIN_PX, "b": 50},
    )
    # an invisible trace on the top axis makes plotly draw it (an axis without data stays hidden)
    top = next((v for v in fig.data[0].x if v is not None), None)
    if top is not None and names:
        fig.add_trace(
            go.Scatter(
                x=[top], y=[names[0]], xaxis="x2", mode="markers", marker={"opacity": 0}, showlegend=False, hoverinfo="skip"
            )
        )
    return fig


def parts_figure(le: LayerError) -> go.Figure:
    """1 - cosine of each part alone and of all three (the isolated error), log axis: the longest bar
    names the part that makes the layer sensitive."""
    rows: list[tuple[str, ErrorFigures]] = []
    if le.parts is not None:
        rows = [(f"{part} only", f) for part, f in le.parts.items()]
    rows.append(("all three (isolated)", le.isolated))
    plotted = [_plotted(one_minus_cosine(f.cosine)) for _, f in rows]
    worst = le.parts.worst if le.parts is not None else None
    colors = ["#d62728" if worst is not None and label.startswith(worst + " ") else "#7f7f7f" for label, _ in rows]
    colors[-1] = ISOLATED_COLOR
    fig = go.Figure(
        go.Bar(
            y=[label for label, _ in rows],
            x=plotted,
            orientation="h",
            marker_color=colors,
            customdata=[error_text(f) for _, f in rows],
            hovertemplate="%{y}<br>%{customdata}<extra></extra>",
            text=[f"{one_minus_cosine(f.cosine):.3e}" for _, f in rows],
            textposition="outside",
            cliponaxis=False,
        )
    )
    fig.update_layout(
        title={"text": f"What makes {le.layer} sensitive", "x": 0.01, "xanchor": "left"},
        xaxis={"title": "1 - cosine vs float with only that part quantized (log scale; smaller is better)", "type": "log", **log_ticks(plotted)},
        yaxis={"autorange": "reversed", "automargin": True},
        height=90 + 42 * len(rows),
        margin={"l": 10, "r": 80, "t": 50, "b": 50},
        showlegend=False,
    )
    return fig
