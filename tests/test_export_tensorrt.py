"""TensorRT calibration cache: FORMATS.md golden hex values, bit-exact round trip, odd names, bad files."""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantviz.errors import QuantvizError
from quantviz.export.tensorrt import DEFAULT_TRT_HEADER, dumps_trt, loads_trt, read_trt_cache, write_trt_cache
from quantviz.table import CalibrationTable, TensorEntry

# Line-based formats cannot hold line breaks; everything else (spaces, brackets, colons, unicode) goes.
NAME_CHARS = st.characters(blacklist_characters="\n\r", blacklist_categories=["Cs"])
NAMES = st.text(NAME_CHARS, min_size=1, max_size=24)


def sym(t: float, scale: float | None = None, **kw: Any) -> TensorEntry:
    s = float(np.float32(t) / np.float32(127)) if scale is None else scale
    return TensorEntry("kl", -t, t, t, s, 0, **kw)


def table(entries: dict[str, TensorEntry]) -> CalibrationTable:
    return CalibrationTable("m.onnx", "abc", {}, entries)


def float32_from_bits(hex_text: str) -> float:
    """IEEE-754 binary32 decoded by hand (sign, exponent, mantissa), independent of struct."""
    bits = int(hex_text, 16)
    sign = -1.0 if bits >> 31 else 1.0
    exponent = (bits >> 23) & 0xFF
    mantissa = bits & 0x7FFFFF
    if exponent == 0:
        return sign * mantissa * 2.0**-149
    return sign * (1 + mantissa / 2**23) * 2.0 ** (exponent - 127)


@pytest.mark.parametrize(("threshold", "expected"), [(1.0, "3c010204"), (2.640625, "3caa54a9"), (6.0, "3d418306")])
def test_golden_hex_from_formats_md(threshold: float, expected: str) -> None:
    # FORMATS.md: hex is the big-endian float32 bits of s = T / 127
    text = dumps_trt(table({"t": sym(threshold, scale=threshold / 127)}))
    assert text.splitlines() == [DEFAULT_TRT_HEADER, f"t: {expected}"]
    back = loads_trt(text).tensors["t"]
    assert back.scale == float32_from_bits(expected)
    assert back.threshold == float32_from_bits(expected) * 127
    assert math.isclose(back.threshold, threshold, rel_tol=1e-7)
    assert (back.min, back.max, back.zero_point, back.method) == (-back.threshold, back.threshold, 0, "trt-cache")


def test_formats_md_example_parses() -> None:
    text = "TRT-8601-EntropyCalibration2\ninput.1: 3caa54a9\n/conv1/Conv_output_0: 3d418306\n"
    t = loads_trt(text)
    assert list(t.tensors) == ["input.1", "/conv1/Conv_output_0"]
    assert math.isclose(t.tensors["input.1"].threshold, 2.640625, rel_tol=1e-7)
    assert math.isclose(t.tensors["/conv1/Conv_output_0"].threshold, 6.0, rel_tol=1e-7)
    assert t.settings["trt_header"] == "TRT-8601-EntropyCalibration2"
    assert (t.settings["trt_version"], t.settings["trt_algorithm"]) == ("8601", "EntropyCalibration2")


def test_names_with_spaces_brackets_colons(tmp_path: Path) -> None:
    names = ["(Unnamed Layer* 3) [Activation]_output", "a: b: c", "x:", "ends with colon space: ", "ünïcødé 名前"]
    src = table({n: sym(0.5 + i) for i, n in enumerate(names)})
    path = tmp_path / "calib.cache"
    write_trt_cache(src, path, header="TRT-100300-MinMaxCalibration")
    assert path.read_text(encoding="utf-8").splitlines()[0] == "TRT-100300-MinMaxCalibration"
    back = read_trt_cache(path)
    assert list(back.tensors) == names
    for n in names:
        assert back.tensors[n].scale == src.tensors[n].scale


