"""What an analysis produces on disk: LAYERS.csv and an offline HTML report (CLI.md, "analyze").

LAYERS.csv: a header row, one row per quantized layer in graph order with the columns of CLI.md
(layer, op_type, output_tensor, cosine_isolated, cosine_accumulated, snr_isolated_db,
snr_accumulated_db, mse_isolated, mse_accumulated; then the error decomposition: cosine_input_only,
cosine_weights_only, cosine_output_only, each the isolated cosine with only that part quantized, empty
where the layer quantizes nothing of it, and sensitive_part = input | weights | output, the lowest of
them), then one row per model output with layer =
"(model output)" giving the end-to-end figures (cosine_accumulated etc. of the fully quantized
model's outputs against float) and top1_agreement; accuracy_float and accuracy (of the quantized
model) columns are added when labels were given. Infinite SNR (identical tensors) is written "inf".

The HTML report embeds plotly.js (include_plotlyjs=True, never a CDN link: reviewers may be
offline) and holds the model, the settings, the table of thresholds, per-layer cosine bar charts
sorted worst first, the SNR along the graph, and the end-to-end figures.
"""

from __future__ import annotations

import csv
import html
import io
import math
from collections.abc import Callable
from pathlib import Path

import plotly.graph_objects as go

from quantviz.error_chart import layer_error_figure
from quantviz.safeio import write_text
from quantviz.sensitivity import MODEL_OUTPUT_ROW, LayerError, LayerReport

CSV_COLUMNS = (
    "layer",
    "op_type",
    "output_tensor",
    "cosine_isolated",
    "cosine_accumulated",
    "snr_isolated_db",
    "snr_accumulated_db",
    "mse_isolated",
    "mse_accumulated",
    "cosine_input_only",
    "cosine_weights_only",
    "cosine_output_only",
    "sensitive_part",
    "top1_agreement",
    "max_abs_error",
    "mean_abs_error",
    "saturated_share",
    "decision_agreement",
    "cosine_across_samples",
)
LABEL_COLUMNS = ("accuracy_float", "accuracy")
ISOLATED_COLOR = "#1f77b4"
ACCUMULATED_COLOR = "#d62728"
BAR_HEIGHT_PX = 18
MIN_FIGURE_HEIGHT_PX = 320


def _num(v: float | None) -> str:
    if v is None:
        return ""
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return repr(float(v))


def _part_cells(le: LayerError) -> dict[str, str]:
    """cosine_<part>_only for each part the layer quantizes (empty: it has none, e.g. a Relu's
    weights) and sensitive_part, the part whose error alone is the largest."""
    if le.parts is None:
        return {}
    cells = {f"cosine_{part}_only": _num(f.cosine) for part, f in le.parts.items()}
    return {**cells, "sensitive_part": le.parts.worst or ""}


def layer_rows(report: LayerReport) -> list[dict[str, str]]:
    """The LAYERS.csv rows as dicts of text (layers in graph order, then the model outputs)."""
    rows: list[dict[str, str]] = []
    for le in report.layers:
        rows.append(
            {
                "layer": le.layer,
                "op_type": le.op_type,
                "output_tensor": le.output_tensor,
                "cosine_isolated": _num(le.isolated.cosine),
                "cosine_accumulated": _num(le.accumulated.cosine),
                "snr_isolated_db": _num(le.isolated.snr_db),
                "snr_accumulated_db": _num(le.accumulated.snr_db),
                "mse_isolated": _num(le.isolated.mse),
                "mse_accumulated": _num(le.accumulated.mse),
                **_part_cells(le),
            }
        )
    for o in report.outputs:
        row = {
            "layer": MODEL_OUTPUT_ROW,
            "op_type": "",
            "output_tensor": o.output,
            "cosine_accumulated": _num(o.figures.cosine),
            "snr_accumulated_db": _num(o.figures.snr_db),
            "mse_accumulated": _num(o.figures.mse),
            "top1_agreement": _num(o.top1_agreement),
        }
        if o.detail is not None:
            row["max_abs_error"] = _num(o.detail.max_abs_error)
            row["mean_abs_error"] = _num(o.detail.mean_abs_error)
            row["saturated_share"] = _num(o.detail.saturated_share)
            row["decision_agreement"] = _num(o.detail.decision_agreement)
            row["cosine_across_samples"] = _num(o.detail.across_cosine)
        if report.has_labels:
            row["accuracy_float"] = _num(o.accuracy_float)
            row["accuracy"] = _num(o.accuracy_quantized)
        rows.append(row)
    return rows


