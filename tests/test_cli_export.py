"""`python -m quantviz export / import / diff` as a pipeline calls them (subprocesses, exit status, stderr)."""

from __future__ import annotations

import csv
import io
import json
import math
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

from .graphs import conv_bn_relu

ROOT = Path(__file__).resolve().parent.parent
THRESHOLDS = {"x": 2.640625, "conv_out": 6.0, "relu out [0]": 1.0}


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quantviz", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def scale(t: float) -> float:
    return float(np.float32(t) / np.float32(127))


@pytest.fixture
def files(tmp_path: Path, write_model: Callable[[onnx.ModelProto, str], Path]) -> dict[str, Path]:
    doc = {
        "format": "quantviz-calibration",
        "version": 1,
        "model": {"name": "conv_bn_relu.onnx", "sha256": ""},
        "settings": {},
        "tensors": {
            n: {"method": "kl", "min": -t, "max": t, "threshold": t, "scale": scale(t), "zero_point": 0}
            for n, t in THRESHOLDS.items()
        },
    }
    table = tmp_path / "table.json"
    table.write_text(json.dumps(doc))
    return {"table": table, "model": write_model(conv_bn_relu(), "conv_bn_relu.onnx"), "dir": tmp_path}


def test_export_trt_with_chosen_header_then_import(files: dict[str, Path]) -> None:
    out = files["dir"] / "calib.cache"
    r = run("export", files["table"], "--format", "trt", "--trt-header", "TRT-100300-MinMaxCalibration", "-o", out)
    assert r.returncode == 0, r.stderr
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "TRT-100300-MinMaxCalibration"
    assert lines[1:] == [f"{n}: {struct.pack('>f', scale(t)).hex()}" for n, t in THRESHOLDS.items()]
    back = files["dir"] / "back.json"
    r = run("import", out, "-o", back)
    assert r.returncode == 0, r.stderr
    tensors = json.loads(back.read_text())["tensors"]
    for n, t in THRESHOLDS.items():
        assert tensors[n]["scale"] == scale(t) and math.isclose(tensors[n]["threshold"], t, rel_tol=2e-7)
        assert tensors[n]["method"] == "trt-cache"


def test_export_ncnn_needs_the_model(files: dict[str, Path]) -> None:
    out = files["dir"] / "m.table"
    r = run("export", files["table"], "--format", "ncnn", "-o", out)
    assert r.returncode == 2 and "--model" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run("export", files["table"], "--format", "ncnn", "--model", files["model"], "-o", out)
    assert r.returncode == 0, r.stderr
    assert out.read_text() == f"conv {127 / THRESHOLDS['x']:f} \n"  # only x feeds the Conv "conv"


def test_malformed_file_exits_2_naming_the_line(files: dict[str, Path]) -> None:
    bad = files["dir"] / "bad.cache"
    bad.write_text("TRT-8601-EntropyCalibration2\ninput: 3c010204\nbroken line\n")
    r = run("import", bad, "-o", files["dir"] / "x.json")
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and "Line 3" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (files["dir"] / "x.json").exists()
    r = run("export", files["table"], "--format", "trt", "--trt-header", "TRT8601", "-o", files["dir"] / "y.cache")
    assert r.returncode == 2 and "TRT-<version digits>-<algorithm>" in r.stderr


def test_diff_prints_or_writes_csv(files: dict[str, Path]) -> None:
    other = files["dir"] / "other.cache"
    # the other table: x doubled (hex of 2 * 2.640625 / 127 computed here), conv_out missing, one extra tensor
    other.write_text(
        f"TRT-8601-EntropyCalibration2\nx: {struct.pack('>f', 2 * 2.640625 / 127).hex()}\nrelu out [0]: 3c010204\nextra: 3c010204\n"
    )
    r = run("diff", files["table"], other)
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[1].split()
    assert first[0] == "x" and math.isclose(float(first[3]), 2.0, rel_tol=1e-5)
    assert "1 in A only, 1 in B only" in r.stderr
    out = files["dir"] / "diff.csv"
    r = run("diff", files["table"], other, "-o", out)
    assert r.returncode == 0 and r.stdout == ""
    rows = {row["name"]: row for row in csv.DictReader(io.StringIO(out.read_text(), newline=""))}
    assert math.isclose(float(rows["x"]["ratio"]), 2.0, rel_tol=1e-6)
    assert rows["conv_out"]["present"] == "a only" and rows["extra"]["present"] == "b only"


def test_export_qdq_reduce_range(files: dict[str, Path]) -> None:
    import onnx
    from onnx import numpy_helper

    out = files["dir"] / "q.onnx"
    r = run("export", files["table"], "--format", "trt", "--reduce-range", "-o", files["dir"] / "c.cache")
    assert r.returncode == 2 and "qdq only" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    model = ROOT / "sample_models" / "digits_cnn.onnx"
    table = files["dir"] / "cnn.json"
    r = run("calibrate", model, "--data", ROOT / "sample_models" / "digits_calib.npz", "--samples", "32", "--method", "minmax", "-o", table)
    assert r.returncode == 0, r.stderr
    r = run("export", table, "--format", "qdq", "--model", model, "--reduce-range", "-o", out)
    assert r.returncode == 0, r.stderr
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer}
    w = [a for n, a in inits.items() if a.dtype == np.int8 and n.endswith("_quantized")]
    assert w and max(int(np.abs(a.astype(np.int32)).max()) for a in w) == 63
