"""Top-1 accuracy of the calibration methods on a sample model, and where KL loses it, layer by layer.

    .venv/bin/python bench/bench_accuracy.py [--model digits_resnet] [--swap 12]

Collects the model's calibration set once (default settings), builds a Q/DQ model per method
(quantviz.qdq, per-channel abs-max weights) and measures top-1 on the model's eval set. Then, to say
which layers cost KL its accuracy, the --swap tensors that KL clips hardest (largest clipped share of
their values) are each given back their MinMax range, one at a time, in the KL table: the accuracy of
each such mixed table says how much that one tensor's KL clipping costs; and the first k of them all
at once (cumulative) shows how much of the gap to MinMax they explain together.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxruntime as ort  # noqa: E402

from quantviz.collect import collect  # noqa: E402
from quantviz.config import CollectConfig  # noqa: E402
from quantviz.data import open_source  # noqa: E402
from quantviz.model import load_model  # noqa: E402
from quantviz.qdq import build_qdq_model  # noqa: E402
from quantviz.samples import SAMPLES  # noqa: E402
from quantviz.summary import clipped_fraction  # noqa: E402
from quantviz.table import calibrate_model  # noqa: E402


def accuracy(proto: onnx.ModelProto, eval_path: Path) -> float:
    data = np.load(eval_path)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # Q/DQ as the spec defines (bench_eq.py)
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    probs = sess.run(None, {"input": data["input"]})[0]
    return float((probs.argmax(axis=1) == data["label"]).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="digits_resnet", choices=list(SAMPLES))
    p.add_argument("--swap", type=int, default=12, help="tensors KL clips hardest, given MinMax one at a time")
    args = p.parse_args()
    sample = SAMPLES[args.model]
    model = load_model(sample.model)
    stats = collect(model, open_source(sample.calib, model.inputs), CollectConfig())
    tables = {m: calibrate_model(model, stats, m) for m in ("minmax", "kl", "kl_ncnn", "percentile", "mse")}
    print(f"model {args.model}: {len(model.tensors)} tensors, {stats.samples} calibration samples; top-1 on {sample.eval.name}")
    print(f"  {'float':<12} {accuracy(model.proto, sample.eval):.4f}")
    acc = {m: accuracy(build_qdq_model(model, t), sample.eval) for m, t in tables.items()}
    for m, a in acc.items():
        print(f"  {m:<12} {a:.4f}")

    kl, mm = tables["kl"], tables["minmax"]
    infos = stats.infos
    clip = {
        n: clipped_fraction(stats.tensors[n], e.min, e.max)
        for n, e in kl.tensors.items()
        if n in mm.tensors and n in stats.tensors and not stats.tensors[n].empty
    }
    worst = sorted(clip, key=lambda n: clip[n], reverse=True)[: args.swap]
    print()
    print(f"KL with MinMax given back to one tensor (the {len(worst)} KL clips hardest), then to the first k together:")
    print(f"  {'tensor':<48} {'op':<8} {'KL T / abs-max':>14} {'clipped':>9} {'alone':>7} {'first k':>8}")
    cumulative = kl
    for n in worst:
        alone = accuracy(build_qdq_model(model, kl.with_entry(n, mm.tensors[n])), sample.eval)
        cumulative = cumulative.with_entry(n, mm.tensors[n])
        together = accuracy(build_qdq_model(model, cumulative), sample.eval)
        t = stats.tensors[n]
        ratio = kl.tensors[n].threshold / t.absmax if t.absmax else float("nan")
        label = n if len(n) <= 48 else "..." + n[-45:]
        op = infos[n].op_type if n in infos else "input"
        print(f"  {label:<48} {op:<8} {ratio:>14.3f} {clip[n]:>9.3%} {alone:>7.4f} {together:>8.4f}")
    print(f"(KL alone: {acc['kl']:.4f}; MinMax: {acc['minmax']:.4f})")


if __name__ == "__main__":
    main()
