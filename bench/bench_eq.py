"""EQ (EasyQuant) search time on the sample models (issue 3, item 8).

    .venv/bin/python bench/bench_eq.py [--models digits_cnn digits_resnet] [--n 100] [--samples 50]
                                       [--rounds 1] [--mode accumulated|isolated] [--accuracy]
    .venv/bin/python bench/bench_eq.py --model REC.onnx [--lines 64]   # e.g. PP-OCRv4 rec, synthetic text lines

For each model: collect statistics once (not timed), then time quantviz.easyquant.calibrate_eq
(KL start, the per-layer weight and input scale search, the table). Prints one row per model: layers
searched, samples, candidates, rounds, seconds, evaluations (single-layer runs), milliseconds per
evaluation, and the mean over searched layers of the layer cosine before (KL + abs-max) and after EQ.
--accuracy adds the top-1 accuracy on the model's eval set of float, KL and EQ (QDQ models built by
quantviz.qdq, run in onnxruntime). The cost is about (2 n + 3) x rounds single-layer runs per layer
on the capped samples, so it grows with n, the samples and the layers' size.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxruntime as ort  # noqa: E402

from quantviz.collect import collect  # noqa: E402
from quantviz.config import CollectConfig  # noqa: E402
from quantviz.data import open_source  # noqa: E402
from quantviz.easyquant import EQ_MODES, EQConfig, calibrate_eq  # noqa: E402
from quantviz.model import load_model  # noqa: E402
from quantviz.samples import SAMPLES  # noqa: E402


def _accuracy(proto: object, eval_path: Path) -> float:
    data = np.load(eval_path)
    # Q/DQ run as the spec defines them: onnxruntime's fused int8 kernels saturate on x86 CPUs with
    # AVX2 and no VNNI (quantviz.qdq), which would measure the CPU instead of the scales
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]
    probs = sess.run(None, {"input": data["input"]})[0]
    return float((probs.argmax(axis=1) == data["label"]).mean())


def text_lines(count: int, height: int = 48, width: int = 320, seed: int = 0) -> np.ndarray:
    """Synthetic text-line images for an OCR recogniser, [count, 3, height, width], normalised as
    PaddleOCR does ((x / 255 - 0.5) / 0.5): a light, slightly noisy background and a row of dark
    glyph-like strokes (random bars and blocks of random widths and gaps), one line per image."""
    rng = np.random.default_rng(seed)
    out = np.empty((count, 3, height, width), np.float32)
    for k in range(count):
        img = np.full((height, width), rng.uniform(200, 250), np.float32) + rng.normal(0, 6, (height, width))
        x = int(rng.integers(4, 20))
        top, bottom = int(rng.integers(8, 14)), int(rng.integers(34, 42))
        while x < width - 12:
            w = int(rng.integers(6, 16))
            ink = rng.uniform(10, 80)
            for _ in range(int(rng.integers(2, 5))):  # a glyph: a few strokes inside its box
                if rng.random() < 0.5:
                    c = x + int(rng.integers(0, w - 1))
                    img[top:bottom, c : c + 2] = ink
                else:
                    r = int(rng.integers(top, bottom - 2))
                    img[r : r + 2, x : x + w] = ink
            x += w + int(rng.integers(2, 8)) + (int(rng.integers(8, 20)) if rng.random() < 0.1 else 0)
        tint = rng.uniform(0.9, 1.1, 3).astype(np.float32)
        out[k] = (np.clip(img[None] * tint[:, None, None], 0, 255) / 255 - 0.5) / 0.5
    return out


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(key: str, config: EQConfig, accuracy: bool, model_path: str | None = None, lines: int = 0) -> dict[str, object]:
    if model_path:
        import tempfile

        model = load_model(model_path)
        data = Path(tempfile.mkdtemp(prefix="bench-eq-")) / "lines.npz"
        # numpy's stub lets **arrays fill its allow_pickle: bool parameter
        np.savez(data, **{model.inputs[0].name: text_lines(lines)})  # type: ignore[arg-type]
        source = open_source(str(data), model.inputs)
        key, accuracy = Path(model_path).stem, False
    else:
        sample = SAMPLES[key]
        model = load_model(sample.model)
        source = open_source(sample.calib, model.inputs)
    stats = collect(model, source, CollectConfig())
    rss_collect = _peak_rss_mb()
    from quantviz.table import calibrate_model

    t0 = time.perf_counter()
    calibrate_model(model, stats, "kl")
    kl_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = calibrate_eq(model, stats, source, config)
    seconds = time.perf_counter() - t0
    eq = table.settings["eq"]
    layers = eq["layers"]
    row: dict[str, object] = {
        "model": key,
        "tensors": len(model.tensors),
        "layers": len(layers),
        "samples": eq["samples"],
        "n": config.n,
        "rounds": config.rounds,
        "mode": config.mode,
        "KL s": kl_seconds,
        "seconds": seconds,
        "peak MB (collect)": rss_collect,
        "peak MB (EQ)": _peak_rss_mb(),
        "evaluations": eq["evaluations"],
        "ms/eval": 1000 * seconds / max(eq["evaluations"], 1),
        "cos before": float(np.mean([v["initial_cosine"] for v in layers.values()])),
        "cos after": float(np.mean([v["cosine"] for v in layers.values()])),
        "min before": float(np.min([v["initial_cosine"] for v in layers.values()])),
        "min after": float(np.min([v["cosine"] for v in layers.values()])),
    }
    if accuracy:
        from quantviz.qdq import build_qdq_model
        from quantviz.table import calibrate_model

        kl = calibrate_model(model, stats, "kl")
        row["acc float"] = _accuracy(model.proto, sample.eval)
        row["acc KL"] = _accuracy(build_qdq_model(model, kl), sample.eval)
        row["acc EQ"] = _accuracy(build_qdq_model(model, table), sample.eval)
    return row


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.6f}" if v < 1.5 else f"{v:.1f}"
    return str(v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(SAMPLES), choices=list(SAMPLES))
    parser.add_argument("--n", type=int, default=EQConfig.n)
    parser.add_argument("--samples", type=int, default=EQConfig.max_samples)
    parser.add_argument("--rounds", type=int, default=EQConfig.rounds)
    parser.add_argument("--mode", choices=EQ_MODES, default=EQConfig.mode)
    parser.add_argument("--accuracy", action="store_true", help="also the eval-set accuracy of float, KL and EQ")
    parser.add_argument("--model", help="an ONNX model file instead of the samples (fed synthetic text lines, e.g. an OCR recogniser)")
    parser.add_argument("--lines", type=int, default=64, help="with --model: synthetic text-line images to collect on (default 64)")
    args = parser.parse_args()
    config = EQConfig(n=args.n, max_samples=args.samples, rounds=args.rounds, mode=args.mode)
    rows = []
    for key in [args.model] if args.model else args.models:
        rows.append(bench(key, config, args.accuracy, args.model, args.lines))
        print(f"done: {rows[-1]['model']} in {rows[-1]['seconds']:.1f} s", file=sys.stderr)
    cols = list(rows[0])
    widths = [max(len(c), *(len(_fmt(r.get(c, ""))) for r in rows)) for c in cols]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(_fmt(r.get(c, "")).rjust(w) for c, w in zip(cols, widths, strict=True)))
    print(f"onnxruntime {ort.__version__}, CPU threads: default; KL start (2048 bins), per-channel abs-max weights.")


if __name__ == "__main__":
    main()
