"""What validation costs when a statistics file is opened: quantviz.stats.load_stats (bounded reading
through quantviz.safeio, every schema check of quantviz.schema, TensorStats built) against numpy's
plain np.load of the same arrays (no checks, no objects), on a large statistics file.

    .venv/bin/python bench/bench_validate.py [--tensors 800] [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quantviz.config import DEFAULT_BINS, DEFAULT_FINE_BINS, CollectConfig
from quantviz.safeio import read_npz
from quantviz.schema import check_stats
from quantviz.stats import CalibrationStats, TensorAccumulator, load_stats, save_stats


def make_stats(tensors: int) -> CalibrationStats:
    rng = np.random.default_rng(0)
    out = {}
    for i in range(tensors):
        acc = TensorAccumulator(f"t{i}", DEFAULT_BINS, fine_bins=DEFAULT_FINE_BINS)
        acc.update((rng.standard_normal(4096) * (1 + i % 7)).astype(np.float32))
        out[acc.name] = acc.result()
    return CalibrationStats("bench", "0" * 64, "random", "r", True, 1, CollectConfig(), out)


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tensors", type=int, default=800)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    stats = make_stats(args.tensors)
    buf = io.BytesIO()
    save_stats(stats, buf)
    raw = buf.getvalue()

    def plain() -> None:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            {k: z[k] for k in z.files}

    def bounded() -> None:
        read_npz(raw, "bench", array_bytes=1 << 31, total_bytes=1 << 31)

    loaded = load_stats(raw)
    rows = [
        ("np.load, all arrays (reference, no checks)", best(plain, args.repeat)),
        ("safeio.read_npz (bounded, no checks)", best(bounded, args.repeat)),
        ("stats.load_stats (bounded + schema + objects)", best(lambda: load_stats(raw), args.repeat)),
        ("schema.check_stats alone (what writers run)", best(lambda: check_stats(loaded), args.repeat)),
    ]
    decompressed = sum(a.nbytes for a in read_npz(raw, "bench", array_bytes=1 << 31, total_bytes=1 << 31).values())
    print(f"statistics file: {args.tensors} tensors, {DEFAULT_BINS} bins, {DEFAULT_FINE_BINS} fine bins; "
          f"{len(raw) / 2**20:.1f} MB on disk, {decompressed / 2**20:.1f} MB of arrays; best of {args.repeat}")
    ref = rows[0][1]
    print(f"{'step':50s} {'seconds':>9s} {'x np.load':>10s}")
    for name, t in rows:
        print(f"{name:50s} {t:9.3f} {t / ref:10.2f}")


if __name__ == "__main__":
    main()
