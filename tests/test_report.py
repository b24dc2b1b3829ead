"""LAYERS.csv and the offline HTML report, from a LayerReport written here by hand."""

from __future__ import annotations

import csv
import io
import math
import re

import pytest

from quantviz.metrics import ErrorFigures
from quantviz.report import layer_cosine_figure, to_csv, to_html
from quantviz.sensitivity import LayerError, LayerReport, OutputError

REQUIRED = [
    "layer",
    "op_type",
    "output_tensor",
    "cosine_isolated",
    "cosine_accumulated",
    "snr_isolated_db",
    "snr_accumulated_db",
    "mse_isolated",
    "mse_accumulated",
]


def report(labels: bool = True) -> LayerReport:
    def fig(c: float, snr: float, mse: float) -> ErrorFigures:
        return ErrorFigures(c, snr, mse, 20)

    layers = (
        LayerError("conv_<one>", "Conv", "c", fig(0.999, 30.0, 1e-3), fig(0.999, 30.0, 1e-3)),
        LayerError("relu & two", "Relu", "r", fig(1.0, math.inf, 0.0), fig(0.95, 12.5, 0.02)),
        LayerError("gemm_three", "Gemm", "y", fig(0.99, 20.0, 0.01), fig(0.9, 10.0, 0.1)),
    )
    out = OutputError("y", fig(0.9, 10.0, 0.1), 0.85, 0.9 if labels else None, 0.8 if labels else None)
    return LayerReport(
        model_name="tiny.onnx",
        model_sha256="ab" * 32,
        samples=20,
        batch_size=8,
        data_description="'data.npz'",
        synthetic=False,
        per_channel=True,
        symmetric=True,
        table_settings={"method": "kl"},
        thresholds={"c": (1.5, 1.5 / 127, 0), "r": (1.2, 1.2 / 127, 0)},
        layers=layers,
        outputs=(out,),
    )


def test_csv_columns_and_rows() -> None:
    rows = list(csv.DictReader(io.StringIO(to_csv(report()))))
    header = list(rows[0].keys())
    assert header[: len(REQUIRED)] == REQUIRED
    assert "accuracy" in header and "accuracy_float" in header
    assert [r["layer"] for r in rows] == ["conv_<one>", "relu & two", "gemm_three", "(model output)"]
    relu = rows[1]
    assert relu["snr_isolated_db"] == "inf" and float(relu["cosine_accumulated"]) == 0.95
    last = rows[-1]
    assert last["output_tensor"] == "y" and float(last["cosine_accumulated"]) == 0.9
    assert float(last["accuracy"]) == 0.8 and float(last["accuracy_float"]) == 0.9
    assert float(last["top1_agreement"]) == 0.85 and last["cosine_isolated"] == ""


def test_csv_without_labels_has_no_accuracy_column() -> None:
    header = to_csv(report(labels=False)).splitlines()[0].split(",")
    assert "accuracy" not in header and header[: len(REQUIRED)] == REQUIRED


def test_cosine_figure_sorted_worst_first() -> None:
    fig = layer_cosine_figure(report(), "accumulated")
    names = list(fig.data[0].y)
    assert names[0].startswith("gemm_three") and names[-1].startswith("conv_<one>")
    assert list(fig.data[1].x) == [0.9, 0.95, 0.999]


def test_cosine_figure_limited_to_the_worst_layers() -> None:
    fig = layer_cosine_figure(report(), "accumulated", limit=2)
    assert list(fig.data[0].customdata) == ["gemm_three", "relu & two"]  # the two worst, worst first
    assert list(fig.data[1].x) == [0.9, 0.95] and "2 worst of 3" in fig.layout.title.text
    assert len(layer_cosine_figure(report(), "accumulated", limit=5).data[0].y) == 3


def test_html_is_offline_and_names_layers() -> None:
    page = to_html(report())
    # plotly.js is embedded once, no script is fetched from anywhere
    assert not re.search(r"<script[^>]+src=", page)
    # the only CDN address left is the bundle's own default for geo map data (topojsonURL), never loaded here
    assert 'src="https://cdn.plot.ly' not in page and page.count("cdn.plot.ly") == page.count('dflt:"https://cdn.plot.ly/un/"')
    assert page.count("Plotly.newPlot") == 3
    assert len(page) > 1_000_000  # the library itself (several MB), not a link to it
    assert "plotly.js v" in page or "plotly.js" in page
    for name in ("conv_&lt;one&gt;", "relu &amp; two", "gemm_three"):
        assert name in page  # escaped in the HTML tables
    assert "tiny.onnx" in page and "accuracy quantized" in page


def test_error_figure_log_one_minus_cosine_with_the_axis_on_top() -> None:
    from quantviz.error_chart import COSINE, SNR, layer_error_figure

    fig = layer_error_figure(report(), "accumulated")
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis2.side == "top" and fig.layout.xaxis2.matches == "x"
    assert list(fig.data[1].x) == pytest.approx([0.1, 0.05, 0.001])  # 1 - cosine, worst first
    assert fig.data[1].customdata[0][0] == "gemm_three" and "cos 0.90000000" in fig.data[1].customdata[0][1]
    # isolated cosine 1.0 (identical): drawn at the floor of the log axis, not dropped
    assert fig.data[0].x[1] == pytest.approx(1e-12)
    # the legend sits under the title, both in the top margin above the plot
    assert fig.layout.title.yref == "container" and fig.layout.legend.yref == "container"
    assert fig.layout.legend.y < fig.layout.title.y and fig.layout.margin.t >= 100
    assert tuple(fig.layout.yaxis.range) == (2.5, -0.5)  # worst on top, no padding above the first bar
    snr = layer_error_figure(report(), "accumulated", measure=SNR)
    assert snr.layout.xaxis.type == "linear" and list(snr.data[1].x) == [10.0, 12.5, 30.0]
    assert list(layer_error_figure(report(), "accumulated", measure=COSINE).data[1].x) == [0.9, 0.95, 0.999]
    assert layer_error_figure(report(), "accumulated", log=False).layout.xaxis.type == "linear"
