"""quantviz collection vs onnxruntime's own calibrators: wall time and peak RSS, side by side.

    .venv/bin/python bench/bench_collect.py MODEL DATA [--samples 16 64] [--batch-size 8] [--timeout 900]

Every run is a fresh Python process (peak RSS is per run: the parent reads it with os.wait4, the
kernel's ru_maxrss of that child alone), started in a temporary working directory because
onnxruntime's calibrators write their augmented model into it. For each N in --samples:

  quantviz     load_model + collect (default CollectConfig: 2048 bins, |x| and signed histograms) +
               KL and MinMax thresholds for every tensor (quantviz.table.calibrate)
  ort-minmax   onnxruntime.quantization.calibrate.create_calibrator(MinMax): collect_data + compute_data
  ort-entropy  the same with CalibrationMethod.Entropy and extra_options={"num_bins": 2048}
               (onnxruntime's default of 128 bins leaves a single KL candidate: onnxruntime issue 9597)
  float        plain onnxruntime session on the original model, the same samples (best of 3 passes)
  baseline     nothing run: Python with numpy, onnx and onnxruntime imported and one plain session of
               the model; the memory floor every run above pays (printed once, for the RSS ratios)

All runs read the same samples from DATA (the first N, in batches of --batch-size). Targets (issue 2):
peak RSS >= 10x lower than ort-entropy and flat in N (N=64 within 15% of N=16); wall time >= 4x lower
than ort-entropy collect+compute and <= 5x the plain float inference of the same samples.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from childrun import run_child

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("quantviz", "ort-minmax", "ort-entropy", "float", "baseline")
ORT_ENTROPY_BINS = 2048
DEFAULT_TIMEOUT_S = 900.0
FLOAT_PASSES = 3
REPEAT_LIMIT_S = 60.0
MB = 1024.0  # ru_maxrss is in KiB on Linux


# ----------------------------------------------------------------------------------------------
# Child side: one method, one N, in its own process.


def _samples(data: str, model_path: str, n: int) -> dict[str, Any]:
    """The first n samples of DATA keyed by model input (plain numpy: no quantviz in ORT's runs)."""
    import numpy as np
    import onnx

    model = onnx.load(model_path, load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    if data.endswith(".npy"):
        arrays = {names[0]: np.load(data, mmap_mode="r")}
    else:
        with np.load(data) as z:
            arrays = {k: z[k] for k in z.files}
        if len(names) == 1 and names[0] not in arrays and len(arrays) == 1:
            arrays = {names[0]: next(iter(arrays.values()))}
    return {k: np.ascontiguousarray(arrays[k][:n], dtype=np.float32) for k in names}


def _batches(arrays: dict[str, Any], batch_size: int) -> Iterator[dict[str, Any]]:
    n = next(iter(arrays.values())).shape[0]
    for start in range(0, n, batch_size):
        yield {k: v[start : start + batch_size] for k, v in arrays.items()}


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def run_quantviz(model_path: str, data: str, n: int, batch_size: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from quantviz.collect import collect
    from quantviz.config import CollectConfig
    from quantviz.data import open_source
    from quantviz.model import load_model
    from quantviz.table import calibrate

    t0 = time.perf_counter()
    model = load_model(model_path)
    source = open_source(data, model.inputs)
    t1 = time.perf_counter()
    stats = collect(model, source, CollectConfig(samples=n, batch_size=batch_size))
    t2 = time.perf_counter()
    kl = calibrate(stats, "kl")
    mm = calibrate(stats, "minmax")
    t3 = time.perf_counter()
    return {
        "setup": t1 - t0, "collect": t2 - t1, "compute": t3 - t2, "tensors": len(stats.tensors),
        "calibrated": min(len(kl.tensors), len(mm.tensors)), "samples": stats.samples,
    }  # fmt: skip


def run_ort(model_path: str, data: str, n: int, batch_size: int, entropy: bool) -> dict[str, Any]:
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    arrays = _samples(data, model_path, n)

    # onnxruntime takes any object with get_next() as a CalibrationDataReader (its __subclasshook__);
    # its classes carry no type information, so subclassing one would derive from Any.
    class Reader:
        def __init__(self) -> None:
            self._it = _batches(arrays, batch_size)

        def get_next(self) -> dict[str, Any] | None:
            return next(self._it, None)

    method = CalibrationMethod.Entropy if entropy else CalibrationMethod.MinMax
    extra = {"num_bins": ORT_ENTROPY_BINS} if entropy else {}
    t0 = time.perf_counter()
    cal = create_calibrator(
        model_path, None, augmented_model_path=str(Path.cwd() / "augmented_model.onnx"),
        calibrate_method=method, extra_options=extra,
    )  # fmt: skip
    t1 = time.perf_counter()
    cal.collect_data(Reader())
    t2 = time.perf_counter()
    result = cal.compute_data()
    t3 = time.perf_counter()
    return {"setup": t1 - t0, "collect": t2 - t1, "compute": t3 - t2, "tensors": len(list(result.keys())), "samples": n}


def run_float(model_path: str, data: str, n: int, batch_size: int) -> dict[str, Any]:
    import onnxruntime as ort

    arrays = _samples(data, model_path, n)
    t0 = time.perf_counter()
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    t1 = time.perf_counter()
    passes = []
    for _ in range(FLOAT_PASSES):
        s = time.perf_counter()
        for batch in _batches(arrays, batch_size):
            sess.run(None, batch)
        passes.append(time.perf_counter() - s)
    return {"setup": t1 - t0, "collect": min(passes), "first_pass": passes[0], "compute": 0.0, "tensors": 0, "samples": n}


def run_baseline(model_path: str) -> dict[str, Any]:
    import onnxruntime as ort

    t0 = time.perf_counter()
    ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    return {"setup": time.perf_counter() - t0, "collect": 0.0, "compute": 0.0, "tensors": 0, "samples": 0}


def child_main(args: argparse.Namespace) -> None:
    runners = {
        "quantviz": lambda: run_quantviz(args.model, args.data, args.n, args.batch_size),
        "ort-minmax": lambda: run_ort(args.model, args.data, args.n, args.batch_size, entropy=False),
        "ort-entropy": lambda: run_ort(args.model, args.data, args.n, args.batch_size, entropy=True),
        "float": lambda: run_float(args.model, args.data, args.n, args.batch_size),
        "baseline": lambda: run_baseline(args.model),
    }
    # Import everything a run needs first: cpu and wall times then cover the work, not the imports.
    import numpy  # noqa: F401
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import onnxruntime.quantization.calibrate  # noqa: F401

    if args.child == "quantviz":  # only there: quantviz's modules are not part of onnxruntime's runs
        sys.path.insert(0, str(ROOT))
        import quantviz.collect  # noqa: F401
        import quantviz.data  # noqa: F401
        import quantviz.table  # noqa: F401

    cpu0 = _cpu_seconds()
    out = runners[args.child]()
    out["cpu"] = _cpu_seconds() - cpu0
    Path(args.result).write_text(json.dumps(out))


# ----------------------------------------------------------------------------------------------
# Parent side: spawn, time out, read peak RSS, print the table.


def spawn(method: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run one method in a fresh process; peak RSS from os.wait4 (that child's ru_maxrss)."""
    with tempfile.TemporaryDirectory(prefix="qv-bench-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [
            sys.executable, str(Path(__file__).resolve()), str(Path(args.model).resolve()), str(Path(args.data).resolve()),
            "--child", method, "--n", str(n), "--batch-size", str(args.batch_size), "--result", str(result),
        ]  # fmt: skip
        run = run_child(cmd, tmp, args.timeout)
        row: dict[str, Any] = {"method": method, "n": n, "rss_mb": run.peak_rss_kb / MB, "elapsed": run.elapsed}
        if run.timed_out:
            row["error"] = f"timeout (>{args.timeout:.0f} s)"
        elif run.exit_code != 0 or not result.exists():
            row["error"] = f"failed (exit {run.exit_code}): {run.last_line(80)}"
        else:
            row.update(json.loads(result.read_text()))
            row["total"] = row["setup"] + row["collect"] + row["compute"]
        return row


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.1f}x"


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    head = f"{'method':<12} {'N':>4} {'setup s':>8} {'collect s':>9} {'compute s':>9} {'total s':>8} {'cpu s':>7} {'peak RSS MB':>11} {'tensors':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['method']:<12} {r['n']:>4} {r['error']:>45} {r['rss_mb']:>11.0f} {'-':>7}")
            continue
        lines.append(
            f"{r['method']:<12} {r['n']:>4} {_fmt(r['setup']):>8} {_fmt(r['collect']):>9} {_fmt(r['compute']):>9} "
            f"{_fmt(r['total']):>8} {_fmt(r['cpu']):>7} {r['rss_mb']:>11.0f} {r['tensors'] or '-':>7}"
        )
    return "\n".join(lines)


def ratios(rows: list[dict[str, Any]], samples: list[int]) -> str:
    def row(method: str, n: int) -> dict[str, Any] | None:
        return next((r for r in rows if r["method"] == method and r["n"] == n), None)

    def val(r: dict[str, Any] | None, key: str) -> float | None:
        if r is None or ("error" in r and key != "rss_mb"):
            return None
        return r.get(key)

    base = next((r["rss_mb"] for r in rows if r["method"] == "baseline" and "error" not in r), None)
    out = []
    for n in samples:
        q, fl, ent = row("quantviz", n), row("float", n), row("ort-entropy", n)
        note = ""
        ent_time = val(ent, "total")
        if ent is not None and "error" in ent:
            note = f"   [ort-entropy {ent['error']}: its figures are lower bounds]"
            if "timeout" in ent["error"]:
                ent_time = ent["elapsed"]
        q_rss, e_rss = val(q, "rss_mb"), val(ent, "rss_mb")
        q_collect, q_compute = val(q, "collect"), val(q, "compute")
        qc = None if q_collect is None or q_compute is None else q_collect + q_compute
        out.append(f"N={n}:{note}")
        out.append(f"  ORT Entropy peak RSS / quantviz peak RSS        {_ratio(e_rss, q_rss):>8}   (target >= 10x)")
        if base is not None and q_rss is not None and e_rss is not None:
            above = _ratio(e_rss - base, q_rss - base)
            out.append(f"    the same above the {base:.0f} MB baseline            {above:>8}")
        out.append(f"  ORT Entropy time / quantviz time (total)        {_ratio(ent_time, val(q, 'total')):>8}   (target >= 4x)")
        out.append(
            f"  quantviz collect / float inference              {_ratio(q_collect, val(fl, 'collect')):>8}   (target <= 5x)"
        )
        out.append(f"  quantviz collect + KL + MinMax / float inference {_ratio(qc, val(fl, 'collect')):>7}")
        q_setup, f_setup, f_run = val(q, "setup"), val(fl, "setup"), val(fl, "first_pass")
        if q_setup is not None and q_collect is not None and f_setup is not None and f_run is not None:
            whole = _ratio(q_setup + q_collect, f_setup + f_run)
            out.append(f"  start-up included: load + collect / session + first float pass {whole:>5}   (target <= 5x)")
    if len(samples) >= 2:
        lo, hi = min(samples), max(samples)
        a, b = val(row("quantviz", lo), "rss_mb"), val(row("quantviz", hi), "rss_mb")
        if a and b:
            out.append(
                f"quantviz peak RSS N={hi} vs N={lo}: {b:.0f} / {a:.0f} MB = {(b / a - 1) * 100:+.1f}%   (target within 15%)"
            )
    return "\n".join(out)


def parent_main(args: argparse.Namespace) -> None:
    methods = args.methods or [m for m in METHODS if m != "baseline"]
    rows: list[dict[str, Any]] = []
    print(f"model {args.model}  data {args.data}  batch size {args.batch_size}  samples {args.samples}")
    print(f"{time.strftime('%Y-%m-%d %H:%M')}  {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    plan = [("baseline", 0)] + [(m, n) for n in args.samples for m in methods]
    for m, n in plan:
        row = spawn(m, n, args)
        for _ in range(args.repeat - 1):  # keep the fastest of short runs (a shared machine is noisy)
            if "error" in row or row["total"] > REPEAT_LIMIT_S:
                break
            again = spawn(m, n, args)
            if "error" not in again and again["total"] < row["total"]:
                row = again
        rows.append(row)
        status = row.get("error") or f"{row['total']:.2f} s, {row['rss_mb']:.0f} MB"
        print(f"  ran {m:<12} N={n:<4} {status}", file=sys.stderr, flush=True)
    import onnxruntime

    print()
    print(table(rows, args))
    print()
    print(ratios(rows, args.samples))
    print()
    print(
        f"Notes: onnxruntime {onnxruntime.__version__}; ort-entropy runs with extra_options num_bins={ORT_ENTROPY_BINS} "
        "(its default 128 leaves a single KL candidate); every run is its own process (peak RSS = its ru_maxrss); "
        f"float = plain onnxruntime session, default options, best of {FLOAT_PASSES} passes; total = setup (model load, "
        "session) + collect + compute (quantviz: KL and MinMax for every tensor); cpu = user+sys seconds of the run; "
        f"runs shorter than {REPEAT_LIMIT_S:.0f} s: the fastest of --repeat {args.repeat}. Wall times are noisy on a shared machine."
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--samples", type=int, nargs="+", default=[16, 64])
    p.add_argument("--batch-size", type=int, default=None, help="samples per run (default: quantviz's default batch size)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per run before it is killed")
    p.add_argument("--methods", nargs="+", choices=METHODS, help="a subset of the methods (default: all)")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help=f"runs of each method shorter than {REPEAT_LIMIT_S:.0f} s: keep the fastest of this many",
    )
    p.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.batch_size is None:
        sys.path.insert(0, str(ROOT))
        from quantviz.config import DEFAULT_BATCH_SIZE

        args.batch_size = DEFAULT_BATCH_SIZE
    if args.child:
        child_main(args)
    else:
        parent_main(args)


if __name__ == "__main__":
    main()
