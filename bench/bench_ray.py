"""Collection in one process vs on a local Ray cluster with 1 and 2 workers, side by side, and a sizing
table for a 100-machine cluster worked out from the figures measured here.

    .venv/bin/python bench/bench_ray.py MODEL DATA [--samples 64] [--batch-size 4] [--shards 4 16 32]

Every run is a fresh Python process (its peak RSS, ru_maxrss, is the driver's alone: Ray's workers are
other processes), each starting its own local Ray when it uses one. Runs:

  float      a plain onnxruntime session over the same samples (the reference: inference alone)
  single     quantviz.collect.collect in the process (load_model + collect)
  ray-1      quantviz.distributed.collect_on_cluster on a local Ray of 1 CPU (default shards: 4 a CPU)
  ray-2      the same on 2 CPUs (these machines have 2 cores)
  ray-2 xS   2 CPUs and S shards, for each S of --shards: the driver's peak RSS must stay flat in S

Each Ray run's statistics file is compared with the single run's, member by member (bit for bit).
Printed per run: wall time of the collection (Ray's start apart), the driver's peak RSS, the bytes a
shard sends back (its statistics in memory, and as a compressed file), then the merge time of one pair
of statistics of this model, and the sizing table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MB = 1 << 20


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One run in this process; returns its figures."""
    import numpy as np

    from quantviz.config import CollectConfig
    from quantviz.model import load_model
    from quantviz.stats import npz_bytes, save_stats, stats_arrays
    from quantviz.store import deep_size

    config = CollectConfig(samples=args.samples, batch_size=args.batch_size)
    out: dict[str, Any] = {}
    if args.run == "float":
        import onnxruntime as ort

        from quantviz.data import open_source

        model = load_model(args.model)
        source = open_source(args.data, model.inputs)
        sess = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
        t = time.perf_counter()
        for batch in source.batches(args.batch_size, args.samples):
            sess.run(None, batch)
        out["collect_s"] = time.perf_counter() - t
    elif args.run == "single":
        from quantviz.collect import collect
        from quantviz.data import open_source
        from quantviz.merge import merge_calibration_stats

        model = load_model(args.model)
        t = time.perf_counter()
        stats = collect(model, open_source(args.data, model.inputs), config)
        out["collect_s"] = time.perf_counter() - t
        save_stats(stats, args.out)
        out["tensors"] = len(stats.tensors)
        out["stats_bytes"] = deep_size(stats)
        out["npz_bytes"] = len(npz_bytes(stats_arrays(stats)))
        other = dataclasses.replace(stats, data_id="another")  # a pair of this model's statistics
        times = []
        for _ in range(3):
            t = time.perf_counter()
            merge_calibration_stats([stats, other])
            times.append(time.perf_counter() - t)
        out["merge_pair_s"] = min(times)
    else:
        from quantviz.distributed import ClusterConfig, collect_on_cluster, connect

        cpus = int(args.run.split("-")[1])
        t = time.perf_counter()
        connect(None, cpus)
        out["ray_start_s"] = time.perf_counter() - t
        model = load_model(args.model)
        t = time.perf_counter()
        run = collect_on_cluster(model, args.model, args.data, config, ClusterConfig(shards=args.shards, local_cpus=cpus))
        out["collect_s"] = time.perf_counter() - t
        save_stats(run.stats, args.out)
        out["shards"] = len(run.shards)
        out["workers"] = run.workers
        out["shard_bytes"] = float(np.mean([s.nbytes for s in run.shards]))
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _same_files(a: Path, b: Path) -> bool:
    import numpy as np

    with np.load(a) as x, np.load(b) as y:
        return sorted(x.files) == sorted(y.files) and all(np.array_equal(x[k], y[k]) for k in x.files)