def to_csv(report: LayerReport) -> str:
    columns = CSV_COLUMNS + (LABEL_COLUMNS if report.has_labels else ())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
    w.writeheader()
    w.writerows(layer_rows(report))
    return buf.getvalue()


def write_csv(report: LayerReport, path: str | Path) -> None:
    write_text(path, to_csv(report), "report file")


def _cosine_axis_floor(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0
    lo = min(finite)
    return max(-1.0, lo - 0.1 * max(1.0 - lo, 1e-6))


def layer_cosine_figure(report: LayerReport, mode: str = "isolated", limit: int | None = None) -> go.Figure:
    """Horizontal bars of each layer's cosine (isolated and accumulated), sorted by `mode`, worst on
    top; limit: only that many of the worst layers (a 300-layer model would draw a 11,000 px chart)."""
    ordered = report.worst_first(mode)
    total = len(ordered)
    if limit is not None and limit < total:
        ordered = ordered[:limit]
    names = [f"{le.layer} ({le.op_type})" for le in ordered]
    iso = [le.isolated.cosine for le in ordered]
    acc = [le.accumulated.cosine for le in ordered]
    layers = [le.layer for le in ordered]  # customdata: the app opens the clicked layer by its name
    hover = "%{y}<br>cosine %{x:.6f}<extra>%{fullData.name}</extra>"
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            y=names, x=iso, orientation="h", name="isolated", marker_color=ISOLATED_COLOR, hovertemplate=hover,
            customdata=layers,
        )
    )  # fmt: skip
    fig.add_trace(
        go.Bar(
            y=names, x=acc, orientation="h", name="accumulated", marker_color=ACCUMULATED_COLOR, hovertemplate=hover,
            customdata=layers,
        )
    )  # fmt: skip
    fig.update_layout(
        title=f"Cosine similarity per layer, sorted by the {mode} cosine (worst at the top)"
        + (f": the {len(ordered)} worst of {total}" if len(ordered) < total else ""),
        barmode="group",
        height=max(MIN_FIGURE_HEIGHT_PX, 2 * BAR_HEIGHT_PX * len(names) + 120),
        xaxis={"title": "cosine vs float", "range": [_cosine_axis_floor(iso + acc), 1.0]},
        yaxis={"autorange": "reversed", "automargin": True},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom"},
        margin={"l": 10, "r": 10, "t": 80, "b": 40},
    )
    return fig


def _finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None


def snr_figure(report: LayerReport) -> go.Figure:
    """SNR (dB) of each layer output in graph order: the accumulated curve shows error building up."""
    names = [le.layer for le in report.layers]
    fig = go.Figure()
    getters: tuple[tuple[str, str, Callable[[LayerError], float]], ...] = (
        ("isolated", ISOLATED_COLOR, lambda le: le.isolated.snr_db),
        ("accumulated", ACCUMULATED_COLOR, lambda le: le.accumulated.snr_db),
    )
    for label, color, get in getters:
        fig.add_trace(
            go.Scatter(
                x=list(range(len(names))),
                y=[_finite_or_none(get(le)) for le in report.layers],
                mode="lines+markers",
                name=label,
                line={"color": color},
                text=names,
                hovertemplate="%{text}<br>SNR %{y:.2f} dB<extra>" + label + "</extra>",
            )
        )
    fig.update_layout(
        title="SNR of each layer output along the graph",
        xaxis={"title": "layer (graph order)"},
        yaxis={"title": "SNR (dB)"},
        height=420,
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom"},
    )
    return fig


