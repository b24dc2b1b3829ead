"""`python -m quantviz analyze`: LAYERS.csv per CLI.md, the HTML report, labels, exit status 2 on bad input."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from quantviz.cli import main
from tests.conftest import ROOT, SAMPLES

PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
MODEL = SAMPLES / "digits_cnn.onnx"
EVAL = SAMPLES / "digits_eval.npz"
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


def cli(*args: object) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("analyze") / "kl.json"
    assert cli("calibrate", MODEL, "--data", SAMPLES / "digits_calib.npz", "--samples", 64, "--method", "kl", "-o", path) == 0
    return path


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def float_accuracy(n: int) -> float:
    ev = np.load(EVAL)
    sess = ort.InferenceSession(MODEL.read_bytes(), providers=["CPUExecutionProvider"])
    probs = sess.run(None, {"input": ev["input"][:n]})[0]
    return float(np.mean(probs.argmax(1) == ev["label"][:n]))


def test_layers_csv_with_default_labels(table: Path, tmp_path: Path) -> None:
    out = tmp_path / "LAYERS.csv"
    # the eval .npz holds "input" and "label": the extra key is fine, and "label" gives accuracy
    proc = subprocess.run(
        [PYTHON, "-m", "quantviz", "analyze", str(MODEL), "--data", str(EVAL), "--table", str(table), "--samples", "100", "-o", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LAYERS.csv"]  # nothing else left in the cwd
    got = rows(out)
    assert list(got[0].keys())[: len(REQUIRED)] == REQUIRED and "accuracy" in got[0]
    layers, last = got[:-1], got[-1]
    assert last["layer"] == "(model output)" and last["output_tensor"] == "probs"
    assert float(last["accuracy_float"]) == pytest.approx(float_accuracy(100))
    assert abs(float(last["accuracy"]) - float(last["accuracy_float"])) <= 0.02
    assert float(last["cosine_accumulated"]) > 0.99
    model_table = json.loads(table.read_text())
    assert {r["op_type"] for r in layers} >= {"Conv", "Relu", "Add", "Concat", "Gemm"}
    for r in layers:
        assert r["output_tensor"] in model_table["tensors"]
        assert 0.9 < float(r["cosine_isolated"]) <= 1.0 and 0.9 < float(r["cosine_accumulated"]) <= 1.0
        assert float(r["mse_isolated"]) >= 0
        # the decomposition: every part a quantized layer has is at least as close to float as all three,
        # up to noise, and sensitive_part names the lowest of them
        parts = {p: float(r[f"cosine_{p}_only"]) for p in ("input", "weights", "output") if r[f"cosine_{p}_only"]}
        assert parts and r["sensitive_part"] == min(parts, key=lambda p: parts[p])
        assert all(c >= float(r["cosine_isolated"]) - 1e-4 for c in parts.values())
        assert ("weights" in parts) == (r["op_type"] in ("Conv", "Gemm"))


def test_html_report_and_explicit_labels(table: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels = tmp_path / "labels.npz"
    np.savez(labels, y=np.load(EVAL)["label"])
    out = tmp_path / "report.html"
    assert cli("analyze", MODEL, "--data", EVAL, "--table", table, "--samples", 40, "--labels", f"{labels}:y", "-o", out) == 0
    page = out.read_text()
    assert "/stem/stem.0/Conv" in page and "<script src" not in page and "accuracy quantized" in page
    assert "accuracy" in capsys.readouterr().err


def test_no_labels_no_accuracy(table: Path, tmp_path: Path) -> None:
    data = tmp_path / "only_input.npz"
    np.savez(data, input=np.load(EVAL)["input"][:16])
    out = tmp_path / "l.csv"
    assert main(["analyze", str(MODEL), "--data", str(data), "--table", str(table), "-o", str(out)]) == 0
    got = rows(out)
    assert "accuracy" not in got[0] and got[-1]["layer"] == "(model output)" and got[-1]["top1_agreement"]


def test_bad_input_exit_2(table: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads(table.read_text())
    doc["tensors"]["not_in_this_model"] = dict(next(iter(doc["tensors"].values())))
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(doc))
    base = ["analyze", str(MODEL), "--data", str(EVAL), "--samples", "8"]
    cases = [
        (base + ["--table", str(wrong), "-o", str(tmp_path / "a.csv")], "not_in_this_model"),
        (base + ["--table", str(table), "-o", str(tmp_path / "a.txt")], ".csv"),
        (base + ["--table", str(table), "--labels", f"{EVAL}:nope", "-o", str(tmp_path / "a.csv")], "no array 'nope'"),
        (base + ["--table", str(tmp_path / "missing.json"), "-o", str(tmp_path / "a.csv")], "does not exist"),
    ]
    for argv, words in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and words in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "a.csv").exists()


def test_calibrate_best_per_layer(tmp_path: Path) -> None:
    out = tmp_path / "best.json"
    base = [PYTHON, "-m", "quantviz", "calibrate", str(MODEL)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([*base, "--method", "best", "-o", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and "needs MODEL and --data" in r.stderr
    data = ["--data", str(SAMPLES / "digits_calib.npz"), "--samples", "64"]
    r = subprocess.run([*base, *data, "--method", "best", "--best-methods", "kl,nope", "-o", str(out)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert r.returncode == 2 and "--best-methods" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run([*base, *data, "--method", "best", "--best-methods", "kl,minmax,mse", "--best-samples", "32", "-o", str(out)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["settings"]["method"] == "best"
    methods = {t["method"] for t in doc["tensors"].values()}
    assert methods <= {"kl", "minmax", "mse"} and len(methods) >= 2
    assert "best method per layer:" in r.stderr