def test_windows_line_ends() -> None:
    t = loads_trt(b"TRT-8601-EntropyCalibration2\r\ninput.1: 3caa54a9\r\n")
    assert list(t.tensors) == ["input.1"] and t.tensors["input.1"].scale == float32_from_bits("3caa54a9")


def test_hex_without_leading_zeros_and_uppercase() -> None:
    # TensorRT prints the bits with std::hex (no zero padding); 0x00800000 is the smallest normal float32
    t = loads_trt("TRT-8601-EntropyCalibration2\na: 800000\nb: 3C010204\n")
    assert t.tensors["a"].scale == 2.0**-126
    assert t.tensors["b"].scale == float32_from_bits("3c010204")


def test_float_kept_tensors_are_left_out_and_asymmetric_use_symmetric_scale() -> None:
    asym = TensorEntry("minmax", 0.0, 6.0, 6.0, 6.0 / 255, 0)  # uint8 [0, 6]
    text = dumps_trt(table({"kept": sym(1.0, float_kept=True), "asym": asym, "s": sym(2.0)}))
    lines = text.splitlines()[1:]
    assert [line.split(": ")[0] for line in lines] == ["asym", "s"]
    assert lines[0] == "asym: " + struct.pack(">f", np.float32(6.0) / np.float32(127)).hex()


@given(
    entries=st.dictionaries(
        NAMES, st.floats(min_value=2.0**-126, max_value=2.0**99, width=32), min_size=1, max_size=8
    )
)
@settings(max_examples=60, deadline=None)
def test_round_trip_is_bit_exact(entries: dict[str, float]) -> None:
    src = table({n: sym(s * 127, scale=s) for n, s in entries.items()})
    back = loads_trt(dumps_trt(src))
    # scale 0 is an all-zero tensor: kept in float, so left out like every float tensor (quantviz.table)
    kept = {n: s for n, s in entries.items() if s != 0}
    assert list(back.tensors) == list(kept)
    for n, s in kept.items():
        assert struct.pack(">f", back.tensors[n].scale) == struct.pack(">f", s)
        assert back.tensors[n].scale == s  # s was a float32 value: no rounding at all
        assert back.tensors[n].threshold == s * 127


@pytest.mark.parametrize("header", ["TRT-8601", "trt-8601-EntropyCalibration2", "TRT-86a1-Entropy", "TRT-8601-", "TensorRT"])
def test_bad_header_is_refused_with_a_sentence(header: str) -> None:
    with pytest.raises(QuantvizError, match="TRT-<version digits>-<algorithm>"):
        dumps_trt(table({"a": sym(1.0)}), header=header)
    with pytest.raises(QuantvizError, match="Line 1"):
        loads_trt(f"{header}\na: 3c010204\n")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty"),
        ("TRT-8601-EntropyCalibration2\na: 3c010204\nno separator here\n", "Line 3"),
        ("TRT-8601-EntropyCalibration2\na: 3c01zz04\n", "Line 2.*hex"),
        ("TRT-8601-EntropyCalibration2\na: 3c0102041\n", "Line 2"),
        ("TRT-8601-EntropyCalibration2\na: 7fc00000\n", "Line 2.*finite"),  # NaN
        ("TRT-8601-EntropyCalibration2\na: bc010204\n", "Line 2.*positive"),  # negative
        ("TRT-8601-EntropyCalibration2\na: 3c010204\na: 3c010204\n", "Line 3 .*repeats"),
    ],
)
def test_malformed_cache_names_the_line(text: str, match: str) -> None:
    with pytest.raises(QuantvizError, match=match):
        loads_trt(text)


def test_name_with_line_break_is_refused() -> None:
    with pytest.raises(QuantvizError, match="line break"):
        dumps_trt(table({"a\nb": sym(1.0)}))


def test_non_finite_entry_is_refused() -> None:
    with pytest.raises(QuantvizError, match="'bad'"):
        dumps_trt(table({"bad": TensorEntry("kl", math.nan, math.nan, math.nan, math.nan, 0)}))
