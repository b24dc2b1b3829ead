"""Home's overview picture: every tensor's range and how much each method clips, worst first.

Data in (quantviz.summary.overview's table: one row per tensor, "<method> clip %" columns), figure
out. "Worst" is the most clipped by the review's default method (the table the exports write), ties
broken by the most any method clips, then by name, so the order is stable.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from quantviz.calib import METHOD_LABELS

ROW_PX = 22  # height of one tensor's row in the picture
FRAME_PX = 170  # title, axes on top and bottom, colour bar
SHORT_LABELS = {"minmax": "MinMax", "ema": "EMA", "kl": "KL", "kl_ncnn": "KL ncnn", "percentile": "Pctl", "mse": "MSE", "aciq": "ACIQ"}


def clip_methods(df: pd.DataFrame, methods: Sequence[str]) -> list[str]:
    """The methods the table has a clip column for, in the order given."""
    return [m for m in methods if f"{m} clip %" in df.columns]


def worst_first(df: pd.DataFrame, method: str, methods: Sequence[str]) -> pd.DataFrame:
    """Tensors with a range (empty ones have none) sorted by how much `method` clips, then by the most
    any method clips, then by name; index reset."""
    ms = clip_methods(df, methods)
    rows = df[df["min"].notna()].copy()
    own = rows[f"{method} clip %"] if f"{method} clip %" in rows else pd.Series(0.0, index=rows.index)
    rows["_own"] = own.fillna(0.0)
    rows["_most"] = rows[[f"{m} clip %" for m in ms]].max(axis=1).fillna(0.0) if ms else 0.0
    rows = rows.sort_values(["_own", "_most", "tensor"], ascending=[False, False, True], kind="stable")
    return rows.drop(columns=["_own", "_most"]).reset_index(drop=True)


def overview_figure(df: pd.DataFrame, method: str, methods: Sequence[str], limit: int | None = None) -> go.Figure:
    """Left: each tensor's abs-max on a log axis (bars, one per tensor, clickable: customdata is the
    tensor's name), coloured by whether it is non-negative; right: clipped % per method (heatmap,
    cells labelled). Rows worst first; `limit` keeps the first rows. The x-axes are drawn on top and at
    the bottom so a tall picture reads without scrolling back."""
    ms = clip_methods(df, methods)
    rows = worst_first(df, method, ms)
    total = len(rows)
    if limit is not None:
        rows = rows.head(limit)
    labels = [f"{t} ({op})" for t, op in zip(rows["tensor"], rows["op type"], strict=True)]
    absmax = np.maximum(rows["min"].abs().to_numpy(float), rows["max"].abs().to_numpy(float))
    nonneg = rows["min"].to_numpy(float) >= 0
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, column_widths=[0.45, 0.55], horizontal_spacing=0.02)
    declared = rows["declared shape"] if "declared shape" in rows else rows["shape"]
    custom = np.stack(
        [rows["tensor"], rows["min"], rows["max"], rows["shape"], declared], axis=-1
    ) if len(rows) else np.empty((0, 5))  # fmt: skip
    fig.add_trace(
        go.Bar(
            y=labels, x=np.where(absmax > 0, absmax, np.nan), orientation="h", customdata=custom,
            marker_color=np.where(nonneg, "#2ca02c", "#1f77b4").tolist(), name="abs-max", showlegend=False,
            hovertemplate="%{customdata[0]}<br>min %{customdata[1]:.4g}, max %{customdata[2]:.4g}"
                          "<br>shape seen %{customdata[3]}<br>declared %{customdata[4]}<extra></extra>",
        ),
        row=1, col=1,
    )  # fmt: skip
    z = rows[[f"{m} clip %" for m in ms]].to_numpy(float) if ms else np.empty((len(rows), 0))
    # a log colour scale: 0.001 % and 10 % must both read (0 maps to the lightest colour)
    zc = np.log10(np.clip(np.nan_to_num(z, nan=0.0), 1e-4, 100.0))
    text = [[_pct(v) for v in row] for row in z]
    fig.add_trace(
        go.Heatmap(
            z=zc, x=[SHORT_LABELS.get(m, m) for m in ms], y=labels, text=text, texttemplate="%{text}", textfont={"size": 10},
            customdata=np.array([[METHOD_LABELS.get(m, m) for m in ms]] * len(rows)) if len(rows) else None,
            colorscale="Reds", zmin=-4, zmax=2, xgap=1, ygap=1,
            colorbar={"title": "clipped %", "tickvals": [-4, -3, -2, -1, 0, 1, 2],
                      "ticktext": ["0", "0.001", "0.01", "0.1", "1", "10", "100"], "len": min(1.0, 600 / (ROW_PX * max(len(rows), 1) + FRAME_PX))},
            hovertemplate="%{y}<br>%{customdata}: %{text} clipped<extra></extra>",
        ),
        row=1, col=2,
    )  # fmt: skip
    shown = f"worst {len(rows)} of {total}" if len(rows) < total else f"all {total}"
    fig.update_layout(
        title={"text": f"Every tensor's range and what each method clips ({shown}, by {METHOD_LABELS.get(method, method)})", "y": 1.0,
               "yanchor": "top", "pad": {"t": 8}},
        height=ROW_PX * max(len(rows), 1) + FRAME_PX,
        margin={"l": 10, "r": 10, "t": 100, "b": 50},
        bargap=0.25,
    )  # fmt: skip
    fig.update_yaxes(autorange="reversed", automargin=True, tickfont={"size": 10})
    fig.update_xaxes(type="log", row=1, col=1, mirror="allticks", ticks="outside", title_text="largest |x| (log axis)")
    fig.update_xaxes(side="top", row=1, col=2, title_text="clipped % of the values, by method", title_standoff=4)
    return fig


def _pct(v: float) -> str:
    if not np.isfinite(v):
        return ""
    if v == 0:
        return "0"
    return f"{v:.2g}" if v < 10 else f"{v:.0f}"
