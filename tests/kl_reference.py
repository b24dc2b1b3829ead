"""An independent, slow reference of TensorRT's entropy calibration on a whole model.

Shares no code with quantviz.calib.kl or quantviz.histogram (it reads the model with onnxruntime and
numpy only), so tests/test_kl_reference.py and bench/bench_kl.py can hold quantviz's one streaming
pass against it:

  pass 1  every tensor's abs-max over the samples (finite values);
  pass 2  an exact `bins`-bin histogram of |x| over [0, abs-max] (np.histogram), exact zeros left out
          (as ncnn does; ReLU zeros would otherwise pile up in bin 0);
  search  one candidate at a time, i = 128 .. bins: P = h[:i] with the outliers sum(h[i:]) added to
          P[i-1]; Q = h[:i] in 128 groups (bin j in group floor(128 j / i)), each group's mass spread
          over its non-zero bins; KL(P || Q) of the normalised vectors, P = 0 terms skipped, infinite
          where P > 0 and Q = 0. Threshold = i * abs-max / bins; ties go to the largest i.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

TARGET = 128


def float_tensors(model_path: str) -> list[str]:
    """Names of the float tensors onnxruntime can return: graph inputs and node outputs."""
    m = onnx.shape_inference.infer_shapes(onnx.load(model_path))
    inits = {i.name for i in m.graph.initializer}
    types = {v.name: v.type.tensor_type.elem_type for v in (*m.graph.input, *m.graph.value_info, *m.graph.output)}
    names = [i.name for i in m.graph.input if i.name not in inits]
    names += [o for n in m.graph.node for o in n.output if o]
    return [n for n in dict.fromkeys(names) if types.get(n) == onnx.TensorProto.FLOAT]


def _session(model_path: str, names: list[str]) -> ort.InferenceSession:
    m = onnx.load(model_path)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # every tensor kept as in the graph
    opts.log_severity_level = 3
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _values(session: ort.InferenceSession, names: list[str], batches: Iterable[dict[str, np.ndarray]]) -> Iterable[dict[str, np.ndarray]]:
    outs = [o.name for o in session.get_outputs()]
    for batch in batches:
        got = dict(zip(outs, session.run(outs, batch), strict=True))
        got.update(batch)
        yield {n: np.asarray(got[n]) for n in names if n in got}


def reference_histograms(model_path: str, batches: list[dict[str, np.ndarray]], bins: int = 2048) -> dict[str, tuple[np.ndarray, float]]:
    """Two passes over the same batches: abs-max, then the exact histogram over [0, abs-max]."""
    names = float_tensors(model_path)
    session = _session(model_path, names)
    top: dict[str, float] = {}
    for vals in _values(session, names, batches):
        for n, v in vals.items():
            a = np.abs(v[np.isfinite(v)])
            if a.size:
                top[n] = max(top.get(n, 0.0), float(a.max()))
    hists = {n: np.zeros(bins, np.int64) for n, t in top.items() if t > 0}
    for vals in _values(session, list(hists), batches):
        for n, v in vals.items():
            a = np.abs(v[np.isfinite(v)]).astype(np.float64)
            hists[n] += np.histogram(a[a != 0], bins=bins, range=(0.0, top[n]))[0]
    return {n: (h, top[n]) for n, h in hists.items()}


def kl_at(h: np.ndarray, i: int, target: int = TARGET) -> float:
    """KL(P || Q) of keeping the first i bins, computed literally for this one candidate."""
    h = np.asarray(h, dtype=np.float64)
    p = h[:i].copy()
    p[i - 1] += h[i:].sum()
    g = (target * np.arange(i)) // i
    kept = h[:i]
    mass = np.bincount(g, weights=kept, minlength=target)
    nonzero = np.bincount(g, weights=(kept > 0).astype(np.float64), minlength=target)
    q = np.where(kept > 0, mass[g] / np.maximum(nonzero[g], 1.0), 0.0)
    if np.any((p > 0) & (q == 0)):
        return float("inf")
    pos = p > 0
    pn, qn = p[pos] / p.sum(), q[pos] / q.sum()
    return float(np.sum(pn * np.log(pn / qn)))


def reference_curve(h: np.ndarray, start: int = TARGET, target: int = TARGET) -> tuple[np.ndarray, np.ndarray]:
    """Candidates start..len(h) and the KL of each, one candidate at a time."""
    n = len(h)
    cand = np.arange(max(start, target), n + 1)
    return cand, np.array([kl_at(h, int(i), target) for i in cand])


def best_candidate(cand: np.ndarray, kl: np.ndarray, tie: float = 1e-12) -> int:
    """The candidate of least KL; ties (within `tie`) to the largest, as pytorch-quantization."""
    return int(cand[np.flatnonzero(kl <= kl.min() + tie)[-1]])


def two_minima(cand: np.ndarray, kl: np.ndarray, width: float) -> list[tuple[float, float]]:
    """The curve's two lowest local minima as (threshold, KL), the lowest first."""
    k = np.where(np.isfinite(kl), kl, np.inf)
    left = np.concatenate(([np.inf], k[:-1]))
    right = np.concatenate((k[1:], [np.inf]))
    idx = np.flatnonzero((k <= left) & (k <= right) & np.isfinite(k))
    idx = idx[np.argsort(k[idx], kind="stable")][:2]
    return [(float(cand[j] * width), float(k[j])) for j in idx]


def agrees(
    threshold: float, h: np.ndarray, top: float, rel: float = 0.05, kl_slack: float = 0.10, curve: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[bool, dict[str, Any]]:
    """Whether a threshold found elsewhere matches the reference: within `rel` of its threshold, or on
    a candidate whose reference KL is within `kl_slack` of the minimum. The details say why. `curve`:
    reference_curve(h) when already computed."""
    width = top / len(h)
    cand, kl = curve if curve is not None else reference_curve(h)
    best = best_candidate(cand, kl)
    t_ref = best * width
    i = int(np.clip(round(threshold / width), 1, len(h)))
    k = kl_at(h, i)
    ok = abs(threshold - t_ref) <= rel * t_ref or k <= (1.0 + kl_slack) * float(kl.min())
    return ok, {
        "reference": t_ref,
        "found": threshold,
        "kl_found": k,
        "kl_min": float(kl.min()),
        "minima": two_minima(cand, kl, width),
    }
