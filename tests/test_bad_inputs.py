"""The bad-input corpus (issue 10): every case must end with exit status 2, one sentence naming the
problem on stderr, and no traceback, whichever of the six commands reads it.

Classes: tampered statistics (ranges that disagree with histograms, NaN/non-power-of-two widths,
negative counts, bins 0, "tensors" not a list, duplicate names, versions not numeric), damaged .npz
(zip bombs, huge declared arrays, pickles, flipped bytes, truncation), JSON beyond limits (5000-digit
numbers, deep nesting), tables whose values no engine can use (scale 0, NaN, negative, huge, min > max)
in every format, calibration data that cannot feed the model, output paths that cannot be written, and
options out of range. Bad reviews are loaded through quantviz.review.load_review (what the app's "Open a
saved review" calls). Where a class of bad input is found later, its case is added here.

The commands run in this process (quantviz.cli.main, as `python -m quantviz` does): an exception other
than QuantvizError would escape main() and fail the case, which is the "no traceback" check; a handful
of cases also run as real subprocesses.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from quantviz.cli import main
from quantviz.errors import QuantvizError
from quantviz.review import load_review
from tests import bad_files as bf
from tests.conftest import ROOT

Doc = dict[str, Any]  # a JSON document (a header, a review, a table)
Arrays = dict[str, np.ndarray]  # the members of an .npz
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> bf.Valid:
    return bf.build(tmp_path_factory.mktemp("valid"))


@dataclass(frozen=True)
class Bad:
    """One bad input: the file's bytes (from the valid files), its name, the command line that reads
    it ({bad}, {model}, {data}, {stats}, {table}, {out}, {dir} are filled in) and the words the message
    must hold (a regular expression, case-insensitive)."""

    id: str
    make: Callable[[bf.Valid], bytes] | None
    name: str
    argv: str
    expect: str


def _set(path: str, value: object) -> Callable[[Doc], None]:
    keys = path.split(".")

    def change(d: Doc) -> None:
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value

    return change


def _scalars(col: int, value: float, row: int = 0) -> Callable[[Arrays], None]:
    def change(a: Arrays) -> None:
        a["scalars"] = a["scalars"].copy()
        a["scalars"][row, col] = value

    return change


def _arr(key: str, fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[Arrays], None]:
    def change(a: Arrays) -> None:
        a[key] = fn(a[key].copy())

    return change


def _drop(key: str) -> Callable[[Arrays], object]:
    return lambda a: a.pop(key)


def _bump(a: np.ndarray) -> np.ndarray:
    a[0, -1] += 1
    return a


# --- statistics files (read by `calibrate --stats`) -------------------------------------------------

CAL = "calibrate --stats {bad} --method mse -o {out}.json"
COUNT, NAN, POSINF, NEGINF, ZERO, MIN, MAX, EMA_MIN, EMA_MAX, BATCHES = range(10)
STATS_HEADER = [
    ("tensors_text", _set("tensors", "abc"), "list of tensor names"),
    ("tensors_missing", lambda h: h.pop("tensors"), "list of tensor names"),
    ("tensors_numbers", lambda h: h.update(tensors=[1, 2, 3, 4, 5]), "tensor name"),
    ("tensors_duplicate", lambda h: h.update(tensors=[h["tensors"][0]] * len(h["tensors"])), "twice"),
    ("tensors_fewer_than_rows", lambda h: h.update(tensors=h["tensors"][:2]), "shape"),
    ("tensors_more_than_rows", lambda h: h.update(tensors=[*h["tensors"], "extra"]), "shape"),
    ("version_text", _set("version", "2"), "version"),
    ("version_float", _set("version", 2.5), "version"),
    ("version_bool", _set("version", True), "version"),
    ("version_future", _set("version", 99), "upgrade"),
    ("version_negative", _set("version", -1), "version"),
    ("format_other", _set("format", "other"), "not a quantviz statistics file"),
    ("format_missing", lambda h: h.pop("format"), "not a quantviz statistics file"),
    ("bins_odd", _set("config.bins", 63), "even"),
    ("bins_zero", _set("config.bins", 0), "bins"),
    ("bins_huge", _set("config.bins", 1 << 20), "bins"),
    ("bins_text", _set("config.bins", "64"), "whole number"),
    ("bins_mismatch", _set("config.bins", 128), "bins"),
    ("config_unknown_field", _set("config.kl_magic", 3), "unknown field"),
    ("config_not_object", _set("config", [64]), "object"),
    ("ema_constant_5", _set("config.ema_constant", 5.0), "ema_constant"),
    ("batch_size_0", _set("config.batch_size", 0), "batch_size"),
    ("fine_bins_huge", _set("config.fine_bins", 1 << 30), "fine_bins"),
    ("samples_negative", _set("samples", -1), "samples"),
    ("samples_text", _set("samples", "12"), "samples"),
    ("model_missing", lambda h: h.pop("model"), "model"),
    ("model_name_number", _set("model.name", 3), "model.name"),
    ("data_synthetic_text", _set("data.synthetic", "yes"), "true or false"),
    ("data_id_missing", lambda h: h["data"].pop("id"), "data.id"),
    ("infos_not_object", _set("infos", [1]), "object"),
    ("infos_entry_number", lambda h: h["infos"].update(x=3), "object"),
    ("infos_shape_text", lambda h: h["infos"][next(iter(h["infos"]))].update(shape="abc"), "shape"),
    ("infos_unknown_field", lambda h: h["infos"][next(iter(h["infos"]))].update(evil=1), "unknown field"),
]
STATS_ARRAYS = [
    ("minmax_disagree_with_histogram", _scalars(MAX, 1e6), "disagrees"),
    ("min_beyond_histogram", _scalars(MIN, -1e6), "disagrees"),
    ("min_greater_than_max", _scalars(MIN, 1e3), "greater than max|disagrees"),
    ("min_nan", _scalars(MIN, float("nan")), "not finite"),
    ("max_inf", _scalars(MAX, float("inf")), "not finite"),
    ("count_negative", _scalars(COUNT, -5), "count"),
    ("count_fraction", _scalars(COUNT, 2.5), "count"),
    ("count_nan", _scalars(COUNT, float("nan")), "count"),
    ("count_huge", _scalars(COUNT, 1e300), "count"),
    ("count_off_by_one", lambda a: _scalars(COUNT, a["scalars"][0, COUNT] + 1)(a), "holds .* values"),
    ("nan_count_negative", _scalars(NAN, -1), "count"),
    ("zero_count_beyond_count", lambda a: _scalars(ZERO, a["scalars"][0, COUNT] + 1)(a), "zeros"),
    ("batches_fraction", _scalars(BATCHES, 0.5), "count"),
    ("ema_min_inf", _scalars(EMA_MIN, float("-inf")), "ema_min"),
    ("abs_width_nan", _arr("abs_width", lambda w: w * np.nan), "power of two"),
    ("abs_width_not_power_of_two", _arr("abs_width", lambda w: w * 0.3), "power of two"),
    ("abs_width_negative", _arr("abs_width", lambda w: -w), "power of two"),
    ("abs_width_zero", _arr("abs_width", lambda w: w * 0), "power of two"),
    ("signed_width_inf", _arr("signed_width", lambda w: w * np.inf), "power of two"),
    ("fine_width_3", _arr("fine_width", lambda w: w * 0 + 3), "power of two"),
    ("width_tiny_exponent", _arr("abs_width", lambda w: w * 0 + 2.0**-1070), "power of two|disagrees"),
    ("width_rank_2", _arr("abs_width", lambda w: w[:, None]), "shape"),
    ("abs_counts_negative", _arr("abs_counts", lambda c: c - c.max() - 1), "negative"),
    ("abs_counts_float", _arr("abs_counts", lambda c: c.astype(np.float64)), "integers"),
    ("abs_counts_rank_1", _arr("abs_counts", lambda c: c.reshape(-1)), "shape"),
    ("abs_counts_rank_3", _arr("abs_counts", lambda c: c[:, :, None]), "shape"),
    ("abs_counts_missing_row", _arr("abs_counts", lambda c: c[1:]), "shape"),
    ("abs_bins_zero", _arr("abs_counts", lambda c: c[:, :0]), "bins"),
    ("abs_bins_odd", _arr("abs_counts", lambda c: c[:, :-1]), "bins"),
    ("abs_total_off", _arr("abs_counts", _bump), "holds .* values"),
    ("signed_total_off", _arr("signed_counts", _bump), "holds .* values"),
    ("fine_total_off", _arr("fine_counts", _bump), "holds .* values"),
    ("fine_bins_not_multiple", _arr("fine_counts", lambda c: c[:, :96]), "power of two"),
    ("fine_counts_without_width", _drop("fine_width"), "without the other"),
    ("scalars_missing", _drop("scalars"), "scalars"),
    ("scalars_columns", _arr("scalars", lambda s: s[:, :5]), "columns"),
    ("scalars_text", _arr("scalars", lambda s: s.astype(str)), "numbers"),
    ("signed_counts_missing", _drop("signed_counts"), "signed_counts"),
    ("header_missing", _drop("header"), "no quantviz header"),
    ("header_number", lambda a: a.update(header=np.array(3)), "not a quantviz statistics file"),
    ("header_2d_text", lambda a: a.update(header=np.array([["a"]])), "not a quantviz statistics file"),
    ("pickled_member", lambda a: a.update(scalars=np.array([{"a": 1}], dtype=object)), "pickle"),
]


def _stats_header(change: Callable[[Doc], object]) -> Callable[[bf.Valid], bytes]:
    return lambda v: bf.with_header(v.files["stats"], change)


def _stats_arrays(change: Callable[[Arrays], object]) -> Callable[[bf.Valid], bytes]:
    return lambda v: bf.with_arrays(v.files["stats"], change)


def _stats_cases() -> list[Bad]:
    out = [
        Bad(f"stats-{n}", _stats_header(f), "s.npz", CAL, e) for n, f, e in STATS_HEADER
    ]
    out += [Bad(f"stats-{n}", _stats_arrays(f), "s.npz", CAL, e) for n, f, e in STATS_ARRAYS]
    out += [
        Bad("stats-header-not-json", lambda v: bf.with_header_text(v.files["stats"], "{not json"), "s.npz", CAL, "not valid JSON"),
        Bad("stats-header-5000-digits", lambda v: bf.with_header_text(v.files["stats"], '{"samples": ' + "9" * 5000 + "}"), "s.npz", CAL, "5000 characters"),
        Bad("stats-header-deep", lambda v: bf.with_header_text(v.files["stats"], "[" * 5000 + "]" * 5000), "s.npz", CAL, "levels deep"),
        Bad("stats-header-huge-float", lambda v: bf.with_header(v.files["stats"], _set("samples", 1e308 * 10)), "s.npz", CAL, "samples"),
        Bad("stats-declares-256TiB", lambda v: bf.huge_declared("scalars") , "s.npz", CAL, "refused.*limit|no quantviz header"),
        Bad("stats-declares-256TiB-header", lambda v: bf.huge_declared("header"), "s.npz", CAL, "refused"),
        Bad("stats-zip-bomb", lambda v: bf.zip_bomb("abs_counts", 0.25), "s.npz", CAL, "zip bomb"),
        Bad("stats-truncated", lambda v: v.files["stats"][: len(v.files["stats"]) // 2], "s.npz", CAL, "not a readable"),
        Bad("stats-flipped-byte", lambda v: bf.flip(v.files["stats"], 200), "s.npz", CAL, "damaged|not a readable|cannot"),
        # a byte in the middle of a histogram's compressed data (a byte of a local zip header, which
        # readers skip for the central directory's copy, would leave the file intact)
        Bad("stats-flipped-byte-late", lambda v: bf.flip(v.files["stats"], bf.member_data_middle(v.files["stats"], "fine_counts.npy")), "s.npz", CAL, "damaged|not a readable|cannot"),
        Bad("stats-empty", lambda v: b"", "s.npz", CAL, "not a readable"),
        Bad("stats-text", lambda v: b"hello", "s.npz", CAL, "not a readable"),
        Bad("stats-npy-not-npz", lambda v: bf.npy_header((3,)) + bytes(12), "s.npz", CAL, "not a readable"),
        Bad("stats-member-not-npy", lambda v: bf.zip_of({"header.npy": b"not numpy"}), "s.npz", CAL, "not a readable .npy"),
        Bad("stats-member-short", lambda v: bf.zip_of({"header.npy": bf.npy_header((10,)) + bytes(8)}), "s.npz", CAL, "fewer bytes"),
        Bad("stats-member-long", lambda v: bf.zip_of({"header.npy": bf.npy_header((1,)) + bytes(80)}), "s.npz", CAL, "more bytes"),
        Bad("stats-missing-file", None, "nothing.npz", CAL, "does not exist"),
        Bad("stats-is-a-folder", None, "", "calibrate --stats {dir} --method kl -o {out}.json", "not a readable|folder|directory"),
    ]
    return out


# --- reviews (read by load_review: the app's "Open a saved review") ---------------------------------

REVIEWS = [
    ("override_nan", _set("choices.relu_out.override", float("nan")), "override.*finite|positive number"),
    ("override_negative", _set("choices.relu_out.override", -1.0), "positive number"),
    ("override_zero", _set("choices.relu_out.override", 0), "positive number"),
    ("override_text", _set("choices.relu_out.override", "1.0"), "override must be a number"),
    ("override_bool", _set("choices.relu_out.override", True), "override must be a number"),
    ("override_huge", _set("choices.relu_out.override", 1e300), "float32"),
    ("override_infinite", _set("choices.relu_out.override", float("inf")), "override.*finite|positive number"),
    ("method_unknown", _set("choices.relu_out.method", "magic"), "does not know"),
    ("method_number", _set("choices.relu_out.method", 3), "text"),
    ("float_kept_text", _set("choices.relu_out.float_kept", "yes"), "true or false"),
    ("note_number", _set("choices.relu_out.note", 5), "text"),
    ("choice_unknown_field", _set("choices.relu_out.evil", 1), "unknown field"),
    ("choice_number", _set("choices.relu_out", 3), "object"),
    ("choices_list", _set("choices", [1]), "object"),
    ("weight_scales_nan", _set("weight_scales", {"w": [float("nan")]}), "weight scales"),
    ("weight_scales_negative", _set("weight_scales", {"w": [0.1, -1.0]}), "weight scales"),
    ("weight_scales_zero", _set("weight_scales", {"w": [0.0]}), "weight scales"),
    ("weight_scales_empty", _set("weight_scales", {"w": []}), "weight scales"),
    ("weight_scales_text", _set("weight_scales", {"w": "0.1"}), "weight scales"),
    ("weight_scales_list", _set("weight_scales", [0.1]), "object"),
    ("default_missing", lambda d: d.pop("default_method"), "default_method"),
    ("default_unknown", _set("default_method", "magic"), "knows"),
    ("default_number", _set("default_method", 5), "text"),
    ("percentile_200", _set("config.percentile", 200.0), "percentile"),
    ("percentile_text", _set("config.percentile", "99"), "percentile"),
    ("kl_threshold_other", _set("config.kl_threshold", "middle"), "edge"),
    ("kl_bins_1", _set("config.kl_bins", 1), "bins"),
    ("kl_start_beyond_bins", _set("config.kl_start_bin", 5000), "kl_start_bin"),
    ("mse_min_bin_0", _set("config.mse_min_bin", 0), "mse_min_bin"),
    ("mse_min_bin_huge", _set("config.mse_min_bin", 10**9), "mse_min_bin"),
    ("symmetric_text", _set("config.symmetric", "yes"), "true or false"),
    ("config_unknown_field", _set("config.evil", 1), "unknown field"),
    ("version_text", _set("version", "1"), "version"),
    ("version_future", _set("version", 99), "upgrade"),
    ("format_other", _set("format", "x"), "not a quantviz review"),
    ("unknown_field", _set("evil", 1), "unknown field"),
]


def _review_doc(v: bf.Valid) -> Doc:
    return bf.header_of(bf.npz_arrays(v.files["review"]), "review")


def _review_with(v: bf.Valid, change: Callable[[Doc], object]) -> bytes:
    doc = _review_doc(v)
    change(doc)
    return bf.with_header_text(v.files["review"], json.dumps(doc), key="review")


@pytest.mark.parametrize(("change", "expect"), [(c, e) for _, c, e in REVIEWS], ids=[n for n, _, _ in REVIEWS])
def test_bad_review_is_refused_with_a_sentence(valid: bf.Valid, change: Callable[[Doc], object], expect: str) -> None:
    with pytest.raises(QuantvizError, match=re.compile(expect, re.IGNORECASE)):
        load_review(_review_with(valid, change))


@pytest.mark.parametrize(
    ("text", "expect"),
    [("{not json", "not valid JSON"), ("[" * 3000 + "]" * 3000, "levels deep"), ('{"version": ' + "1" * 5000 + "}", "5000 characters")],
    ids=["not_json", "deep", "digits"],
)
def test_review_json_beyond_limits_is_refused(valid: bf.Valid, text: str, expect: str) -> None:
    with pytest.raises(QuantvizError, match=expect):
        load_review(bf.with_header_text(valid.files["review"], text, key="review"))


def test_review_with_inconsistent_statistics_is_refused(valid: bf.Valid) -> None:
    raw = bf.with_arrays(valid.files["review"], _scalars(MAX, 1e6))
    with pytest.raises(QuantvizError, match="disagrees"):
        load_review(raw)


def test_the_valid_review_loads(valid: bf.Valid) -> None:
    stats, review = load_review(valid.files["review"])
    assert review.choice("relu_out").override == 1.5 and set(stats.tensors) == set(valid.stats_obj.tensors)


# --- tables in every format (export / import / diff / analyze) ---------------------------------------

EXPORT = "export {bad} --format trt -o {out}.cache"
IMPORT = "import {bad} -o {out}.json"
DIFF = "diff {bad} {table}"
ANALYZE = "analyze {model} --data {data} --table {bad} -o {out}.csv"


def _json_table(change: Callable[[Doc], object], plain: bool = True) -> Callable[[bf.Valid], bytes]:
    def make(v: bf.Valid) -> bytes:
        doc = json.loads(v.files["json-plain" if plain else "json"])
        change(doc)
        return json.dumps(doc).encode()

    return make


def _entry(key: str, value: object) -> Callable[[Doc], None]:
    def change(d: Doc) -> None:
        d["tensors"]["relu_out"][key] = value

    return change


def _entries(**values: object) -> Callable[[Doc], None]:
    def change(d: Doc) -> None:
        d["tensors"]["relu_out"].update(values)

    return change


def _text(s: str) -> Callable[[bf.Valid], bytes]:
    return lambda v: s.encode()


def _qdq(change: Callable[[onnx.ModelProto], None]) -> Callable[[bf.Valid], bytes]:
    def make(v: bf.Valid) -> bytes:
        m = onnx.load_from_string(v.files["qdq"])
        change(m)
        return bytes(m.SerializeToString())

    return make


def _qdq_scale(value: float) -> Callable[[onnx.ModelProto], None]:
    def change(m: onnx.ModelProto) -> None:
        q = next(n for n in m.graph.node if n.op_type == "QuantizeLinear")
        for init in m.graph.initializer:
            if init.name == q.input[1]:
                init.CopyFrom(numpy_helper.from_array(np.array(value, dtype=np.float32), init.name))

    return change


def _qdq_scale_not_constant(m: onnx.ModelProto) -> None:
    q = next(n for n in m.graph.node if n.op_type == "QuantizeLinear")
    q.input[1] = "x"


TABLES = [
    # quantviz JSON
    ("json-scale-zero", _json_table(_entry("scale", 0)), "t.json", EXPORT, "scale"),
    ("json-scale-negative", _json_table(_entry("scale", -0.1)), "t.json", IMPORT, "scale"),
    ("json-scale-nan", _json_table(_entry("scale", "nan")), "t.json", DIFF, "scale"),
    ("json-scale-inf-text", _json_table(_entry("scale", "inf")), "t.json", ANALYZE, "scale"),
    ("json-scale-1e400", _text('{"format": "quantviz-calibration", "version": 1, "tensors": {"a": {"method": "kl", "min": -1, "max": 1, "threshold": 1, "scale": 1e400}}}'), "t.json", IMPORT, "scale"),
    ("json-scale-huge", _json_table(_entry("scale", 1e35)), "t.json", EXPORT, "scale"),
    ("json-scale-subnormal", _json_table(_entry("scale", 1e-40)), "t.json", EXPORT, "scale"),
    ("json-scale-text", _json_table(_entry("scale", "abc")), "t.json", IMPORT, "number"),
    ("json-min-greater-than-max", _json_table(_entries(min=2.0, max=1.0)), "t.json", EXPORT, "greater than max"),
    ("json-threshold-negative", _json_table(_entry("threshold", -1.0)), "t.json", DIFF, "negative threshold"),
    ("json-threshold-nan", _json_table(_entry("threshold", "nan")), "t.json", EXPORT, "threshold"),
    ("json-min-inf", _json_table(_entry("min", "-inf")), "t.json", EXPORT, "min"),
    ("json-zero-point-fraction", _json_table(_entry("zero_point", 1.5)), "t.json", IMPORT, "integer"),
    ("json-zero-point-huge", _json_table(_entry("zero_point", 10**6)), "t.json", IMPORT, "zero point"),
    ("json-method-number", _json_table(_entry("method", 3)), "t.json", IMPORT, "method"),
    ("json-shared-with-text", _json_table(_entry("shared_with", "a")), "t.json", IMPORT, "shared_with"),
    ("json-extra-number", _json_table(_entry("extra", 3)), "t.json", IMPORT, "extra"),
    ("json-cosine-text", _json_table(_entry("cosine", "x")), "t.json", IMPORT, "cosine"),
    ("json-entry-missing-scale", _json_table(lambda d: d["tensors"]["relu_out"].pop("scale")), "t.json", IMPORT, "scale"),
    ("json-entry-number", _json_table(lambda d: d["tensors"].update(relu_out=3)), "t.json", IMPORT, "object"),
    ("json-tensors-list", _json_table(_set("tensors", [1])), "t.json", IMPORT, "tensors"),
    ("json-version-text", _json_table(_set("version", "1")), "t.json", IMPORT, "version"),
    ("json-version-future", _json_table(_set("version", 99)), "t.json", IMPORT, "upgrade"),
    ("json-settings-list", _json_table(_set("settings", [1])), "t.json", IMPORT, "settings"),
    ("json-model-list", _json_table(_set("model", [1])), "t.json", IMPORT, "model"),
    ("json-weight-scale-nan", _json_table(lambda d: d["weights"][next(iter(d["weights"]))].update(scales=["nan"]), plain=False), "t.json", EXPORT, "weight"),
    ("json-weight-scale-negative", _json_table(lambda d: d["weights"][next(iter(d["weights"]))].update(scales=[-1.0]), plain=False), "t.json", EXPORT, "weight"),
    ("json-weight-scales-text", _json_table(lambda d: d["weights"][next(iter(d["weights"]))].update(scales="abc"), plain=False), "t.json", EXPORT, "weight"),
    ("json-5000-digits", _text('{"format": "quantviz-calibration", "version": ' + "1" * 5000 + ', "tensors": {}}'), "t.json", IMPORT, "5000 characters"),
    ("json-5000-digit-float", _text('{"format": "quantviz-calibration", "version": 1, "x": 1.' + "1" * 5000 + "}"), "t.json", EXPORT, "5002 characters"),
    ("json-deep", _text("[" * 100000 + "]" * 100000), "t.json", IMPORT, "levels deep"),
    ("json-deep-object", _text('{"a": ' * 5000 + "1" + "}" * 5000), "t.json", DIFF, "levels deep"),
    ("json-broken", _text('{"format": "quantviz-calibration", '), "t.json", IMPORT, "not valid JSON"),
    ("json-empty", _text(""), "t.json", IMPORT, "empty"),
    ("json-bom-only", lambda v: b"\xef\xbb\xbf", "t.json", IMPORT, "empty"),
    ("json-not-utf8", lambda v: b'{"a": "\xff\xfe"}', "t.json", IMPORT, "binary|UTF-8|format"),
    ("json-lone-surrogate", _text('{"format": "quantviz-calibration", "version": 1, "tensors": {"\\ud800": {"method": "kl", "min": -1, "max": 1, "threshold": 1, "scale": "x"}}}'), "t.json", IMPORT, "number"),
    # TensorRT cache
    ("trt-negative-scale", lambda v: bf.trt_line("bf800000"), "c.cache", IMPORT, "scale"),
    # a scale of 0 is not bad input: it reads as an all-zero tensor kept in float (tests/test_zero_tensors.py)
    ("trt-inf-scale", lambda v: bf.trt_line("7f800000"), "c.cache", IMPORT, "scale"),
    ("trt-nan-scale", lambda v: bf.trt_line("7fc00000"), "c.cache", DIFF, "scale"),
    ("trt-huge-scale", lambda v: bf.trt_line(bf.f32_hex(3e38)), "c.cache", IMPORT, "scale"),
    ("trt-subnormal-scale", lambda v: bf.trt_line("1"), "c.cache", IMPORT, "scale"),
    ("trt-nine-digits", lambda v: bf.trt_line("3c0102040"), "c.cache", IMPORT, "hex"),
    ("trt-not-hex", lambda v: bf.trt_line("zz"), "c.cache", IMPORT, "hex"),
    ("trt-no-separator", _text("TRT-8601-EntropyCalibration2\nrelu_out 3c010204\n"), "c.cache", "import {bad} --format trt -o {out}.json", "tensor name"),
    ("trt-bad-header", _text("TRT-86a1-Entropy\nrelu_out: 3c010204\n"), "c.cache", IMPORT, "header"),
    ("trt-repeated", _text("TRT-8601-EntropyCalibration2\nrelu_out: 3c010204\nrelu_out: 3c010204\n"), "c.cache", IMPORT, "repeats"),
    ("trt-export-header", None, "", "export {table} --format trt --trt-header TensorRT -o {out}.cache", "TRT-<version digits>"),
    # onnxruntime calibration.json / .cache / .flatbuffers
    ("ort-json-lowest-above-highest", _text('{"relu_out": {"lowest": 2.0, "highest": 1.0}}'), "calibration.json", IMPORT, "range"),
    ("ort-json-nan", _text('{"relu_out": [NaN, 1.0]}'), "calibration.json", IMPORT, "range"),
    ("ort-json-infinity", _text('{"relu_out": [-Infinity, 1.0]}'), "calibration.json", DIFF, "range"),
    ("ort-json-per-channel", _text('{"relu_out": {"lowest": {"data": [1, 2]}, "highest": 1.0}}'), "calibration.json", IMPORT, "per-channel"),
    ("ort-json-text", _text('{"relu_out": ["a", 1.0]}'), "calibration.json", IMPORT, "number"),
    ("ort-json-missing-highest", _text('{"relu_out": {"lowest": 1.0}}'), "calibration.json", IMPORT, "highest"),
    ("ort-json-list-of-3", _text('{"relu_out": [1, 2, 3]}'), "calibration.json", IMPORT, "min, max"),
    ("ort-json-huge", _text('{"relu_out": [-1e35, 1e35]}'), "calibration.json", EXPORT, "scale|threshold"),
    ("ort-json-array", _text("[1, 2]"), "calibration.json", IMPORT, "object"),
    ("ort-json-tensorsdata-no-data", _text('{"CLS": "TensorsData"}'), "calibration.json", IMPORT, "data"),
    ("ort-cache-nan", _text("relu_out nan\n"), "calibration.cache", IMPORT, "finite"),
    ("ort-cache-inf", _text("relu_out inf\n"), "calibration.cache", IMPORT, "finite"),
    ("ort-cache-1e400", _text("relu_out 1e400\n"), "calibration.cache", IMPORT, "finite"),
    ("ort-cache-huge", _text("relu_out 1e35\n"), "calibration.cache", IMPORT, "scale"),
    ("ort-cache-text", _text("relu_out abc\n"), "calibration.cache", "import {bad} --format ort-cache -o {out}.json", "not a number"),
    ("ort-cache-repeated", _text("relu_out 1.0\nrelu_out 1.0\n"), "calibration.cache", IMPORT, "repeats"),
    ("flatbuffers-garbage", lambda v: b"\x00\x01" * 50, "calibration.flatbuffers", IMPORT, "flatbuffers"),
    ("flatbuffers-truncated", lambda v: v.files["ort-flatbuffers"][:20], "calibration.flatbuffers", IMPORT, "flatbuffers"),
    ("flatbuffers-tiny", lambda v: b"\x00\x00", "calibration.flatbuffers", IMPORT, "flatbuffers|too short"),
    # ncnn
    ("ncnn-zero", _text("conv 0 \n"), "m.table", IMPORT, "positive"),
    ("ncnn-negative", _text("conv -1.5 \n"), "m.table", IMPORT, "positive"),
    ("ncnn-nan", _text("conv nan \n"), "m.table", IMPORT, "positive"),
    ("ncnn-text", _text("conv abc \n"), "m.table", IMPORT, "not a number"),
    ("ncnn-repeated", _text("conv 1.0 \nconv 1.0 \n"), "m.table", IMPORT, "repeats"),
    ("ncnn-two-values", _text("conv 1.0 2.0 \n"), "m.table", IMPORT, "one"),
    ("ncnn-weight-negative", _text("conv_param_0 1.0 -1.0 \n"), "m.table", IMPORT, "positive"),
    ("ncnn-tiny-scale", _text("conv 1e-40 \n"), "m.table", IMPORT, "scale"),
    ("ncnn-no-value", _text("conv \nx 1.0 \n"), "m.table", IMPORT, "no scale"),
    # CSV
    ("csv-scale-negative", _text("name,method,min,max,threshold,scale\nrelu_out,kl,-1,1,1,-0.1\n"), "t.csv", IMPORT, "scale"),
    ("csv-scale-zero", _text("name,method,min,max,threshold,scale\nrelu_out,kl,-1,1,1,0\n"), "t.csv", IMPORT, "scale"),
    ("csv-scale-nan", _text("name,method,min,max,threshold,scale\nrelu_out,kl,-1,1,1,nan\n"), "t.csv", IMPORT, "scale"),
    ("csv-min-greater", _text("name,method,min,max,threshold,scale\nrelu_out,kl,2,1,1,0.1\n"), "t.csv", IMPORT, "greater than max"),
    ("csv-threshold-inf", _text("name,method,min,max,threshold,scale\nrelu_out,kl,-1,1,inf,0.1\n"), "t.csv", IMPORT, "threshold"),
    ("csv-zero-point-text", _text("name,method,min,max,threshold,scale,zero_point\nrelu_out,kl,-1,1,1,0.1,x\n"), "t.csv", IMPORT, "zero_point"),
    ("csv-float-maybe", _text("name,method,min,max,threshold,scale,float\nrelu_out,kl,-1,1,1,0.1,maybe\n"), "t.csv", IMPORT, "true or false"),
    ("csv-shared-with-text", _text("name,method,min,max,threshold,scale,shared_with\nrelu_out,kl,-1,1,1,0.1,a\n"), "t.csv", IMPORT, "shared_with"),
    ("csv-missing-column", _text("name,method,min,max,threshold\nrelu_out,kl,-1,1,1\n"), "t.csv", IMPORT, "scale"),
    ("csv-extra-fields", _text("name,method,min,max,threshold,scale\nrelu_out,kl,-1,1,1,0.1,9\n"), "t.csv", IMPORT, "fields"),
    ("csv-repeated", _text("name,method,min,max,threshold,scale\na,kl,-1,1,1,0.1\na,kl,-1,1,1,0.1\n"), "t.csv", IMPORT, "repeats"),
    ("csv-number-text", _text("name,method,min,max,threshold,scale\nrelu_out,kl,-1,one,1,0.1\n"), "t.csv", IMPORT, "not a number"),
    # QDQ models
    ("qdq-truncated", lambda v: v.files["qdq"][: len(v.files["qdq"]) // 3], "q.onnx", IMPORT, "ONNX|QDQ|QuantizeLinear"),
    ("qdq-garbage", lambda v: b"\x08\xff\xff\xff\xff\x0f" * 20, "q.onnx", IMPORT, "ONNX|QDQ|QuantizeLinear"),
    ("qdq-scale-zero", _qdq(_qdq_scale(0.0)), "q.onnx", IMPORT, "scale"),
    ("qdq-scale-negative", _qdq(_qdq_scale(-0.5)), "q.onnx", IMPORT, "scale"),
    ("qdq-scale-nan", _qdq(_qdq_scale(float("nan"))), "q.onnx", IMPORT, "scale"),
    ("qdq-scale-not-constant", _qdq(_qdq_scale_not_constant), "q.onnx", IMPORT, "not a constant"),
    ("qdq-float-model", lambda v: v.model.read_bytes(), "q.onnx", IMPORT, "not a QDQ model"),
    # the format cannot be told
    ("unknown-format", _text("just words here\n"), "t.txt", IMPORT, "not a number"),
    ("unknown-format-one-word", _text("words\n"), "t.txt", IMPORT, "Cannot tell the format"),
    ("unknown-binary", lambda v: b"\x00\x01\x02\x03" * 10, "t.bin", IMPORT, "Cannot tell the format"),
    ("table-missing", None, "nothing.json", IMPORT, "does not exist"),
    ("table-is-a-folder", None, "", "import {dir} -o {out}.json", "not a file"),
]


def _table_cases() -> list[Bad]:
    return [Bad(f"table-{n}", m, name, argv, e) for n, m, name, argv, e in TABLES]


# --- calibration data (collect / analyze) -----------------------------------------------------------

COLLECT = "collect {model} --data {bad} -o {out}.npz"


def _data_npz(**arrays: np.ndarray) -> Callable[[bf.Valid], bytes]:
    return lambda v: bf.npz(arrays, compressed=False)


def _pickled_npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return buf.getvalue()


DATA = [
    ("zip-bomb", lambda v: bf.zip_bomb("x", 0.5), "d.npz", COLLECT, "zip bomb"),
    ("declares-256TiB", lambda v: bf.huge_declared("x"), "d.npz", COLLECT, "refused.*256|refused"),
    ("declares-256TiB-npy", lambda v: bf.npy_header((1 << 46,)), "d.npy", COLLECT, "refused"),
    ("declares-negative-dim", lambda v: bf.zip_of({"x.npy": bf.npy_header((4,)).replace(b"(4,)", b"(-4,)")}), "d.npz", COLLECT, "damaged|header"),
    ("pickled-npz", _data_npz(x=np.array([{"a": 1}], dtype=object)), "d.npz", COLLECT, "pickle"),
    ("pickled-npy", lambda v: _pickled_npy(), "d.npy", COLLECT, "pickle"),
    ("truncated-npz", lambda v: v.data.read_bytes()[:300], "d.npz", COLLECT, "not a readable|damaged"),
    ("flipped-byte-compressed", lambda v: bf.flip(bf.npz({"x": np.ones((6, 3, 8, 8), np.float32) * np.arange(8, dtype=np.float32)}), 150), "d.npz", COLLECT, "damaged|not a readable"),
    ("truncated-npy", lambda v: (bf.npy_header((6, 3, 8, 8)) + bytes(100)), "d.npy", COLLECT, "fewer bytes"),
    ("text-as-npz", _text("hello"), "d.npz", COLLECT, "not a readable"),
    ("text-as-npy", _text("hello"), "d.npy", COLLECT, "not a readable"),
    ("wrong-shape", _data_npz(x=np.zeros((4, 3, 9, 9), np.float32)), "d.npz", COLLECT, "expects shape"),
    ("wrong-rank", _data_npz(x=np.zeros((4, 3), np.float32)), "d.npz", COLLECT, "dimensions"),
    ("wrong-dtype", _data_npz(x=np.zeros((4, 3, 8, 8), np.int64)), "d.npz", COLLECT, "float32"),
    ("strings", _data_npz(x=np.array(["a", "b"])), "d.npz", COLLECT, "float32|dimensions"),
    ("zero-samples", _data_npz(x=np.zeros((0, 3, 8, 8), np.float32)), "d.npz", COLLECT, "no samples"),
    ("no-array-for-input", _data_npz(a=np.zeros((2, 3, 8, 8), np.float32), b=np.zeros((2, 3, 8, 8), np.float32)), "d.npz", COLLECT, "no array for model input"),
    ("empty-npz", _data_npz(), "d.npz", COLLECT, "no array for model input"),
    ("unknown-suffix", _text("1,2,3"), "d.csv", COLLECT, "not a calibration set"),
    ("zip-no-images", lambda v: bf.zip_of({"a.txt": b"x"}), "d.zip", COLLECT, "no images"),
    ("zip-broken", _text("PK\x03\x04 not a zip"), "d.zip", COLLECT, "not a readable .zip"),
    ("zip-image-not-image", lambda v: bf.zip_of({"a.png": b"not a png"}), "d.zip", COLLECT, "not a readable image"),
    ("missing", None, "nothing.npz", COLLECT, "does not exist"),
    ("synthetic-zero", None, "", "collect {model} --data synthetic:0 -o {out}.npz", "synthetic"),
    ("synthetic-negative", None, "", "collect {model} --data synthetic:-3 -o {out}.npz", "synthetic"),
    ("synthetic-text", None, "", "collect {model} --data synthetic:abc -o {out}.npz", "synthetic"),
    ("synthetic-huge-count", None, "", "collect {model} --data synthetic:99999999999 -o {out}.npz", "synthetic"),
    ("folder-without-images", None, "", "collect {model} --data {dir} -o {out}.npz", "no images"),
    ("synthetic-huge-dimensions", None, "", "collect {valid}/huge_input.onnx --data synthetic:4 -o {out}.npz", "limit"),
    ("analyze-bad-data", _data_npz(x=np.zeros((4, 3, 9, 9), np.float32)), "d.npz", "analyze {model} --data {bad} --table {table} -o {out}.csv", "expects shape"),
    ("labels-pickled", _data_npz(label=np.array([{"a": 1}], dtype=object)), "l.npz", "analyze {model} --data {data} --table {table} --labels {bad} -o {out}.csv", "pickle"),
    ("labels-missing-key", _data_npz(other=np.zeros(6)), "l.npz", "analyze {model} --data {data} --table {table} --labels {bad} -o {out}.csv", "no array"),
]


def _data_cases() -> list[Bad]:
    return [Bad(f"data-{n}", m, name, argv, e) for n, m, name, argv, e in DATA]


# --- output paths, for every command that writes ------------------------------------------------------

WRITERS = {
    "collect": "collect {model} --data {data} -o {o}",
    "calibrate": "calibrate --stats {stats} --method kl -o {o}",
    "analyze": "analyze {model} --data {data} --table {table} -o {o}",
    "export": "export {table} --format trt -o {o}",
    "import": "import {table} -o {o}",
    "diff": "diff {table} {table} -o {o}",
}
OUTPUTS = [
    ("proc", "/proc/quantviz-x/out.csv", "does not exist|cannot be written"),
    ("proc-root", "/proc/out.csv", "cannot be written"),
    ("missing-folder", "{dir}/no/such/folder/out.csv", "does not exist"),
    ("inside-a-file", "{table}/out.csv", "not a folder"),
    ("trailing-slash", "{dir}/newdir/", "folder|does not exist"),
    ("dev-null-folder", "/dev/null/out.csv", "not a folder"),
]


def _output_cases() -> list[Bad]:
    out = [
        Bad(f"output-{cmd}-{n}", None, "", argv.replace("{o}", o), e) for cmd, argv in WRITERS.items() for n, o, e in OUTPUTS
    ]
    out += [
        Bad(f"output-{cmd}-existing-folder", None, "", argv.replace("{o}", "{dir}"), "existing folder")
        for cmd, argv in WRITERS.items()
        if cmd != "export"  # export into a folder writes the format's usual file name there (CLI.md)
    ]
    return out


# --- options out of range -----------------------------------------------------------------------------

OPTIONS = [
    ("bins-zero", "collect {model} --data {data} --bins 0 -o {out}.npz", "bins"),
    ("bins-odd", "collect {model} --data {data} --bins 63 -o {out}.npz", "bins"),
    ("bins-huge", "collect {model} --data {data} --bins 1048576 -o {out}.npz", "bins"),
    ("samples-zero", "collect {model} --data {data} --samples 0 -o {out}.npz", "samples"),
    ("batch-size-zero", "collect {model} --data {data} --batch-size 0 -o {out}.npz", "batch size"),
    ("size-text", "collect {model} --data {dir} --size big -o {out}.npz", "HxW"),
    ("mean-text", "collect {model} --data {dir} --mean a,b -o {out}.npz", "mean"),
    ("percentile-200", "calibrate --stats {stats} --method percentile --percentile 200 -o {out}.json", "percentile"),
    ("mse-min-bin-zero", "calibrate --stats {stats} --method mse --mse-min-bin 0 -o {out}.json", "MSE"),
    ("method-unknown", "calibrate --stats {stats} --method magic -o {out}.json", "invalid choice"),
    ("best-without-data", "calibrate --stats {stats} --method best -o {out}.json", "needs MODEL"),
    ("eq-n-huge", "calibrate {model} --data {data} --method eq --eq-n 100000000 -o {out}.json", "candidates|limit"),
    ("eq-n-zero", "calibrate {model} --data {data} --method eq --eq-n 0 -o {out}.json", "candidates|n "),
    ("best-samples-zero", "calibrate {model} --data {data} --method best --best-samples 0 -o {out}.json", "best-samples"),
    ("best-methods-unknown", "calibrate {model} --data {data} --method best --best-methods foo -o {out}.json", "best-methods"),
    ("format-unknown", "export {table} --format magic -o {out}", "invalid choice"),
    ("reduce-range-trt", "export {table} --format trt --reduce-range -o {out}.cache", "reduce-range"),
    ("analyze-suffix", "analyze {model} --data {data} --table {table} -o {out}.txt", r"\.csv"),
    ("model-missing", "collect {dir}/nothing.onnx --data {data} -o {out}.npz", "does not exist|not found|no such"),
    ("model-is-text", "collect {table} --data {data} -o {out}.npz", "ONNX|model"),
]


def _option_cases() -> list[Bad]:
    return [Bad(f"option-{n}", None, "", argv, e) for n, argv, e in OPTIONS]


CASES = _stats_cases() + _table_cases() + _data_cases() + _output_cases() + _option_cases()


def test_corpus_is_large_enough() -> None:
    assert len(CASES) + len(REVIEWS) >= 150
    assert len({c.id for c in CASES}) == len(CASES)


def _argv(case: Bad, v: bf.Valid, work: Path) -> list[str]:
    bad = work / case.name if case.name else work / "unused"
    if case.make is not None:
        bad.write_bytes(case.make(v))
    fields = {"bad": bad, "model": v.model, "data": v.data, "stats": v.stats, "table": v.table, "out": work / "out", "dir": work, "valid": v.dir}
    return case.argv.format(**fields).split()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_with_one_sentence(case: Bad, valid: bf.Valid, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "w"
    work.mkdir()
    rc = main(_argv(case, valid, work))
    err = capsys.readouterr().err
    assert rc == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in err
    assert re.search(case.expect, last, re.IGNORECASE), last
    assert not (work / "out").exists() and not (work / "out.npz.npz").exists()


SUBPROCESS = ["stats-minmax_disagree_with_histogram", "data-zip-bomb", "table-json-deep", "output-collect-existing-folder"]


@pytest.mark.parametrize("case_id", SUBPROCESS)
def test_real_command_line_exits_2(case_id: str, valid: bf.Valid, tmp_path: Path) -> None:
    case = next(c for c in CASES if c.id == case_id)
    r = subprocess.run([PYTHON, "-m", "quantviz", *_argv(case, valid, tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and re.search(case.expect, r.stderr, re.IGNORECASE), r.stderr


def test_collect_writes_exactly_the_path_given(valid: bf.Valid, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "stats.bin"
    assert main(["collect", str(valid.model), "--data", str(valid.data), "--bins", "64", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert out.is_file() and not (tmp_path / "stats.bin.npz").exists()
    assert str(out) in err
    from quantviz.stats import load_stats

    assert set(load_stats(out).tensors) == set(valid.stats_obj.tensors)
