"""Time of the mixed-precision search beside one full analysis (issue 13, item 7).

    .venv/bin/python bench/bench_mixed.py [--models digits_resnet ppocr-v4-det] [--det-model PATH] [--det-size 160] [--det-samples 8]

Per model: the float model run once over the samples in a plain onnxruntime session (the reference),
one full analysis (quantviz.sensitivity.analyze: the QDQ model and every layer's isolated copy), then
the search (quantviz.mixed.run_search) split into its parts: setting up (one quantize_static call, the
float outputs computed and cached), the analysis that orders the layers, and the measured steps (each
one run of the edited QDQ model over the cached inputs, nothing re-quantized). A configuration met
twice is not run again (reused steps cost nothing and are counted apart).

digits_resnet: KL table, target one point of top-1 on the labelled evaluation set (540 samples).
PP-OCRv4 det (a real model, 331 calibratable tensors; fetched with ``pip download --no-deps
rapidocr-onnxruntime -d /work/bench_models/rapidocr-onnxruntime`` and unzipped into ``unz``; another
location through ``--det-model``): synthetic
images made as bench/sweep_models.py makes them, KL table, target end-to-end cosine 0.995.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DET_DEFAULT = Path("/work/bench_models/rapidocr-onnxruntime/unz/rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx")


def _npz(arrays: dict[str, Any]) -> bytes:
    import io

    buf = io.BytesIO()
    # allow_pickle named (numpy's default) so that mypy does not match **arrays against that bool parameter
    np.savez(buf, allow_pickle=True, **arrays)
    return buf.getvalue()


def bench(
    name: str,
    model_src: str | Path,
    calib: str | Path | bytes,
    evaluation: str | Path | bytes,
    target: str,
    labels_from: Path | None,
) -> dict[str, object]:
    import onnxruntime as ort

    from quantviz.collect import collect
    from quantviz.config import CollectConfig
    from quantviz.data import default_labels, open_source
    from quantviz.fallback import layer_macs
    from quantviz.mixed import ORDER_SAMPLES, Evaluator, parse_target, search, units_from
    from quantviz.model import load_model
    from quantviz.sensitivity import analyze
    from quantviz.table import calibrate_model

    model = load_model(model_src)
    cal = open_source(calib, model.inputs, name="calib.npz")
    ev = open_source(evaluation, model.inputs, name="eval.npz")
    labels = default_labels(labels_from) if labels_from is not None else None
    stats = collect(model, cal, CollectConfig())
    table = calibrate_model(model, stats, "kl")
    batch = min(ev.num_samples, 64)

    # the reference: the float model over the samples in a plain onnxruntime session
    sess = ort.InferenceSession(model.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    t = time.perf_counter()
    for b in ev.batches(batch):
        sess.run(None, {i.name: b[i.name] for i in sess.get_inputs()})
    t_float = time.perf_counter() - t

    t = time.perf_counter()
    report = analyze(model, table, ev, batch_size=batch)
    t_analysis = time.perf_counter() - t

    tgt = parse_target(target)
    t = time.perf_counter()
    evaluator = Evaluator(model, table, ev, tgt, labels=labels, batch_size=batch)
    t_setup = time.perf_counter() - t
    t = time.perf_counter()
    order_report = analyze(model, table, ev, samples=min(ORDER_SAMPLES, ev.num_samples), batch_size=batch, parts=False)
    t_order = time.perf_counter() - t
    units = units_from(order_report, table, layer_macs(evaluator.qdq.prepared.proto))
    t = time.perf_counter()
    result = search(evaluator, units)
    t_search = time.perf_counter() - t
    measured = [s for s in result.steps if not s.reused]
    return {
        "model": name,
        "layers": len(report.layers),
        "units": len(units),
        "samples": ev.num_samples,
        "float run s": t_float,
        "full analysis s": t_analysis,
        "setup s": t_setup,
        "order s": t_order,
        "steps": f"{len(measured)} (+{len(result.steps) - len(measured)} reused)",
        "step mean s": float(np.mean([s.seconds for s in measured])) if measured else 0.0,
        "search total s": t_setup + t_order + t_search,
        "target": f"{tgt.text}: {result.int8_value:.4g} -> {result.final_value:.4g} ({'met' if result.reached else 'missed'})",
        "out of int8": f"{len(result.fallbacks)} layers, {100 * result.final_macs_share:.1f}% MACs",
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=["digits_resnet", "ppocr-v4-det"])
    ap.add_argument("--det-model", type=Path, default=DET_DEFAULT, help="PP-OCRv4 det ONNX file (default: %(default)s)")
    ap.add_argument("--det-size", type=int, default=160)
    ap.add_argument("--det-samples", type=int, default=8)
    args = ap.parse_args()
    rows = []
    samples = REPO / "sample_models"
    if "digits_resnet" in args.models:
        rows.append(
            bench(
                "digits_resnet", samples / "digits_resnet.onnx", samples / "digits32_calib.npz", samples / "digits32_eval.npz",
                "top1-drop=1", samples / "digits32_eval.npz",
            )
        )  # fmt: skip
    if "ppocr-v4-det" in args.models:
        det = args.det_model
        if not det.is_file():
            print(f"{det} is missing: see this script's docstring to fetch it.", file=sys.stderr)
        else:
            from sweep_models import IMAGENET, _nchw, _pil_images

            s = args.det_size
            calib = _npz({"x": _nchw(_pil_images(16, s, s, 0), **IMAGENET)})
            evaluation = _npz({"x": _nchw(_pil_images(args.det_samples, s, s, 1), **IMAGENET)})
            rows.append(bench(f"PP-OCRv4 det {s}x{s}", det, calib, evaluation, "cosine=0.995", None))
    cols = list(rows[0]) if rows else []
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")


if __name__ == "__main__":
    main()
