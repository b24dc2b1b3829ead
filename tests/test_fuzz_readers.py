"""Every reader, fed mutated valid files (bytes flipped, cut, repeated, inserted): nothing but
QuantvizError may escape, and what is accepted satisfies the schema. Plus round trips write -> read ->
equal for every format, with tables drawn by hypothesis."""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantviz.data import open_source
from quantviz.errors import QuantvizError
from quantviz.export import csv_format, ncnn, ort_tables, qdq_model, qv_json, tensorrt
from quantviz.export.registry import ExportOptions, export_bytes, import_bytes
from quantviz.model import InputSpec, load_model
from quantviz.review import Review, load_review, review_bytes
from quantviz.schema import SCALE_MIN, check_stats, check_table
from quantviz.stats import load_stats, save_stats
from quantviz.table import CalibrationTable, TensorEntry
from tests import bad_files as bf
from tests.strategies import EntryValues, entry_values

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
ROUND = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> bf.Valid:
    return bf.build(tmp_path_factory.mktemp("valid"))


@st.composite
def mutated(draw: st.DrawFn, raw: bytes) -> bytes:
    """The file with 1-4 random edits: flip a byte, cut the end, drop a slice, insert or repeat bytes."""
    b = bytearray(raw)
    for _ in range(draw(st.integers(1, 4))):
        if not b:
            break
        at = draw(st.integers(0, len(b) - 1))
        op = draw(st.sampled_from(["flip", "cut", "drop", "insert", "repeat"]))
        if op == "flip":
            b[at] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del b[at:]
        elif op == "drop":
            del b[at : at + draw(st.integers(1, 64))]
        elif op == "insert":
            b[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            b[at:at] = b[at : at + draw(st.integers(1, 64))] * draw(st.integers(1, 8))
    return bytes(b)


def _only_quantviz_errors(read: Callable[[bytes], object], data: bytes) -> object:
    try:
        return read(data)
    except QuantvizError:
        return None


def _tables_ok(result: object) -> None:
    if isinstance(result, CalibrationTable):
        check_table(result)


def _ncnn_with(model: object) -> Callable[[bytes], object]:
    return lambda d: ncnn.loads_ncnn(d, model)  # type: ignore[arg-type]


READERS: dict[str, tuple[str, Callable[[bf.Valid], Callable[[bytes], object]]]] = {
    "json": ("json", lambda v: qv_json.loads),
    "csv": ("csv", lambda v: csv_format.loads_csv),
    "trt": ("trt", lambda v: tensorrt.loads_trt),
    "ort-json": ("ort-json", lambda v: ort_tables.loads_ort_json),
    "ort-cache": ("ort-cache", lambda v: ort_tables.loads_ort_cache),
    "ort-flatbuffers": ("ort-flatbuffers", lambda v: ort_tables.loads_ort_flatbuffers),
    "ncnn": ("ncnn", lambda v: ncnn.loads_ncnn),
    "ncnn-with-model": ("ncnn", lambda v: _ncnn_with(load_model(v.model))),
    "qdq": ("qdq", lambda v: qdq_model.loads_qdq),
    "detect-any": ("trt", lambda v: (lambda d: import_bytes(d, None, filename="t"))),
    "detect-json": ("json", lambda v: (lambda d: import_bytes(d, None, filename="t.json"))),
    "stats": ("stats", lambda v: load_stats),
    "review": ("review", lambda v: load_review),
    "data-npz": ("data", lambda v: (lambda d: open_source(d, [InputSpec("x", ("N", 3, 8, 8), "float32")], name="d.npz"))),
}


@pytest.mark.parametrize("reader", list(READERS))
def test_mutated_files_raise_only_quantviz_errors(reader: str, valid: bf.Valid) -> None:
    kind, make = READERS[reader]
    raw = valid.data.read_bytes() if kind == "data" else valid.files[kind]
    read = make(valid)

    @FUZZ
    @given(data=mutated(raw))
    def run(data: bytes) -> None:
        result = _only_quantviz_errors(read, data)
        _tables_ok(result)
        if isinstance(result, tuple):  # load_review
            check_stats(result[0])
        elif result is not None and hasattr(result, "tensors") and not isinstance(result, CalibrationTable):
            check_stats(result)

    run()


# --- round trips ----------------------------------------------------------------------------------

NAMES = st.text(st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs", "Zs", "Cc")), min_size=1, max_size=12).filter(
    lambda s: s.strip() == s and ": " not in s and not s.startswith("#")
)
SCALES32 = st.floats(SCALE_MIN, 2.0**60, width=32)


def _table(entries: dict[str, TensorEntry]) -> CalibrationTable:
    return CalibrationTable("m", "", {}, entries)


@ROUND
@given(st.dictionaries(NAMES, st.tuples(entry_values(), st.integers(-128, 255), st.text(max_size=10)), min_size=1, max_size=6))
def test_json_and_csv_round_trip_exactly(entries: dict[str, tuple[EntryValues, int, str]]) -> None:
    src = {n: TensorEntry("kl", lo, hi, t, s, zp, cos, note, kept) for n, ((lo, hi, t, s, cos, kept), zp, note) in entries.items()}
    for fmt in ("json", "csv"):
        back = import_bytes(export_bytes(_table(src), fmt), fmt)
        assert list(back.tensors) == list(src)
        for n, e in src.items():
            b = back.tensors[n]
            for f in ("min", "max", "threshold", "scale"):
                x, y = getattr(e, f), getattr(b, f)
                assert (math.isnan(x) and math.isnan(y)) or struct.pack(">d", x) == struct.pack(">d", y), (fmt, n, f)
            assert (b.zero_point, b.note, b.float_kept) == (e.zero_point, e.note, e.float_kept)


@ROUND
@given(st.dictionaries(NAMES.filter(lambda s: " " not in s), SCALES32, min_size=1, max_size=6))
def test_engine_formats_round_trip_the_scale(scales: dict[str, float]) -> None:
    """TensorRT keeps the float32 scale bit for bit; onnxruntime's tables keep T = 127 s as float32;
    ncnn (keyed by layer without a model) keeps 127 / T printed with %f: to its six decimals."""
    src = {n: TensorEntry("kl", -s * 127, s * 127, s * 127, s, 0) for n, s in scales.items()}
    back = import_bytes(export_bytes(_table(src), "trt"), "trt")
    assert {n: e.scale for n, e in back.tensors.items()} == scales
    for fmt in ("ort-json", "ort-cache", "ort-flatbuffers"):
        back = import_bytes(export_bytes(_table(src), fmt), fmt)
        for n, e in src.items():
            assert back.tensors[n].threshold == pytest.approx(float(np.float32(e.threshold)), rel=1e-6), (fmt, n)
    layered = CalibrationTable("m", "", {"ncnn_keys": "layer"}, {n: e for n, e in src.items() if 127 / e.threshold < 1e6 and 127 / e.threshold > 1e-3})
    if layered.tensors:
        back = import_bytes(export_bytes(layered, "ncnn"), "ncnn")
        for n, e in layered.tensors.items():
            assert 127 / back.tensors[n].threshold == pytest.approx(127 / e.threshold, abs=1e-6, rel=1e-6)


def test_qdq_and_ncnn_with_the_model_round_trip(valid: bf.Valid) -> None:
    model = load_model(valid.model)
    table = qv_json.loads(valid.files["json"])
    opts = ExportOptions(model=model)
    back = import_bytes(export_bytes(table, "qdq", opts), "qdq")
    for n, e in back.tensors.items():
        assert e.scale == pytest.approx(table.tensors[n].scale, rel=1e-7), n
    back = import_bytes(export_bytes(table, "ncnn", opts), "ncnn", opts)
    for n, e in back.tensors.items():
        assert e.threshold == pytest.approx(table.tensors[n].threshold, rel=1e-5), n


def test_statistics_and_review_round_trip(valid: bf.Valid, tmp_path: Path) -> None:
    p = tmp_path / "again.stats"  # written exactly here, whatever the suffix
    save_stats(valid.stats_obj, p)
    back = load_stats(p)
    for n, t in valid.stats_obj.tensors.items():
        b = back.tensors[n]
        assert (b.count, b.min, b.max, b.zero_count) == (t.count, t.min, t.max, t.zero_count)
        assert np.array_equal(b.abs_hist.counts, t.abs_hist.counts) and b.abs_hist.width == t.abs_hist.width
        assert t.fine_hist is not None and b.fine_hist is not None and np.array_equal(b.fine_hist.counts, t.fine_hist.counts)
    review = Review(default_method="mse").with_choice("relu_out", override=2.5, note="n", float_kept=True)
    stats, r = load_review(review_bytes(valid.stats_obj, review))
    assert r == review and set(stats.tensors) == set(valid.stats_obj.tensors)


@pytest.mark.parametrize(
    "entry",
    [
        TensorEntry("kl", -1, 1, 1, 0.0, 0),
        TensorEntry("kl", -1, 1, 1, -0.1, 0),
        TensorEntry("kl", -1, 1, 1, math.nan, 0),
        TensorEntry("kl", -1, 1, 1, 1e35, 0),
        TensorEntry("kl", 2, 1, 1, 0.1, 0),
        TensorEntry("kl", -1, math.inf, 1, 0.1, 0),
    ],
    ids=["scale0", "negative", "nan", "huge", "min>max", "inf"],
)
@pytest.mark.parametrize("fmt", ["json", "csv", "trt", "ort-json", "ort-cache", "ort-flatbuffers"])
def test_writers_refuse_what_their_readers_would(entry: TensorEntry, fmt: str) -> None:
    with pytest.raises(QuantvizError, match="relu_out"):
        export_bytes(_table({"relu_out": entry}), fmt)


def test_bad_review_is_refused_on_save(valid: bf.Valid) -> None:
    with pytest.raises(QuantvizError, match="positive number|finite"):
        review_bytes(valid.stats_obj, Review(choices={"relu_out": __import__("quantviz.review").review.Choice(override=math.nan)}))


def test_hostile_bin_counts_do_not_grow_the_edge_cache() -> None:
    from quantviz.histogram import EDGES_CACHE_BYTES, edges_cache_bytes, edges_for

    for e in range(-100, 100):
        edges_for(e, 1 << 16, False)
    assert edges_cache_bytes() <= EDGES_CACHE_BYTES


def test_npz_stream_source_is_read_within_limits(valid: bf.Valid) -> None:
    """An upload is a file-like object in the app: it is read the same way as bytes."""
    src = open_source(valid.data.read_bytes(), [InputSpec("x", ("N", 3, 8, 8), "float32")], name="d.npz")
    assert src.num_samples == 6
    stats = load_stats(io.BytesIO(valid.files["stats"]))
    assert set(stats.tensors) == set(valid.stats_obj.tensors)
