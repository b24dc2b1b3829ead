"""A person opens Export with the bundled sample and downloads every format the page offers; each
file is checked against numbers computed independently (struct, csv, onnx, onnxruntime, numpy)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from onnxruntime.quantization.CalTableFlatBuffers.TrtTable import TrtTable
from playwright.sync_api import Page, expect

from tests.e2e.conftest import screenshot, settle
from tests.e2e.flows import (
    DATA,
    MODEL,
    ROOT,
    after_rerun,
    conv_gemm_inputs,
    download,
    error_texts,
    float_tensors,
    folded_weight_absmax,
    go_to,
    keyed,
    no_exception,
    open_home,
    run_all,
)

HEADER = "TRT-100300-MinMaxCalibration"  # not the page's default, so the test sees the choice carried
Q_SUFFIX = "_QuantizeLinear_Input"  # onnxruntime renames a quantized graph output's producer tensor


def _f32(x: float) -> np.float32:
    return np.float32(x)


def _avx2_without_vnni() -> bool:
    """Read the CPU flags here, the way a person would check their machine."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    flags = next(
        (line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), []
    )
    return "avx2" in flags and not {"avx512_vnni", "avx_vnni"} & set(flags)


def _check_json(doc: dict[str, Any]) -> dict[str, Any]:
    names = float_tensors(MODEL)
    assert doc["format"] == "quantviz-calibration"
    assert doc["model"]["sha256"] == hashlib.sha256(MODEL.read_bytes()).hexdigest()
    with np.load(DATA) as z:
        assert doc["settings"]["samples"] == len(z["input"])
    tensors: dict[str, Any] = doc["tensors"]
    assert list(tensors) == names  # every float tensor, in graph order
    absmax = {n: float(np.abs(v).max()) for n, v in run_all(MODEL, np.load(DATA)["input"]).items()}
    absmax["input"] = float(np.abs(np.load(DATA)["input"]).max())
    for name, e in tensors.items():
        t = e["threshold"]
        assert e["zero_point"] == 0 and e["min"] == -t and e["max"] == t, name  # int8 symmetric
        assert e["scale"] == float(_f32(t) / _f32(127)), name
        # the chosen threshold never exceeds what the data reached (its own, or that of the ReLU it is fused with)
        own = max([absmax[name], *(absmax[s] for s in e.get("shared_with", []))])
        assert 0 < t <= own * (1 + 1e-6), (name, t, own)
    return tensors


def _check_csv(text: str, tensors: dict[str, Any]) -> None:
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert [r["name"] for r in rows] == list(tensors)
    for r in rows:
        e = tensors[r["name"]]
        for col in ("min", "max", "threshold", "scale"):
            assert float(r[col]) == e[col], (r["name"], col)
        assert r["method"] == e["method"] and int(r["zero_point"]) == e["zero_point"]
        assert r["float"] == "false"
        assert (json.loads(r["shared_with"]) if r["shared_with"] else []) == e.get("shared_with", [])


def _check_trt(text: str, tensors: dict[str, Any]) -> None:
    lines = text.splitlines()
    assert lines[0] == HEADER
    body = dict(line.rsplit(": ", 1) for line in lines[1:])
    assert list(body) == list(tensors)
    for name, e in tensors.items():
        assert body[name] == struct.pack(">f", e["scale"]).hex(), name


def _check_ort(json_bytes: bytes, flat: bytes, cache: bytes, tensors: dict[str, Any]) -> None:
    def num(v: Any) -> Any:
        return v["data"] if isinstance(v, dict) else v

    doc = json.loads(json_bytes)
    assert doc["CLS"] == "TensorsData"
    assert set(doc["data"]) == set(tensors)
    for name, e in tensors.items():
        t = _f32(e["threshold"])
        assert _f32(num(doc["data"][name]["lowest"])) == -t and _f32(num(doc["data"][name]["highest"])) == t, name
    # flatbuffers: read with onnxruntime's own generated reader
    root = TrtTable.GetRootAsTrtTable(flat, 0)
    kv = {root.Dict(i).Key().decode(): root.Dict(i).Value().decode() for i in range(root.DictLength())}
    assert set(kv) == set(tensors)
    lines = dict(line.rsplit(" ", 1) for line in cache.decode().splitlines())
    assert set(lines) == set(tensors)
    for name, e in tensors.items():
        t = _f32(e["threshold"])
        assert _f32(float(kv[name])) == t, name
        assert _f32(float(lines[name])) == t, name


def _check_ncnn(text: str, tensors: dict[str, Any]) -> None:
    lines = [line for line in text.split("\n") if line]
    assert all(line.endswith(" ") for line in lines)  # ncnn2table's trailing space
    rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in lines}
    weights = folded_weight_absmax(MODEL)
    layers = conv_gemm_inputs(MODEL)
    assert set(rows) == {f"{node}_param_0" for node, _ in weights.values()} | set(layers)
    # weight lines first, then one activation line per Conv / Gemm layer
    assert all("_param_" in line.split()[0] for line in lines[: len(weights)])
    for node, absmax in weights.values():
        np.testing.assert_allclose(rows[f"{node}_param_0"], 127.0 / absmax, rtol=2e-5, atol=1e-6, err_msg=node)
    for layer, tensor in layers.items():
        (value,) = rows[layer]
        assert abs(value - 127.0 / tensors[tensor]["threshold"]) <= 1e-6 + 1e-6 * value, layer


