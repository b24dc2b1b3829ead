"""Download names (quantviz.export.names) and how an imported table lines up with the model's
(quantviz.export.diff.match_tables)."""

from __future__ import annotations

from quantviz.export.diff import match_tables
from quantviz.export.names import REVIEW, artefact_name, download_name, model_stem
from quantviz.export.registry import FORMATS
from quantviz.table import CalibrationTable, TensorEntry


def test_every_format_gets_a_distinct_model_named_download() -> None:
    names = {f: download_name("nets/yolov8n.onnx", fmt) for f, fmt in FORMATS.items()}
    assert len(set(names.values())) == len(names)
    assert all(n.startswith("yolov8n") for n in names.values())
    assert names["trt"] == "yolov8n.trt.calibration.cache"
    assert names["ort-cache"] == "yolov8n.ort-cache.calibration.cache"
    assert names["qdq"] == "yolov8n_qdq.onnx"
    assert names["json"] == "yolov8n.calibration_table.json"
    # each keeps its format's extension, so detection by name still works on the download
    for f, n in names.items():
        assert n.endswith(FORMATS[f].default_name.rsplit(".", 1)[-1]), f


def test_model_stem_is_safe_in_a_file_name() -> None:
    assert model_stem("a b/c:d?.onnx") == "c_d"
    assert model_stem("..onnx") == "model"
    assert model_stem(r"C:\models\net.ONNX") == "net"
    assert artefact_name("net.onnx", REVIEW) == "net.review.quantviz.npz"


def _table(names: list[str], model: str = "m.onnx", sha: str = "") -> CalibrationTable:
    entries = {n: TensorEntry(method="minmax", threshold=1.0, min=-1.0, max=1.0, scale=1 / 127, zero_point=0) for n in names}
    return CalibrationTable(model, sha, {}, entries)


def test_match_counts_the_files_tensors_the_model_has_and_lists_the_rest() -> None:
    mine = _table([f"t{i}" for i in range(10)], sha="a" * 64)
    other = _table(["t0", "t1", "x", "y"], sha="a" * 64)
    m = match_tables(mine, other)
    assert m.matched == ("t0", "t1") and m.unknown == ("x", "y") and len(m.uncovered) == 8
    assert m.share == 0.5 and m.few and m.other_model is None
    assert len(m.warnings()) == 1 and "Only 2 of the file's 4 tensors (50%)" in m.warnings()[0]
    # 9 of 10 matched (90%) is not few
    assert not match_tables(mine, _table([f"t{i}" for i in range(9)] + ["z"], sha="a" * 64)).few


def test_a_table_of_another_model_is_named() -> None:
    mine = _table(["t0"], sha="a" * 64)
    m = match_tables(mine, _table(["t0"], model="other.onnx", sha="b" * 64))
    assert m.other_model == "other.onnx, model bbbbbbbbbbbb" and not m.few
    # without hashes the names decide; an unnamed table (a TensorRT cache) is not judged by name
    assert match_tables(_table(["t0"]), _table(["t0"], model="n.onnx")).other_model == "n.onnx"
    assert match_tables(_table(["t0"]), _table(["t0"], model="")).other_model is None
