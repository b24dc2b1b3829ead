"""AppTest: why a layer is sensitive (its error's parts, the method that fixes the worst), domain warnings
with their fix, and Cancel keeping what was shown. The numbers behind each view are checked against
the analysis the page stored and against a constructed model whose warnings are known."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from streamlit.testing.v1 import AppTest

from tests.app.figs import array, figure, review_of, session_of, stored_in, work_of
from tests.graphs import IR_VERSION, OPSET

ROOT = Path(__file__).resolve().parents[2]
F32 = np.float32


def _sample_page() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    assert not at.exception
    at.switch_page("pages/3_Layer_sensitivity.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _report(at: AppTest):
    return stored_in(at, work_of(at).last_analysis)


def _warnings(at: AppTest) -> dict[str, list[str]]:
    """The domain warnings drawn, by kind (their text starts with '**kind**:')."""
    out: dict[str, list[str]] = {}
    for w in at.warning:
        text = str(w.value)
        if text.startswith("**") and "**:" in text:
            kind, rest = text[2:].split("**:", 1)
            out.setdefault(kind, []).append(rest.strip())
    return out


def _fix_buttons(at: AppTest, kind: str) -> list:
    return [b for b in at.button if str(b.key).startswith("warn_fix::all::") and str(b.key).endswith("::" + kind)]


def test_the_open_layer_shows_its_parts_and_the_worst_one(tmp_path: Path) -> None:
    at = _sample_page()
    report = _report(at)
    conv = next(le for le in report.layers if le.op_type == "Conv" and le.parts is not None and le.parts.weights is not None)
    at.selectbox(key="sens_layer").set_value(conv.layer).run()
    assert not at.exception
    fig = figure(next(c for c in at.get("plotly_chart") if "What makes" in figure(c)["layout"]["title"]["text"]))
    bars = dict(zip(fig["data"][0]["y"], array(fig["data"][0]["x"]).astype(float), strict=True))
    # the bars are the analysis' parts as 1 - cosine, and the last one the isolated error itself
    for part in ("input", "weights", "output"):
        assert bars[f"{part} only"] == pytest.approx(1 - getattr(conv.parts, part).cosine, rel=1e-9, abs=1e-12)
    assert bars["all three (isolated)"] == pytest.approx(1 - conv.isolated.cosine, rel=1e-9)
    # the parts recombine: their noise powers add up to the isolated one (independent roundings)
    assert sum(f.mse for _, f in conv.parts.items()) == pytest.approx(conv.isolated.mse, rel=0.5)
    worst = conv.parts.worst
    assert worst == min(("input", "weights", "output"), key=lambda p: getattr(conv.parts, p).cosine)
    assert any(f"The **{worst}** part makes it sensitive" in str(m.value) for m in at.markdown)
    # LAYERS.csv says the same
    import csv

    from quantviz.report import to_csv

    row = next(r for r in csv.DictReader(io.StringIO(to_csv(report))) if r["layer"] == conv.layer)
    assert row["sensitive_part"] == worst and float(row["cosine_input_only"]) == conv.parts.input.cosine


def test_the_method_that_fixes_an_input_or_output_part_is_one_click_away() -> None:
    at = _sample_page()
    report = _report(at)
    layer = next(le for le in report.worst_first() if le.parts is not None and le.parts.worst in ("input", "output"))
    at.selectbox(key="sens_layer").set_value(layer.layer).run()
    at.button(key="sens_find_fix").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    col = f"1 - cos, {layer.parts.worst} only"
    frame = next(d.value for d in at.dataframe if col in d.value.columns)
    assert len(frame) == 6 and frame[col].notna().all()
    # the search reproduces the analysis' figure for the method in use (KL everywhere)
    kl = frame.set_index("method").loc[frame["method"].iloc[0], col]
    assert kl == pytest.approx(1 - getattr(layer.parts, layer.parts.worst).cosine, rel=1e-6)
    best_row = frame.loc[frame[col].idxmin()]
    apply = at.button(key="sens_fix_apply")
    assert apply.label.startswith(f"Use {best_row['method']} for ")
    apply.click().run()
    assert not at.exception
    tensors = apply.label.split(" for ", 1)[1].split(", ")
    review = review_of(at)
    from quantviz.calib import METHOD_LABELS

    best = next(k for k, v in METHOD_LABELS.items() if v == best_row["method"])
    for t in tensors:
        assert review.method_of(t) == best


def test_sample_warns_only_of_non_negative_tensors_and_the_fix_removes_it() -> None:
    at = _sample_page()
    got = _warnings(at)
    assert set(got) == {"non-negative symmetric"}  # no NaN, no overflow, per-channel weights, MinMax on the Softmax output
    (fix,) = _fix_buttons(at, "non-negative symmetric")
    assert "asymmetric" in fix.label
    fix.click().run()
    assert not at.exception
    assert review_of(at).config.symmetric is False
    assert "non-negative symmetric" not in _warnings(at)


def _warning_model(folder: Path) -> tuple[Path, Path]:
    """x[N,8] -> Gemm(w1: row 0 x40) -> g -> Softmax -> p -> Gemm(w2) -> y;
    x -> Sqrt -> s -> Relu -> r (NaN where x < 0); x -> Mul(1e-7) -> xs -> Gemm(wb, bias 1000s) -> h."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((6, 8)) * 0.5).astype(F32)
    w1[0] *= 40
    inits = {
        "w1": w1,
        "w2": (rng.standard_normal((3, 6)) * 0.5).astype(F32),
        "tiny": np.array(1e-7, F32),
        "wb": (rng.standard_normal((3, 8)) * 0.5).astype(F32),
        "bb": np.array([1000.0, -2000.0, 0.5], F32),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "w1"], ["g"], name="fc1", transB=1),
        helper.make_node("Softmax", ["g"], ["p"], name="softmax", axis=1),
        helper.make_node("Gemm", ["p", "w2"], ["y"], name="fc2", transB=1),
        helper.make_node("Sqrt", ["x"], ["s"], name="sqrt"),
        helper.make_node("Relu", ["s"], ["r"], name="relu"),
        helper.make_node("Mul", ["x", "tiny"], ["xs"], name="scale_down"),
        helper.make_node("Gemm", ["xs", "wb", "bb"], ["h"], name="fc_b", transB=1),
    ]
    g = helper.make_graph(
        nodes,
        "warnings",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", k]) for n, k in (("y", 3), ("r", 8), ("h", 3))],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    (folder / "warnings.onnx").write_bytes(model.SerializeToString())
    np.savez(folder / "x.npz", x=(rng.standard_normal((48, 8)) * 3).astype(F32))
    return folder / "warnings.onnx", folder / "x.npz"


def test_constructed_warnings_fire_and_their_fixes_clear_them(tmp_path: Path) -> None:
    model_path, data_path = _warning_model(tmp_path)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    at.radio(key="model_source").set_value("Upload a model").run()
    at.file_uploader(key="model_upload").upload("warnings.onnx", model_path.read_bytes(), "application/octet-stream").run()
    at.file_uploader(key="data_upload").upload("x.npz", data_path.read_bytes(), "application/octet-stream").run()
    at.button(key="run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    at.switch_page("pages/3_Layer_sensitivity.py").run()
    assert not at.exception, [e.value for e in at.exception]
    got = _warnings(at)
    # NaN from Sqrt of negatives, shown with its count; the overflowing bias shown in the app
    stats = session_of(at).store.get(work_of(at).stats_key)
    nan_s = stats.tensors["s"].nan_count
    assert nan_s > 0 and any(f"'s' held {nan_s} NaN" in t for t in got["NaN/Inf"])
    assert any("'fc_b'" in t and "overflows" in t for t in got["bias overflow"])
    # per-channel weights (the default): no weight warning yet
    assert "weight channels" not in got

    # per-tensor weights: w1's rows differ 40x (computed on the array), fc2's and fc_b's do not
    session_of(at).controls.per_channel = False
    at.run()
    a = np.abs(numpy_helper.to_array(next(i for i in __import__("onnx").load(str(model_path)).graph.initializer if i.name == "w1"))).max(axis=1)
    (text,) = _warnings(at)["weight channels"]
    assert "'w1'" in text and f"{a.max() / a.min():.0f}x" in text
    _fix_buttons(at, "weight channels")[0].click().run()
    assert session_of(at).controls.per_channel is True and "weight channels" not in _warnings(at)

    # KL (the default) clips the peaked Softmax output far below its top: the warning and its fix
    from quantviz.calib import METHODS, MethodConfig

    kl = METHODS["kl"](stats.tensors["p"], MethodConfig()).threshold
    assert kl < stats.tensors["p"].max / 2  # the case, from the method itself
    (sat,) = _warnings(at)["saturating activation"]
    assert "'p' (Softmax output)" in sat and f"clipped at {kl:.4g} while it reaches {stats.tensors['p'].max:.4g}" in sat
    _fix_buttons(at, "saturating activation")[0].click().run()
    assert review_of(at).method_of("p") == "minmax" and "saturating activation" not in _warnings(at)

    # keep the NaN tensor in float: its fix button goes (the warning stays: the data still holds NaN)
    nan_fix = [b for b in _fix_buttons(at, "NaN/Inf") if b.label == "Keep s in float"]
    nan_fix[0].click().run()
    assert review_of(at).choice("s").float_kept
    assert not [b for b in _fix_buttons(at, "NaN/Inf") if b.label == "Keep s in float"]
    assert not at.exception


def test_cancel_keeps_the_previous_analysis(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run cancelled at its first batch replaces nothing: the analysis shown before stays."""
    at = _sample_page()
    before = _report(at)
    key_before = work_of(at).last_analysis
    from quantviz.progress import CancelToken

    monkeypatch.setattr(CancelToken, "__call__", lambda self: True)  # as if Cancel was pressed at once
    at.number_input(key="sens_samples").set_value(100).run()  # other samples: a new analysis is asked
    at.button(key="sens_run").click().run()
    assert not at.exception
    assert any("cancelled after 0 of 100 samples" in str(i.value) and "kept" in str(i.value) for i in at.info)
    assert work_of(at).last_analysis == key_before and _report(at) is before
    assert any("This analysis is older" in str(w.value) for w in at.warning)  # still drawn, flagged as older
    # the best-method search and EQ, cancelled, leave the review as it was
    review = review_of(at)
    at.button(key="sens_best").click().run()
    at.button(key="eq_run").click().run()
    assert not at.exception
    assert review_of(at) == review and work_of(at).last_eq is None
    infos = [str(i.value) for i in at.info]
    assert any("EQ cancelled after 0 of" in t and "layer groups" in t for t in infos)
    assert not math.isnan(before.layers[0].isolated.cosine)