def _check_qdq(data: bytes, doc: dict[str, Any], weight_levels: int) -> onnx.ModelProto:
    tensors, weights = doc["tensors"], doc["weights"]
    proto = onnx.load_from_string(data)
    onnx.checker.check_model(proto)
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    acts: dict[str, float] = {}
    for n in proto.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits:
            scale, zp = inits[n.input[1]], inits[n.input[2]]
            assert scale.size == 1 and zp.dtype == np.int8 and int(zp) == 0, n.name  # per-tensor int8 symmetric
            acts[n.input[0].removesuffix(Q_SUFFIX)] = float(scale)
    # every Conv / Gemm reads a quantized input, and every activation scale is the JSON's
    assert set(conv_gemm_inputs(MODEL).values()) <= set(acts)
    assert set(acts) <= set(tensors)
    for name, s in acts.items():
        assert _f32(s) == _f32(tensors[name]["scale"]), name
    # weights: int8 per output channel, scale = the JSON's (times 127/63 for 7-bit weights)
    seen = set()
    for n in proto.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dtype == np.int8:
            w = n.input[0].removesuffix("_quantized")
            seen.add(w)
            want = np.asarray(weights[w]["scales"], np.float32) * np.float32(127 / weight_levels)
            np.testing.assert_allclose(inits[n.input[1]], want, rtol=1e-6, err_msg=w)
            assert np.abs(inits[n.input[0]].astype(np.int32)).max() <= weight_levels, w
    assert seen == set(weights)
    return proto


def _agreement(qdq: onnx.ModelProto) -> float:
    """Top-1 agreement of the QDQ model with the float model on the sample's evaluation images."""
    x = np.load(ROOT / "sample_models" / "digits_eval.npz")["input"]
    ref = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    got = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    return float((ref.argmax(1) == got.argmax(1)).mean())


def test_export_every_format(page: Page, app_url: str, tmp_path: Path) -> None:
    open_home(page, app_url)
    go_to(page, "Export", "Export")
    header = keyed(page, "trt_header").locator("input")
    header.fill(HEADER)
    header.press("Enter")
    after_rerun(page)
    assert not error_texts(page)
    screenshot(page, "export_01_page")

    doc = json.loads(download(page, "export_json", tmp_path / "calibration_table.json"))
    tensors = _check_json(doc)
    _check_csv(download(page, "export_csv", tmp_path / "calibration_table.csv").decode("utf-8"), tensors)
    _check_trt(download(page, "export_trt", tmp_path / "trt.cache").decode("utf-8"), tensors)
    _check_ort(
        download(page, "export_ort-json", tmp_path / "calibration.json"),
        download(page, "export_ort-flatbuffers", tmp_path / "calibration.flatbuffers"),
        download(page, "export_ort-cache", tmp_path / "ort.cache"),
        tensors,
    )
    _check_ncnn(download(page, "export_ncnn", tmp_path / "model.table").decode("utf-8"), tensors)

    review = download(page, "export_review", tmp_path / "review.quantviz.npz")
    with np.load(io.BytesIO(review), allow_pickle=False) as z:
        stats_header = json.loads(str(z["header"]))
        r = json.loads(str(z["review"]))
    assert stats_header["tensors"] == float_tensors(MODEL)
    assert stats_header["model"]["sha256"] == doc["model"]["sha256"]
    assert r["format"] == "quantviz-review" and r["choices"] == {} and r["default_method"] == doc["settings"]["method"]

    # the QDQ model is built on request, then downloadable; 7-bit weights on a tick
    expect(keyed(page, "export_qdq")).to_have_count(0)
    box = keyed(page, "qdq_reduce_range")
    expect(box.get_by_text("7-bit weights (reduce range)")).to_be_visible()
    advice = page.get_by_test_id("stAlertContentInfo").filter(has_text="7-bit weights")
    expect(advice).to_have_count(1 if _avx2_without_vnni() else 0)
    keyed(page, "prepare_qdq").locator("button").click()
    expect(keyed(page, "export_qdq")).to_be_visible(timeout=60_000)
    settle(page)
    no_exception(page)
    _check_qdq(download(page, "export_qdq", tmp_path / "model_qdq.onnx"), doc, 127)
    box.get_by_text("7-bit weights (reduce range)").click()
    after_rerun(page)
    expect(box.locator("input[type=checkbox]")).to_be_checked()
    seven = _check_qdq(download(page, "export_qdq", tmp_path / "model_qdq7.onnx"), doc, 63)
    # with 7-bit weights the model runs in onnxruntime close to the float model on any CPU
    assert _agreement(seven) >= 0.95
    no_exception(page)
    assert not error_texts(page)
    screenshot(page, "export_02_qdq_built")