def _fmt(v: float | None, digits: int = 6) -> str:
    if v is None:
        return ""
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}g}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}
td{font-variant-numeric:tabular-nums}
.note{color:#a00}
"""


def _layer_table(layers: list[LayerError]) -> str:
    rows = [
        [
            le.layer,
            le.op_type,
            le.output_tensor,
            _fmt(le.isolated.cosine),
            _fmt(le.accumulated.cosine),
            _fmt(le.isolated.snr_db, 4),
            _fmt(le.accumulated.snr_db, 4),
            _fmt(le.isolated.mse, 4),
            _fmt(le.accumulated.mse, 4),
        ]
        for le in layers
    ]
    return _table(list(CSV_COLUMNS[:9]), rows)


def to_html(report: LayerReport, title: str | None = None) -> str:
    """A self-contained HTML page (plotly.js embedded once) describing the analysis."""
    title = title or f"quantviz analysis of {report.model_name}"
    settings = report.table_settings
    info_rows = [
        ["model", report.model_name],
        ["model sha256", report.model_sha256],
        ["data", report.data_description + (" (SYNTHETIC random data, not real samples)" if report.synthetic else "")],
        ["samples analysed", str(report.samples)],
        ["batch size", str(report.batch_size)],
        ["table method", str(settings.get("method", ""))],
        ["activations", "symmetric int8" if report.symmetric else "asymmetric uint8"],
        ["weights", "per output channel" if report.per_channel else "per tensor"],
        ["BatchNormalization folded", ", ".join(report.folded) or "none"],
    ]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        _table(["", ""], info_rows),
    ]
    if report.synthetic:
        parts.append("<p class='note'>The data is synthetic (random): the figures say little about real inputs.</p>")
    parts.append("<h2>End to end (fully quantized model vs float)</h2>")
    out_header = ["output", "cosine", "SNR (dB)", "MSE", "top-1 agreement", "max |err|", "mean |err|", "saturated", "decisions agree", "cosine across samples"]
    if report.has_labels:
        out_header += ["accuracy float", "accuracy quantized"]
    out_rows = []
    for o in report.outputs:
        r = [o.output, _fmt(o.figures.cosine), _fmt(o.figures.snr_db, 4), _fmt(o.figures.mse, 4), _fmt(o.top1_agreement, 4)]
        d = o.detail
        r += [_fmt(d.max_abs_error, 4), _fmt(d.mean_abs_error, 4), _fmt(d.saturated_share, 4), _fmt(d.decision_agreement, 4), _fmt(d.across_cosine)] if d else [""] * 5
        if report.has_labels:
            r += [_fmt(o.accuracy_float, 4), _fmt(o.accuracy_quantized, 4)]
        out_rows.append(r)
    parts.append(_table(out_header, out_rows))
    # 1 - cosine on a log axis: cosines of 0.99991 and 0.99998 look alike on a linear one (quantviz.error_chart)
    figs = [layer_error_figure(report, "isolated"), layer_error_figure(report, "accumulated"), snr_figure(report)]
    parts.append("<h2>Per-layer error</h2>")
    parts.append(
        "<p>Isolated: only that layer quantized (inputs quantized from float values). "
        "Accumulated: the whole model quantized, so everything up to the layer is.</p>"
    )
    for i, fig in enumerate(figs):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False}))
    parts.append("<h2>Layers (graph order)</h2>")
    parts.append(_layer_table(list(report.layers)))
    if report.kept_float:
        parts.append("<h2>Layers kept in float</h2>")
        parts.append(_table(["node", "why"], [[k, v] for k, v in report.kept_float.items()]))
    parts.append("<h2>Scales placed on activations</h2>")
    parts.append(
        _table(
            ["tensor", "threshold", "scale", "zero point"],
            [[n, _fmt(t), _fmt(s, 9), str(z)] for n, (t, s, z) in report.thresholds.items()],
        )
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(report: LayerReport, path: str | Path, title: str | None = None) -> None:
    write_text(path, to_html(report, title), "report file")
