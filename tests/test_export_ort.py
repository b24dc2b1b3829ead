"""onnxruntime calibration tables: written by onnxruntime's own writer, read back within float32,
accepted by onnxruntime's own readers, older JSON layouts, bad files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantviz.errors import QuantvizError
from quantviz.export.ort_tables import (
    FILE_NAMES,
    KINDS,
    loads_ort_cache,
    loads_ort_flatbuffers,
    loads_ort_json,
    loads_ort_table,
    ort_table_bytes,
    read_ort_directory,
    write_ort_table,
    write_ort_tables,
)
from quantviz.table import CalibrationTable, TensorEntry

THRESHOLDS = {"input": 1.0, "conv out: [0]": 2.640625, "/relu/Relu_output_0": 0.1, "big": 12345.678}


def sym(t: float, **kw: Any) -> TensorEntry:
    return TensorEntry("kl", -t, t, t, float(np.float32(t) / np.float32(127)), 0, **kw)


def table(entries: dict[str, TensorEntry]) -> CalibrationTable:
    return CalibrationTable("m.onnx", "abc", {}, entries)


SRC = table({n: sym(t) for n, t in THRESHOLDS.items()})


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_within_float32(kind: str) -> None:
    back = loads_ort_table(ort_table_bytes(SRC, kind), kind)
    assert set(back.tensors) == set(THRESHOLDS)
    for n, t in THRESHOLDS.items():
        e = back.tensors[n]
        assert e.threshold == float(np.float32(t))  # the format stores float32
        assert (e.min, e.max, e.zero_point) == (-e.threshold, e.threshold, 0)
        assert e.scale == float(np.float32(np.float32(t) / np.float32(127)))
        assert e.method == f"ort-{kind}"


def test_onnxruntime_own_readers_accept_the_files(tmp_path: Path) -> None:
    from onnxruntime.quantization.calibrate import load_tensors_data
    from onnxruntime.quantization.CalTableFlatBuffers.TrtTable import TrtTable

    paths = write_ort_tables(SRC, tmp_path)
    assert {p.name for p in paths.values()} == set(FILE_NAMES.values())
    # calibration.json: onnxruntime's TensorsData loader
    data = load_tensors_data(paths["json"])
    for n, t in THRESHOLDS.items():
        lo, hi = data[n].range_value
        assert (float(lo), float(hi)) == (-float(np.float32(t)), float(np.float32(t)))
    # calibration.flatbuffers: the generated reader the TensorRT EP's schema comes from
    buf = paths["flatbuffers"].read_bytes()
    root = TrtTable.GetRootAs(bytearray(buf), 0)
    pairs = {root.Dict(i).Key().decode(): float(root.Dict(i).Value().decode()) for i in range(root.DictLength())}
    assert pairs == {n: float(np.float32(t)) for n, t in THRESHOLDS.items()}
    # calibration.cache: "<name> <range>" lines (the TensorRT EP splits on the last space)
    lines = paths["cache"].read_text().splitlines()
    assert {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines} == pairs
    assert {k: t.tensors for k, t in read_ort_directory(tmp_path).items()}.keys() == set(KINDS)


def test_write_one_kind_to_a_chosen_path(tmp_path: Path) -> None:
    out = tmp_path / "my.cache"
    write_ort_table(SRC, out, "cache")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my.cache"]  # the other two stayed in a private temp dir
    assert set(loads_ort_cache(out.read_bytes()).tensors) == set(THRESHOLDS)


def test_float_kept_left_out_and_asymmetric_written_as_symmetric_cover() -> None:
    asym = TensorEntry("minmax", -1.0, 5.0, 5.0, 6.0 / 255, 43)
    back = loads_ort_json(ort_table_bytes(table({"kept": sym(1.0, float_kept=True), "asym": asym}), "json"))
    assert list(back.tensors) == ["asym"]
    assert (back.tensors["asym"].min, back.tensors["asym"].max) == (-5.0, 5.0)


@given(
    st.dictionaries(
        st.text(st.characters(blacklist_characters="\n\r", blacklist_categories=["Cs"]), min_size=1, max_size=16),
        st.floats(1e-30, 1e30),
        min_size=1,
        max_size=5,
    )
)
@settings(max_examples=20, deadline=None)
def test_names_and_values_round_trip_in_every_kind(entries: dict[str, float]) -> None:
    src = table({n: sym(t) for n, t in entries.items()})
    for kind in KINDS:
        back = loads_ort_table(ort_table_bytes(src, kind), kind)
        assert {n: e.threshold for n, e in back.tensors.items()} == {n: float(np.float32(t)) for n, t in entries.items()}


def test_older_and_numpy_json_layouts() -> None:
    old = json.dumps({"a": [-2.0, 2.0], "relu": [0.0, 6.0]})
    t = loads_ort_json(old)
    assert t.tensors["a"].threshold == 2.0 and t.tensors["a"].zero_point == 0
    r = t.tensors["relu"]  # uint8 [0, 6]: s = 6 / 255 in float32, zero point 0 (computed here)
    assert (r.min, r.zero_point, r.scale) == (0.0, 0, float(np.float32(6.0 / 255)))
    assert math.isclose(r.max, 6.0, rel_tol=1e-6)
    numpy_form = {
        "CLS": "TensorsData",
        "data": {
            "x": {
                "lowest": {"data": [-1.5], "dtype": "float32", "CLS": "numpy.array"},
                "highest": {"data": 1.5, "dtype": "float32", "CLS": "numpy.array"},
                "CLS": "TensorData",
            }
        },
        "calibration_method": {"CLS": "CalibrationMethod", "value": "CalibrationMethod.Entropy"},
    }
    t = loads_ort_json(json.dumps(numpy_form))
    assert t.tensors["x"].threshold == 1.5
    assert t.settings["ort_calibration_method"] == "CalibrationMethod.Entropy"
    bare = {"y": {"lowest": -3.0, "highest": 3.0, "CLS": "TensorData"}}
    assert loads_ort_json(json.dumps(bare)).tensors["y"].threshold == 3.0


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"a": [1, 2', "line 1, column"),
        ('{"a": {"lowest": -1}}', 'tensor "a" has no "highest"'),
        ('{"a": [1, 2, 3]}', 'tensor "a" should be \\[min, max\\]'),
        ('{"a": ["x", 1]}', 'tensor "a", min must be a number'),
        ('{"a": [2, 1]}', "'a' has the range"),
        ('{"CLS": "TensorsData"}', '"data"'),
        ('{"a": {"lowest": {"data": [1, 2], "CLS": "numpy.array"}, "highest": 3}}', "per-channel"),
    ],
)
def test_malformed_json_names_the_tensor_or_field(text: str, match: str) -> None:
    with pytest.raises(QuantvizError, match=match):
        loads_ort_json(text)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a 1.0\nnospace\n", "Line 2"),
        ("a 1.0\nb x\n", "Line 2.*'x' is not a number"),
        ("a 1\na 2\n", "Line 2 .*repeats"),
        ("a inf\n", "Line 1.*finite"),
    ],
)
def test_malformed_cache_names_the_line(text: str, match: str) -> None:
    with pytest.raises(QuantvizError, match=match):
        loads_ort_cache(text)


def test_malformed_flatbuffers() -> None:
    good = ort_table_bytes(SRC, "flatbuffers")
    with pytest.raises(QuantvizError, match="too short"):
        loads_ort_flatbuffers(good[:4])
    with pytest.raises(QuantvizError, match="calibration.flatbuffers"):
        loads_ort_flatbuffers(good[: len(good) // 2])
    with pytest.raises(QuantvizError, match="calibration.flatbuffers"):
        loads_ort_flatbuffers(b"\xff" * 64)
