"""AppTest of Home's overview picture (ui/overview_panel.py, quantviz/overview.py): the numbers behind
it against a plain onnxruntime run of the sample on its calibration set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from streamlit.testing.v1 import AppTest

from quantviz.calib import METHODS
from quantviz.config import DEFAULT_BATCH_SIZE
from tests.app.figs import array, figure, review_of, stats_of
from tests.conftest import ort_run_with_outputs

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_MODEL = ROOT / "sample_models" / "digits_cnn.onnx"
SAMPLE_DATA = ROOT / "sample_models" / "digits_calib.npz"


def _overview(at: AppTest) -> dict[str, Any]:
    figs = [figure(c) for c in at.get("plotly_chart")]
    found = [f for f in figs if f["layout"]["title"]["text"].startswith("Every tensor's range")]
    assert len(found) == 1, [f["layout"].get("title") for f in figs]
    return found[0]


def test_home_draws_every_tensors_range_and_clipping_worst_first() -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not at.exception and not at.error
    stats = stats_of(at)
    fig = _overview(at)
    bars, heat = fig["data"]
    names = [row[0] for row in bars["customdata"]]
    # every non-empty tensor is drawn once (the sample has fewer than the first page of rows)
    assert sorted(names) == sorted(n for n, t in stats.tensors.items() if not t.empty)

    # abs-max and shapes against onnxruntime on the whole calibration set
    proto = onnx.load(str(SAMPLE_MODEL))
    x = np.load(SAMPLE_DATA)
    feed = {proto.graph.input[0].name: x[proto.graph.input[0].name]}
    outs = ort_run_with_outputs(proto, [n for n in names if n != proto.graph.input[0].name], feed)
    outs[proto.graph.input[0].name] = feed[proto.graph.input[0].name]
    absmax = array(bars["x"])
    for i, n in enumerate(names):
        ref = float(np.abs(outs[n]).max())
        np.testing.assert_allclose(absmax[i], ref, rtol=1e-6, err_msg=n)
        seen = bars["customdata"][i][3]
        assert seen == "[" + ", ".join(str(d) for d in (DEFAULT_BATCH_SIZE, *outs[n].shape[1:])) + "]", (n, seen)
        assert "batch" in bars["customdata"][i][4] or "N" in bars["customdata"][i][4] or "?" in bars["customdata"][i][4]

    # clipped % per method: each method's threshold applied to the raw activations
    methods = list(heat["x"])
    assert methods[:1] == ["MinMax"]
    z = array(heat["z"]).reshape(len(names), len(methods))
    shown = np.where(z <= -4, 0.0, 10.0**z)  # the colour is log10(clip %) floored at 1e-4 %
    cfg = review_of(at).config
    keys = [k for k in METHODS if k in ("minmax", "ema", "kl", "kl_ncnn", "percentile", "mse", "aciq")]
    for i, n in enumerate(names):
        v = outs[n].ravel()
        for j, k in enumerate(keys):
            th = METHODS[k](stats.tensors[n], cfg)
            # the page reads the histogram as uniform within a bin: the share it shows lies between the
            # exact shares outside the clip range widened and narrowed by one bin
            w = stats.tensors[n].signed_hist.width
            least = 100 * np.count_nonzero((v < th.min - w) | (v > th.max + w)) / v.size
            most = 100 * np.count_nonzero((v < th.min + w) | (v > th.max - w)) / v.size
            assert least - 1e-3 <= shown[i, j] <= most + 1e-3 or (shown[i, j] == 0 and least <= 1e-4), (n, k, shown[i, j], least, most)
    # worst first by the default method (KL)
    kl = shown[:, keys.index(review_of(at).default_method)]
    assert np.all(np.diff(kl) <= 1e-9), kl

