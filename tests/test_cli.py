"""`python -m quantviz collect / calibrate`: files with the expected values; bad input = exit 2, one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from quantviz.stats import load_stats
from tests import graphs
from tests.conftest import ROOT, ort_run_with_outputs
from tests.test_kl import slow_best, slow_kl

PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
ACTIVATIONS = ["conv_out", "bn_out", "relu_out", "add_out", "out"]
Case = dict[str, Any]  # the case's folder, model, data and the expected tensors


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "quantviz", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    d = tmp_path_factory.mktemp("cli")
    proto = graphs.conv_bn_relu(seed=9)
    onnx.save_model(proto, str(d / "m.onnx"))
    x = np.random.default_rng(9).standard_normal((12, 3, 8, 8)).astype(np.float32)
    np.savez(d / "d.npz", x=x)
    expected = ort_run_with_outputs(proto, ACTIVATIONS, {"x": x})
    expected["x"] = x
    return {"dir": d, "model": d / "m.onnx", "data": d / "d.npz", "expected": expected}


def _table(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    assert doc["format"] == "quantviz-calibration"
    for name, e in doc["tensors"].items():
        assert {"threshold", "scale", "min", "max", "method"} <= set(e), name
    return doc


def test_collect_writes_stats(case: Case) -> None:
    out = case["dir"] / "stats.npz"
    r = run("collect", case["model"], "--data", case["data"], "--batch-size", "5", "--bins", "512", "-o", out)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    stats = load_stats(out)
    assert stats.samples == 12 and stats.config.bins == 512 and stats.config.batch_size == 5
    assert set(stats.tensors) == {"x", *ACTIVATIONS}
    for name, value in case["expected"].items():
        t = stats.tensors[name]
        np.testing.assert_allclose([t.min, t.max], [value.min(), value.max()], rtol=1e-6, atol=1e-7, err_msg=name)
        assert t.count == value.size


def test_calibrate_minmax_from_model_and_data(case: Case) -> None:
    out = case["dir"] / "minmax.json"
    r = run("calibrate", case["model"], "--data", case["data"], "--method", "minmax", "-o", out)
    assert r.returncode == 0, r.stderr
    doc = _table(out)
    assert set(doc["tensors"]) == {"x", *ACTIVATIONS}
    for name, e in doc["tensors"].items():
        # a Conv output fused with its ReLU takes the ReLU output's scale (ALGORITHMS.md, fusions)
        source = e.get("extra", {}).get("scale_from", name)
        t = float(np.abs(case["expected"][source]).max())
        assert e["method"] == "minmax"
        assert e["threshold"] == pytest.approx(t, rel=1e-6)
        assert (e["min"], e["max"]) == (-e["threshold"], e["threshold"])
        assert e["scale"] == float(np.float32(e["threshold"]) / np.float32(127))
        assert e["zero_point"] == 0
    assert doc["tensors"]["x"]["threshold"] == float(np.abs(case["expected"]["x"]).max())  # a graph input: exact


def test_calibrate_asymmetric(case: Case) -> None:
    out = case["dir"] / "asym.json"
    r = run("calibrate", case["model"], "--data", case["data"], "--method", "minmax", "--asymmetric", "-o", out)
    assert r.returncode == 0, r.stderr
    e = _table(out)["tensors"]["relu_out"]
    hi = float(case["expected"]["relu_out"].max())
    assert e["zero_point"] == 0 and e["min"] == 0.0
    assert e["scale"] == pytest.approx(float(np.float32(hi / 255)), rel=1e-6)


def test_calibrate_kl_from_stats(case: Case) -> None:
    stats_path = case["dir"] / "stats_kl.npz"
    assert run("collect", case["model"], "--data", case["data"], "-o", stats_path).returncode == 0
    out = case["dir"] / "kl.json"
    r = run("calibrate", "--stats", stats_path, "--method", "kl", "-o", out)
    assert r.returncode == 0, r.stderr
    doc = _table(out)
    stats = load_stats(stats_path)
    for name, e in doc["tensors"].items():
        assert e["method"] == "kl"
        source = e.get("extra", {}).get("scale_from", name)
        assert 0 < e["threshold"] <= float(np.abs(case["expected"][source]).max()) * (1 + 1e-6)
        assert e["scale"] == float(np.float32(e["threshold"]) / np.float32(127))
    # one tensor against an independent reference: TensorRT's search (the slow loop of test_kl) on an exact
    # 2048-bin histogram of |x| over [0, max|x|] built from the tensor itself, exact zeros left out.
    # quantviz resamples its streaming histogram to that grid, so it must land within one bin of the
    # reference's choice, or on a candidate whose reference divergence is within 10 % of the minimum.
    values = np.abs(case["expected"]["bn_out"].astype(np.float64)).ravel()
    top = float(values.max())
    exact, _ = np.histogram(values[values != 0], bins=2048, range=(0.0, top))
    cands, kls = slow_kl([int(v) for v in exact])
    width = top / 2048
    reference = slow_best(cands, kls) * width
    got = doc["tensors"]["bn_out"]["threshold"]
    i = int(round(got / width))
    kl_at_got = kls[cands.index(i)] if i in cands else float("inf")
    assert abs(got - reference) <= width * (1 + 1e-9) or kl_at_got <= min(kls) * 1.1, (got, reference, width)
    assert stats.tensors["bn_out"].absmax == pytest.approx(top, rel=1e-6)


def test_calibrate_kl_center(case: Case) -> None:
    out = case["dir"] / "klc.json"
    r = run("calibrate", case["model"], "--data", case["data"], "--method", "kl", "--kl-threshold", "center", "-o", out)
    assert r.returncode == 0, r.stderr
    assert _table(out)["settings"]["method_config"]["kl_threshold"] == "center"


def _bad(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_bad_inputs(case: Case, tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    _bad(
        run("calibrate", tmp_path / "missing.onnx", "--data", case["data"], "--method", "minmax", "-o", out),
        "missing.onnx",
        "does not exist",
    )
    (tmp_path / "fake.onnx").write_text("this is a text file\n")
    _bad(
        run("collect", tmp_path / "fake.onnx", "--data", case["data"], "-o", tmp_path / "s.npz"),
        "'fake.onnx' is not a readable ONNX model",
    )
    np.savez(tmp_path / "wrong.npz", x=np.zeros((4, 3, 7, 7), np.float32))
    _bad(
        run("collect", case["model"], "--data", tmp_path / "wrong.npz", "-o", tmp_path / "s.npz"),
        "Input 'x'",
        "[N, 3, 8, 8]",
        "[4, 3, 7, 7]",
    )
    np.savez(tmp_path / "u8.npz", x=np.zeros((4, 3, 8, 8), np.uint8))
    _bad(run("collect", case["model"], "--data", tmp_path / "u8.npz", "-o", tmp_path / "s.npz"), "Input 'x'", "float32", "uint8")
    _bad(run("calibrate", case["model"], "--data", case["data"], "--method", "magic", "-o", out), "magic", "--method")
    _bad(run("calibrate", "--stats", tmp_path / "nope.npz", "--method", "minmax", "-o", out), "nope.npz", "does not exist")
    _bad(run("calibrate", "--method", "minmax", "-o", out), "calibrate needs MODEL")
    _bad(run("collect", case["model"], "--data", "synthetic:abc", "-o", tmp_path / "s.npz"), "synthetic:abc")
    _bad(
        run("collect", case["model"], "--data", case["data"], "-o", tmp_path / "no" / "such" / "s.npz"),
        "output file",
        "does not exist",
    )
    assert not out.exists()
