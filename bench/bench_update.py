"""The per-value cost of collection's statistics and of the analysis's error sums, on one thread,
each beside the path it replaced (the reference the tests compare it with).

    .venv/bin/python bench/bench_update.py MODEL DATA [--samples 4] [--repeat 5]

One onnxruntime run of the first --samples samples with every float tensor an output gives the
activations; then, best of --repeat, per value over all of them:

  update, one pass        TensorAccumulator.update once every tensor's range is known (the default:
                          min and max found by the compiled count, quantviz.histogram.update_pair_within)
  update, min/max first   the same with the one pass switched off: numpy's min and max, then the
                          compiled count (quantviz.kernels.add_counts without a limit)
  update, numpy only      the compiled loops switched off as well: the numpy reference of the counts
  sums, compiled          quantviz.metrics' four per-sample sums (kernels.pair_sums) of each tensor
                          against a perturbed copy of itself
  sums, einsum            the same with the einsum reference path (metrics._sums_numpy)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quantviz import kernels, metrics, stats  # noqa: E402
from quantviz.data import batch_loop, open_source  # noqa: E402
from quantviz.model import load_model, session_with_outputs  # noqa: E402


def activations(model_path: str, data: str, samples: int) -> list[np.ndarray]:
    model = load_model(model_path)
    session = session_with_outputs(model)
    source = open_source(data, model.inputs)
    _, feed, _ = next(iter(batch_loop(source, samples, min(samples, source.num_samples), "Benchmark")))
    names = [o.name for o in session.get_outputs()]
    return [np.ascontiguousarray(v) for v in session.run(names, feed) if np.asarray(v).dtype == np.float32 and np.asarray(v).size]


def best_of(repeat: int, run: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def steady_update(acts: list[np.ndarray], repeat: int, patches: list[tuple[object, str, object]]) -> float:
    """Seconds of one update of every tensor, each accumulator having seen the tensor once before."""
    with ExitStack() as stack:
        for target, name, value in patches:
            stack.enter_context(mock.patch.object(target, name, value))
        accs = [stats.TensorAccumulator(f"t{i}", 2048, 0.01, 16384) for i in range(len(acts))]
        for acc, x in zip(accs, acts, strict=True):
            acc.update(x)

        def once() -> None:
            for acc, x in zip(accs, acts, strict=True):
                acc.update(x)

        return best_of(repeat, once)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    acts = activations(args.model, args.data, args.samples)
    values = sum(a.size for a in acts)
    print(f"{len(acts)} float tensors, {values / 1e6:.1f} M values ({args.samples} samples), one thread, best of {args.repeat}\n")
    no_pass = (stats, "update_pair_within", lambda *a: None)
    rows = [
        ("update, one pass (this code)", steady_update(acts, args.repeat, [])),
        ("update, min/max first", steady_update(acts, args.repeat, [no_pass])),
        ("update, numpy only (reference)", steady_update(acts, args.repeat, [no_pass, (kernels, "available", lambda: False)])),
    ]
    rng = np.random.default_rng(0)
    flat = [a.reshape(a.shape[0] if a.ndim else 1, -1) for a in acts]
    pairs = [(x, (x + rng.standard_normal(x.shape).astype(np.float32) * 0.01).astype(np.float32)) for x in flat]
    for x, y in pairs[:2]:  # compile and warm
        metrics._sums(x, y)
    rows.append(("sums, compiled (this code)", best_of(args.repeat, lambda: [metrics._sums(x, y) for x, y in pairs])))
    rows.append(("sums, einsum (reference)", best_of(args.repeat, lambda: [metrics._sums_numpy(x, y) for x, y in pairs])))
    print(f"{'path':34s} {'seconds':>8s} {'ns a value':>11s}")
    for name, seconds in rows:
        print(f"{name:34s} {seconds:8.3f} {seconds / values * 1e9:11.2f}")


if __name__ == "__main__":
    main()
