"""quantviz JSON: bit-exact round trip of every float (hypothesis), the contract keys, bad files."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantviz.errors import QuantvizError
from quantviz.export.qv_json import dumps, loads, read_json, write_json
from quantviz.table import CalibrationTable, TensorEntry
from tests.strategies import EntryValues, entry_values


def same_float(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or struct.pack(">d", a) == struct.pack(">d", b)


def table(entries: dict[str, TensorEntry], **kw: Any) -> CalibrationTable:
    return CalibrationTable("digits_cnn.onnx", "ab" * 32, {"dtype": "int8", "symmetric": True}, entries, **kw)


@given(
    entries=st.dictionaries(
        st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=24),  # JSON holds any name, line breaks too
        st.tuples(entry_values(), st.text(max_size=20)),
        min_size=1,
        max_size=6,
    )
)
@settings(max_examples=60, deadline=None)
def test_round_trip_is_bit_exact(entries: dict[str, tuple[EntryValues, str]]) -> None:
    src = {n: TensorEntry("kl", lo, hi, t, s, 0, cos, note, kept) for n, ((lo, hi, t, s, cos, kept), note) in entries.items()}
    back = loads(dumps(table(src)))
    assert list(back.tensors) == list(src)
    for n, e in src.items():
        b = back.tensors[n]
        for f in ("min", "max", "threshold", "scale"):
            assert same_float(getattr(e, f), getattr(b, f)), (n, f)
        assert (e.cosine is None) == (b.cosine is None)
        if e.cosine is not None:
            assert b.cosine is not None and same_float(e.cosine, b.cosine)
        assert b.note == e.note


def test_contract_keys_and_everything_else_survive(tmp_path: Path) -> None:
    e = TensorEntry(
        "kl",
        -2.9,
        2.9,
        2.9,
        0.022834,
        0,
        cosine=0.9993,
        note="reviewed: keep KL",
        float_kept=True,
        shared_with=("b",),
        extra={"observed_max": 3.4},
    )
    src = table(
        {"a": e},
        weights={"w": {"axis": 0, "scales": [0.1, 0.2], "node": "conv"}},
        requant={"conv": {"multiplier": [1073741824], "shift": [3]}},
        skipped={"empty": "no finite values"},
    )
    path = tmp_path / "t.json"
    write_json(src, path)
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["format"] == "quantviz-calibration" and doc["version"] == 1
    assert {k: doc["tensors"]["a"][k] for k in ("method", "min", "max", "threshold", "scale")} == {
        "method": "kl",
        "min": -2.9,
        "max": 2.9,
        "threshold": 2.9,
        "scale": 0.022834,
    }
    assert read_json(path) == src


def test_numpy_and_non_finite_values_in_nested_fields_are_written() -> None:
    # weight scales from numpy, a NaN in extra: JSON has no literal for either
    src = table(
        {"a": TensorEntry("kl", -1, 1, 1, 1 / 127, 0, extra={"observed_min": float("-inf"), "n": np.int64(3)})},
        weights={"w": {"axis": 0, "scales": np.array([0.5, 0.25], dtype=np.float32), "node": "conv"}},
    )
    back = loads(dumps(src))
    assert back.weights["w"]["scales"] == [0.5, 0.25]
    assert back.tensors["a"].extra == {"n": 3} and back.tensors["a"].observed_min == float("-inf")
    assert json.loads(dumps(back))["tensors"]["a"]["extra"] == {"observed_min": "-inf", "n": 3}  # on disk as before


def test_typed_extra_fields_keep_the_file_format() -> None:
    # observed range, shared scale source and folding are TensorEntry fields; the file keeps them under "extra"
    unshared = {"method": "kl", "min": -1.0, "max": 4.0, "threshold": 4.0, "scale": 4 / 127, "zero_point": 0}
    typed = TensorEntry(
        "kl", -2, 2, 2, 2 / 127, 0, observed_min=-5.0, observed_max=3.0, scale_from="y", extra={"unshared": unshared}
    )
    as_extra = TensorEntry(
        "kl", -2, 2, 2, 2 / 127, 0,
        extra={"observed_min": -5.0, "observed_max": 3.0, "scale_from": "y", "unshared": unshared},
    )  # fmt: skip
    folded = TensorEntry("minmax", -1, 1, 1, 1 / 127, 0, folded_into="bn_out")
    assert as_extra == typed
    text = dumps(table({"c": typed, "conv_out": folded}))
    doc = json.loads(text)
    assert list(doc["tensors"]["c"]["extra"]) == ["observed_min", "observed_max", "scale_from", "unshared"]
    assert doc["tensors"]["c"]["extra"]["scale_from"] == "y" and doc["tensors"]["conv_out"]["extra"] == {"folded_into": "bn_out"}
    back = loads(text)
    assert back.tensors["c"] == typed and back.tensors["conv_out"].folded_into == "bn_out"
    assert dumps(back) == text


def test_a_bad_typed_extra_value_is_one_sentence() -> None:
    doc = {
        "format": "quantviz-calibration",
        "version": 1,
        "tensors": {"a": {"method": "kl", "min": -1, "max": 1, "threshold": 1, "scale": 0.1, "extra": {"observed_min": "x"}}},
    }
    with pytest.raises(QuantvizError, match="observed_min must be a number"):
        loads(json.dumps(doc))


GOOD = {
    "format": "quantviz-calibration",
    "version": 1,
    "tensors": {"a": {"method": "kl", "min": -1, "max": 1, "threshold": 1, "scale": 0.1}},
}


def _with(path: tuple[str, ...], value: object) -> str:
    doc = json.loads(json.dumps(GOOD))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"format": "quantviz-calibration", "tensors": {', "line 1, column"),
        ('{"format": "something-else"}', "not a quantviz calibration table"),
        (_with(("version",), "one"), '"version"'),
        (_with(("version",), 99), "version 99"),
        (_with(("tensors",), []), '"tensors"'),
        (_with(("tensors", "a", "threshold"), "abc"), r'tensors\["a"\].threshold'),
        (_with(("tensors", "a", "zero_point"), 1.5), r'tensors\["a"\].zero_point'),
        (_with(("tensors", "a", "shared_with"), "b"), r'tensors\["a"\].shared_with'),
        (_with(("tensors", "a", "method"), 3), r'tensors\["a"\].method'),
        (_with(("weights",), [1, 2]), '"weights"'),
        (
            json.dumps({**GOOD, "tensors": {"a": {"method": "kl", "min": 0, "max": 1, "scale": 0.1}}}),
            r'tensors\["a"\] has no "threshold"',
        ),
    ],
)
def test_malformed_json_names_the_field(text: str, match: str) -> None:
    with pytest.raises(QuantvizError, match=match):
        loads(text)
