"""`calibrate ... --target`: the table with its fallbacks and trace, exports that carry them, bad input = exit 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypedDict

import numpy as np
import onnx
import pytest

from tests.test_cli import _bad, run
from tests.test_mixed import _cosine, _float_out, _qdq_out, planted_data, planted_model


class Case(TypedDict):
    dir: Path
    model: Path
    data: Path
    x: np.ndarray


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    d = tmp_path_factory.mktemp("cli_mixed")
    onnx.save_model(planted_model(), str(d / "m.onnx"))
    x = planted_data()
    np.savez(d / "d.npz", x=x)
    return {"dir": d, "model": d / "m.onnx", "data": d / "d.npz", "x": x}


def test_target_writes_fallbacks_and_trace_and_exports_carry_them(case: Case) -> None:
    out = case["dir"] / "t.json"
    r = run("calibrate", case["model"], "--data", case["data"], "--method", "minmax", "--target", "cosine=0.995", "-o", out)
    assert r.returncode == 0, r.stderr
    assert "target cosine >= 0.995 reached" in r.stderr and "float: p" in r.stderr
    doc = json.loads(out.read_text())
    mixed = doc["settings"]["mixed"]
    assert set(mixed["fallbacks"]) == {"p", "p_relu"} and mixed["reached"] is True
    assert [s["action"] for s in mixed["trace"]] == ["int8", "add", "keep"]
    assert doc["tensors"]["p_relu"]["float"] is True
    qdq = case["dir"] / "m_qdq.onnx"
    r = run("export", out, "--format", "qdq", "--model", case["model"], "-o", qdq)
    assert r.returncode == 0, r.stderr
    proto = onnx.load(str(qdq))
    p = next(n for n in proto.graph.node if n.name == "p")
    assert p.input[0] == "x"  # p reads x in float: no Q/DQ before it
    ref = _float_out(planted_model(), case["x"])
    assert _cosine(ref, _qdq_out(proto, case["x"])) == pytest.approx(mixed["final_value"], abs=1e-6)
    trt = case["dir"] / "c.cache"
    assert run("export", out, "--format", "trt", "-o", trt).returncode == 0
    names = {line.rsplit(": ", 1)[0] for line in trt.read_text().splitlines()[1:]}
    assert "p_relu" not in names and "q_relu" in names


def test_int16_fallback_from_the_cli(case: Case) -> None:
    out = case["dir"] / "t16.json"
    r = run(
        "calibrate", case["model"], "--data", case["data"], "--method", "minmax", "--target", "cosine=0.9",
        "--fallback", "int16", "-o", out,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    mixed = json.loads(out.read_text())["settings"]["mixed"]
    assert mixed["precision"] == "int16" and {v["precision"] for v in mixed["fallbacks"].values()} == {"int16"}
    qdq = case["dir"] / "m16.onnx"
    assert run("export", out, "--format", "qdq", "--model", case["model"], "-o", qdq).returncode == 0
    proto = onnx.load(str(qdq))
    assert any(n.domain == "com.microsoft" and n.op_type == "QuantizeLinear" for n in proto.graph.node)
    ref = _float_out(planted_model(), case["x"])
    assert _cosine(ref, _qdq_out(proto, case["x"])) == pytest.approx(mixed["final_value"], abs=1e-6)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--target", "cosine=high"], ["--target", "not a number"]),
        (["--target", "accuracy=1"], ["--target takes"]),
        (["--target", "top1-drop=1"], ["labels"]),
        (["--target", "metric=no_such_module_xyz:f>=1"], ["Cannot import"]),
        (["--target", "cosine=0.9", "--target-samples", "0"], ["--target-samples"]),
    ],
)
def test_bad_targets(case: Case, tmp_path: Path, extra: list[str], words: list[str]) -> None:
    _bad(run("calibrate", case["model"], "--data", case["data"], "--method", "minmax", *extra, "-o", tmp_path / "t.json"), *words)


def test_target_needs_the_model(case: Case, tmp_path: Path) -> None:
    stats = tmp_path / "s.npz"
    assert run("collect", case["model"], "--data", case["data"], "-o", stats).returncode == 0
    _bad(
        run("calibrate", "--stats", stats, "--method", "minmax", "--target", "cosine=0.9", "-o", tmp_path / "t.json"),
        "needs the model",
    )
