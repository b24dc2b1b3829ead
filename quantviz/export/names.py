"""File names of everything the app offers for download: one per format and artefact, named after the
model, never two alike (TensorRT's and onnxruntime's caches are both `calibration.cache` by default).

    download_name("yolov8n.onnx", "trt")        -> "yolov8n.trt.calibration.cache"
    download_name("yolov8n.onnx", "ort-cache")  -> "yolov8n.ort-cache.calibration.cache"
    download_name("yolov8n.onnx", "qdq")        -> "yolov8n_qdq.onnx"
    artefact_name("yolov8n.onnx", REVIEW)       -> "yolov8n.review.quantviz.npz"

A format's default_name (quantviz.export.format) stays what the CLI writes into a folder; the model's
stem goes in front here, plus the format's name where two formats share a default name.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import PurePath

from quantviz.export.format import TableFormat

REVIEW = "review.quantviz.npz"
STATS = "stats.quantviz.npz"
LAYERS_CSV = "LAYERS.csv"
REPORT_HTML = "report.html"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_STEM_MAX = 80


def model_stem(model_name: str) -> str:
    """The model's file name without folder and .onnx, safe in a file name ("model" when nothing is left)."""
    stem = PurePath(model_name.replace("\\", "/")).name
    if stem.lower().endswith(".onnx"):
        stem = stem[: -len(".onnx")]
    stem = _UNSAFE.sub("_", stem).strip("._-")[:_STEM_MAX]
    return stem or "model"


def download_name(model_name: str, fmt: TableFormat, formats: dict[str, TableFormat] | None = None) -> str:
    """The download name of a table in one format: "<stem>.<default name>", with the format's name
    between when another format shares the default name; "model..." default names take the stem."""
    from quantviz.export.registry import FORMATS  # the registry imports every format module

    everyone = formats if formats is not None else FORMATS
    stem = model_stem(model_name)
    if fmt.default_name.startswith("model"):
        return stem + fmt.default_name[len("model") :]
    shared = Counter(f.default_name for f in everyone.values())[fmt.default_name] > 1
    return f"{stem}.{fmt.name}.{fmt.default_name}" if shared else f"{stem}.{fmt.default_name}"


def artefact_name(model_name: str, artefact: str) -> str:
    """The download name of a non-table artefact (REVIEW, STATS, LAYERS_CSV, REPORT_HTML) of a model."""
    return f"{model_stem(model_name)}.{artefact}"