def _run(args: argparse.Namespace, name: str, shards: int | None, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, args.model, args.data, "--child", name, "--out", str(out)]
    cmd += ["--samples", str(args.samples), "--batch-size", str(args.batch_size)]
    if shards:
        cmd += ["--child-shards", str(shards)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if r.returncode:
        raise SystemExit(f"{name} failed:\n{r.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return result


def sizing(single: dict[str, Any], ray2: dict[str, Any], machines: int, cpus: int, samples: int) -> list[tuple[str, str]]:
    """The 100-machine table from the measured figures (see bench/README.md for the reasoning).

    One machine's rate is ray-2's (both cores busy with shards, Ray's overheads in): a ray-1 task
    already uses both cores (onnxruntime's threads, the accumulators' threads), so per-CPU figures
    would count each core twice."""
    per_sample = ray2["collect_s"] / single["samples"]  # one machine's seconds a sample
    workers = machines * cpus
    shards = 4 * workers
    b = single["stats_bytes"]
    m = single["merge_pair_s"]
    depth = math.ceil(math.log2(shards))
    return [
        ("workers (machines x CPUs)", f"{machines} x {cpus} = {workers}"),
        ("calibration samples", f"{samples}"),
        ("shards (4 a worker)", f"{shards} of {samples / shards:.0f} samples"),
        ("collection, all machines busy", f"{samples * per_sample / machines:.0f} s  ({per_sample:.3f} s a sample a machine, measured on ray-2)"),
        ("same on one process", f"{samples * single['collect_s'] / single['samples'] / 3600:.1f} h"),
        ("bytes a shard sends back", f"{b / MB:.0f} MB in memory ({single['npz_bytes'] / MB:.1f} MB as a compressed file)"),
        ("bytes moved to merge tasks", f"{shards} x {b / MB:.0f} MB = {shards * b / 2**30:.1f} GB over the cluster"),
        ("merges (shards - 1), in all", f"{shards - 1} x {m:.2f} s = {(shards - 1) * m:.0f} s of CPU, {(shards - 1) * m / workers:.1f} s a worker"),
        ("merge tail after the last shard", f"{depth} levels x {m:.2f} s = {depth * m:.1f} s (a balanced tree; plus moving {2 * b / MB:.0f} MB a level)"),
        ("driver memory", f"flat in shards (measured above): one result of {b / MB:.0f} MB at the end"),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--shards", type=int, nargs="*", default=[4, 16])
    p.add_argument("--machines", type=int, default=100)
    p.add_argument("--cluster-samples", type=int, default=50_000, help="calibration samples of the sizing table")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--child", dest="run", help=argparse.SUPPRESS)
    p.add_argument("--child-shards", dest="shards_one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run:
        args.shards = args.shards_one
        print(json.dumps(child(args)))
        return
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        rows: list[tuple[str, dict[str, Any], str]] = []
        rows.append(("float", _run(args, "float", None, d / "f.npz"), "-"))
        single = _run(args, "single", None, d / "single.npz")
        single["samples"] = args.samples
        rows.append(("single", single, "-"))
        ray1 = _run(args, "ray-1", None, d / "r1.npz")
        rows.append(("ray-1", ray1, str(_same_files(d / "r1.npz", d / "single.npz"))))
        ray2 = _run(args, "ray-2", None, d / "r2.npz")
        rows.append(("ray-2", ray2, str(_same_files(d / "r2.npz", d / "single.npz"))))
        for s in args.shards:
            r = _run(args, "ray-2", s, d / f"s{s}.npz")
            rows.append((f"ray-2 x{s}", r, str(_same_files(d / f"s{s}.npz", d / "single.npz"))))
    print(f"model {Path(args.model).name}: {single['tensors']} tensors, {args.samples} samples, batch {args.batch_size}")
    print(f"{os.cpu_count()} cores; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after (other jobs share the cores)")
    print(f"{'run':<12}{'shards':>7}{'workers':>8}{'collect s':>11}{'ray start s':>12}{'driver peak MB':>15}{'MB a shard':>11}  equal")
    for name, r, same in rows:
        shard_mb = f"{r['shard_bytes'] / MB:.1f}" if "shard_bytes" in r else "-"
        print(
            f"{name:<12}{r.get('shards', '-'):>7}{r.get('workers', '-'):>8}{r['collect_s']:>11.2f}"
            f"{r.get('ray_start_s', 0.0):>12.2f}{r['peak_rss_mb']:>15.0f}{shard_mb:>11}  {same}"
        )
    print(f"single: {single['stats_bytes'] / MB:.1f} MB of statistics ({single['npz_bytes'] / MB:.1f} MB compressed); one merge of a pair {single['merge_pair_s']:.3f} s")
    print(f"speed-up ray-2 / ray-1: {ray1['collect_s'] / ray2['collect_s']:.2f}x; ray-2 / single: {single['collect_s'] / ray2['collect_s']:.2f}x")
    print(f"\nsizing for {args.machines} machines of 2 CPUs, {args.cluster_samples} samples, from the figures above:")
    for k, v in sizing(single, ray2, args.machines, 2, args.cluster_samples):
        print(f"  {k:<34}{v}")


if __name__ == "__main__":
    main()
