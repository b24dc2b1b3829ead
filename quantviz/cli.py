"""Command line: ``python -m quantviz COMMAND ...`` (the contract is ../shared/design/CLI.md).

Each command calls the same functions the app's pages call. Exit status: 0 success; 2 bad input,
with one sentence on stderr; 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from quantviz.calib import METHODS, MethodConfig
from quantviz.calib.result import ACIQ_PRIORS
from quantviz.collect import collect
from quantviz.config import DEFAULT_BATCH_SIZE, DEFAULT_BINS, CollectConfig
from quantviz.data import ImagePreprocess, open_source, sample_range
from quantviz.easyquant import EQ_MODES, EQConfig, calibrate_eq
from quantviz.errors import CancelledError, QuantvizError
from quantviz.model import LoadedModel, load_model
from quantviz.preflight import INFO, WARNING, blocking, preflight
from quantviz.profiles import DEFAULT_PROFILE, PROFILES
from quantviz.safeio import check_output
from quantviz.sensitivity import BEST_CANDIDATES, BEST_SAMPLES
from quantviz.stats import CalibrationStats, load_stats, save_stats
from quantviz.table import CalibrationTable, calibrate, calibrate_model

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1

Handler = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, Handler] = {}


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(message)


def progress_bar(label: str, unit: str = "samples") -> Callable[[int, int], object] | None:
    """A one-line progress bar on stderr when it is a terminal (count in its unit, time left); nothing otherwise."""
    if not sys.stderr.isatty():
        return None
    from quantviz.progress import Eta, Step, duration_text

    width = 30
    eta = Eta()

    def show(done: int, total: int) -> None:
        frac = done / total if total else 1.0
        filled = int(frac * width)
        left = eta.left(Step(label, done, total, unit))
        rest = f", about {duration_text(left)} left" if left is not None and done < total else ""
        sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {unit}{rest}   ")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = text.lower().split("x")
        return int(h), int(w)
    except ValueError:
        raise QuantvizError(f"--size must look like HxW (e.g. 224x224), not '{text}'.") from None


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise QuantvizError(f"{flag} must be numbers separated by commas, not '{text}'.") from None


def _preprocess(args: argparse.Namespace) -> ImagePreprocess:
    return ImagePreprocess(
        size=_size(args.size) if args.size else None,
        color=args.color,
        scale=args.scale,
        mean=_floats(args.mean, "--mean"),
        std=_floats(args.std, "--std"),
        layout=args.layout,
    )


def _add_data_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--data", required=required, help="a .npz, .npy, folder or .zip of images, or synthetic:N")
    p.add_argument("--samples", type=int, default=None, help="use at most N samples (default: all)")
    p.add_argument("--bins", type=int, default=DEFAULT_BINS, help=f"histogram bins (default {DEFAULT_BINS})")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help=f"samples per run (default {DEFAULT_BATCH_SIZE})")
    g = p.add_argument_group("image preprocessing (folders and .zip of images)")
    g.add_argument("--size", help="HxW to resize to (default: the model input's)")
    c = g.add_mutually_exclusive_group()
    c.add_argument("--rgb", dest="color", action="store_const", const="rgb")
    c.add_argument("--bgr", dest="color", action="store_const", const="bgr")
    c.add_argument("--gray", dest="color", action="store_const", const="gray")
    p.set_defaults(color="rgb")
    g.add_argument("--scale", type=float, default=1 / 255, help="multiply pixels by this first (default 1/255)")
    g.add_argument("--mean", default="0", help="per-channel mean, comma separated")
    g.add_argument("--std", default="1", help="per-channel std, comma separated")
    g.add_argument("--layout", choices=("nchw", "nhwc"), default="nchw")


def load_checked(model_path: str, show: bool = False, verbose: bool = False) -> LoadedModel:
    """The model, pre-flighted (quantviz.preflight): a blocking finding stops with its sentence (exit 2);
    show=True prints its warnings on stderr first (collect and calibrate from a model), verbose its
    informations too."""
    model = load_model(model_path)
    items = preflight(model)
    if show:
        for item in items:
            if item.severity == WARNING or (verbose and item.severity == INFO):
                print(f"{item.severity}: {item.text}", file=sys.stderr)
    stop = blocking(items)
    if stop is not None:
        raise QuantvizError(stop.text)
    return model


def _sample_range(text: str) -> tuple[int, int]:
    try:
        start, stop = (int(v) for v in text.split(":"))
    except ValueError:
        raise QuantvizError(f"--range must look like START:STOP (samples START..STOP-1, e.g. 0:1000), not '{text}'.") from None
    if not 0 <= start < stop:
        raise QuantvizError(f"--range needs 0 <= START < STOP, not {text}.")
    return start, stop


def _collect_from_args(args: argparse.Namespace, model_path: str) -> CalibrationStats:
    model = load_checked(model_path, show=True, verbose=bool(getattr(args, "verbose", False)))
    rng = getattr(args, "range", None)
    if rng is not None and args.samples is not None:
        raise QuantvizError("Give --range or --samples, not both (--range 0:N is --samples N).")
    source = open_source(args.data, model.inputs, preprocess=_preprocess(args))
    if rng is not None:
        source = sample_range(source, *_sample_range(rng))
    config = CollectConfig(samples=args.samples, bins=args.bins, batch_size=args.batch_size)
    ray_address = getattr(args, "ray", None)
    if ray_address is not None:
        stats = _collect_on_ray(args, model_path, model, config, ray_address)
    else:
        stats = collect(model, source, config, progress=progress_bar("collect"))
    if stats.synthetic:
        print("note: the calibration data is synthetic (random), not real samples.", file=sys.stderr)
    for name in stats.nonfinite_tensors:
        t = stats.tensors[name]
        print(f"warning: tensor '{name}' had {t.nan_count} NaN and {t.posinf_count + t.neginf_count} Inf values (kept out of its range).", file=sys.stderr)
    return stats


def _collect_on_ray(args: argparse.Namespace, model_path: str, model: LoadedModel, config: CollectConfig, address: str) -> CalibrationStats:
    """collect --ray: shards on a Ray cluster (quantviz.distributed), statistics equal to one process's."""
    from quantviz.distributed import ClusterConfig, collect_on_cluster

    if getattr(args, "range", None) is not None:
        raise QuantvizError("--ray collects every sample in shards of its own: give --ray or --range, not both.")
    if args.shards is not None and args.shards < 1:
        raise QuantvizError(f"--shards must be at least 1, not {args.shards}.")
    cluster = ClusterConfig(address=None if address == LOCAL_RAY else address, shards=args.shards)
    run = collect_on_cluster(model, model_path, args.data, config, cluster, preprocess=_preprocess(args), progress=progress_bar("collect"))
    machines = f"{run.nodes} machine" + ("s" if run.nodes != 1 else "")
    print(f"ray: {len(run.shards)} shards on {run.workers} workers ({machines}, {run.cpus} CPUs)", file=sys.stderr)
    return run.stats


LOCAL_RAY = "local"


def _check_output(path: str) -> None:
    """Refuse an output path that cannot be written before any work is done (not after a long
    collection): a folder, a missing folder, a folder where no file can be created (quantviz.safeio)."""
    check_output(path, "output file (-o)")


def cmd_collect(args: argparse.Namespace) -> int:
    _check_output(args.output)
    stats = _collect_from_args(args, args.model)
    save_stats(stats, args.output)
    print(f"{len(stats.tensors)} tensors, {stats.samples} samples -> {args.output}", file=sys.stderr)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from quantviz.merge import inexact_moving_average, merge_calibration_stats

    if len(args.stats) < 2:
        raise QuantvizError("merge needs at least two statistics files.")
    _check_output(args.output)
    parts = [load_stats(Path(p)) if Path(p).exists() else _missing(p) for p in args.stats]
    merged = merge_calibration_stats(parts, [f"'{p}'" for p in args.stats])
    for name in inexact_moving_average(parts)[:1]:
        print(
            f"note: tensor '{name}' (and maybe others) has no per-batch record in a later file: its moving-average "
            "min/max is merged to rounding, not bit for bit.", file=sys.stderr,
        )  # fmt: skip
    save_stats(merged, args.output)
    print(f"{len(parts)} files, {len(merged.tensors)} tensors, {merged.samples} samples -> {args.output}", file=sys.stderr)
    return 0


def _method_config(args: argparse.Namespace) -> MethodConfig:
    return MethodConfig(
        symmetric=not args.asymmetric,
        power_of_two=args.power_of_two,
        percentile=args.percentile,
        kl_threshold=args.kl_threshold,
        mse_min_bin=args.mse_min_bin,
        aciq_prior=args.aciq_prior,
    )


def cmd_calibrate(args: argparse.Namespace) -> int:
    _check_output(args.output)
    model_path = args.model or args.model_option
    if args.method == "best" and not (model_path and args.data):
        raise QuantvizError("--method best needs MODEL and --data: it runs the model once per candidate method to compare layers.")
    if args.method == "eq" and not (model_path and args.data):
        raise QuantvizError("--method eq needs MODEL and --data: EQ runs the model on the calibration samples to search its scales.")
    if args.target:
        _target_check(args, model_path)
    if args.stats and model_path:
        load_checked(model_path)  # a blocking finding (an already quantized model) is said before any file is read
    if args.stats:
        stats = load_stats(Path(args.stats)) if Path(args.stats).exists() else _missing(args.stats)
    elif model_path and args.data:
        stats = _collect_from_args(args, model_path)
    else:
        raise QuantvizError("calibrate needs MODEL with --data, or --stats STATS.npz.")
    if args.method == "eq":
        table = _calibrate_eq(args, model_path, stats)
    elif args.method == "best":
        table = _calibrate_best(args, model_path, stats)
    elif model_path:  # the model adds fused shared scales, weight scales and requantization multipliers
        model = load_checked(model_path)
        table = calibrate_model(
            model, stats, args.method, _method_config(args), per_channel=not args.per_tensor_weights,
            profile=args.profile, clip_outputs=args.clip_outputs,
        )  # fmt: skip
    else:
        table = calibrate(stats, args.method, _method_config(args))
    if args.target:
        table = _mixed_search(args, model_path, table)
    from quantviz.export.qv_json import write_json

    write_json(table, args.output)
    print(f"{len(table.tensors)} tensors calibrated with {args.method} -> {args.output}", file=sys.stderr)
    report_table_notes(table)
    for name, why in table.skipped.items():
        print(f"warning: tensor '{name}' left out: {why}.", file=sys.stderr)
    return 0


def _calibrate_eq(args: argparse.Namespace, model_path: str, stats: CalibrationStats) -> CalibrationTable:
    """EasyQuant (quantviz.easyquant): KL start, then the per-layer scale search on the data."""
    config = EQConfig(
        alpha=args.eq_alpha, beta=args.eq_beta, n=args.eq_n, rounds=args.eq_rounds, max_samples=args.eq_samples, mode=args.eq_mode,
        exhaustive=args.eq_exhaustive,
    )  # fmt: skip
    model = load_checked(model_path)
    source = open_source(args.data, model.inputs, preprocess=_preprocess(args))
    cluster = None
    if args.ray is not None and config.mode == "isolated":
        from quantviz.distributed import ClusterConfig

        cluster = ClusterConfig(address=None if args.ray == LOCAL_RAY else args.ray)
    return calibrate_eq(
        model, stats, source, config, progress=progress_bar("eq", "layer groups"), method_config=_method_config(args),
        per_channel=not args.per_tensor_weights, profile=args.profile, clip_outputs=args.clip_outputs,
        cluster=cluster, model_source=model_path,
    )  # fmt: skip


def _calibrate_best(args: argparse.Namespace, model_path: str, stats: CalibrationStats) -> CalibrationTable:
    """Per layer, the candidate method with the lowest isolated error (quantviz.sensitivity.best_method_table)."""
    from collections import Counter

    from quantviz.sensitivity import best_method_table

    methods = [m.strip() for m in args.best_methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise QuantvizError(f"--best-methods takes methods among {', '.join(METHODS)}, not '{args.best_methods}'.")
    if args.best_samples < 1:
        raise QuantvizError(f"--best-samples must be at least 1, not {args.best_samples}.")
    model = load_checked(model_path)
    source = open_source(args.data, model.inputs, preprocess=_preprocess(args))
    cluster = None
    if args.ray is not None:
        from quantviz.distributed import ClusterConfig

        cluster = ClusterConfig(address=None if args.ray == LOCAL_RAY else args.ray)
    table, picks = best_method_table(
        model, stats, source, methods, _method_config(args), samples=args.best_samples,
        per_channel=not args.per_tensor_weights, progress=progress_bar("best"), profile=args.profile,
        clip_outputs=args.clip_outputs, cluster=cluster, model_source=model_path,
    )  # fmt: skip
    counts = Counter(p.method for p in picks.values())
    print("best method per layer: " + ", ".join(f"{m} {n}" for m, n in counts.most_common()), file=sys.stderr)
    note = table.settings.get("best", {}).get("whole_model")
    if note:
        print(f"whole-model check: {note}.", file=sys.stderr)
    return table


def _target_check(args: argparse.Namespace, model_path: str | None) -> None:
    """--target and its options, checked before any data is read (one sentence when wrong)."""
    from quantviz.mixed import parse_target

    parse_target(args.target)
    if not model_path:
        raise QuantvizError("--target needs the model (MODEL, or --model with --stats): the search runs it.")
    if not (args.target_data or args.data):
        raise QuantvizError("--target needs data to measure the model on: --target-data DATA (or --data).")
    if args.target_samples is not None and args.target_samples < 1:
        raise QuantvizError(f"--target-samples must be at least 1, not {args.target_samples}.")


def _mixed_search(args: argparse.Namespace, model_path: str, table: CalibrationTable) -> CalibrationTable:
    """The mixed-precision search to --target (quantviz.mixed): the table with its fallbacks and trace."""
    from quantviz.data import default_labels, read_labels
    from quantviz.mixed import mixed_table, parse_target, run_search

    target = parse_target(args.target)
    model = load_checked(model_path)
    data = args.target_data or args.data
    source = open_source(data, model.inputs, preprocess=_preprocess(args))
    labels = read_labels(args.labels) if args.labels else default_labels(data)
    bar = progress_bar("search")

    def show(step: object) -> None:
        if bar is None:
            return
        s = step  # a quantviz.mixed.Step
        sys.stderr.write(f"\rsearch step {s.index}: {s.layers_out} layers out of int8, {target.kind} {s.value:.5g}   ")  # type: ignore[attr-defined]
        sys.stderr.flush()

    result, _ = run_search(
        model, table, source, target, precision=args.fallback, samples=args.target_samples, batch_size=args.batch_size,
        labels=labels, per_channel=not args.per_tensor_weights, on_step=show,
    )  # fmt: skip
    if bar is not None:
        sys.stderr.write("\n")
    layers = [f.layer for f in result.fallbacks]
    verdict = "reached" if result.reached else "NOT reached (every layer out of int8)"
    print(
        f"target {target.text} {verdict}: {target.kind} {result.int8_value:.5g} all int8 -> {result.final_value:.5g} with "
        f"{len(layers)} layers in {result.precision} ({100 * result.final_macs_share:.1f}% of MACs), {len(result.steps)} steps on {result.samples} samples",
        file=sys.stderr,
    )
    for f in result.fallbacks:
        print(f"  {f.precision}: {f.layer}" + (f" ({f.why})" if f.why else ""), file=sys.stderr)
    return mixed_table(table, result)


def cmd_analyze(args: argparse.Namespace) -> int:
    from quantviz.data import default_labels, read_labels
    from quantviz.export.qv_json import read_json
    from quantviz.report import write_csv, write_html
    from quantviz.sensitivity import analyze

    _check_output(args.output)
    suffix = Path(args.output).suffix.lower()
    if suffix not in (".csv", ".html", ".htm"):
        raise QuantvizError(f"-o must end in .csv (LAYERS.csv) or .html (a report), not '{args.output}'.")
    model = load_checked(args.model)
    table = read_json(args.table)
    source = open_source(args.data, model.inputs, preprocess=_preprocess(args))
    labels = read_labels(args.labels) if args.labels else default_labels(args.data)
    cluster = None
    if args.ray is not None:
        from quantviz.distributed import ClusterConfig

        if args.shards is not None and args.shards < 1:
            raise QuantvizError(f"--shards must be at least 1, not {args.shards}.")
        cluster = ClusterConfig(address=None if args.ray == LOCAL_RAY else args.ray, shards=args.shards)
    report = analyze(
        model, table, source, samples=args.samples, batch_size=args.batch_size, progress=progress_bar("analyze"),
        labels=labels, per_channel=not args.per_tensor_weights, cluster=cluster, model_source=args.model,
    )  # fmt: skip
    (write_html if suffix in (".html", ".htm") else write_csv)(report, args.output)
    from quantviz.outputs import figures_note

    for o in report.outputs:
        acc = f", accuracy {o.accuracy_float:.4f} float -> {o.accuracy_quantized:.4f} quantized" if o.accuracy_float is not None else ""
        text = figures_note(o.detail, o.figures) if o.detail is not None else f"cosine {o.figures.cosine:.6f}"
        print(f"{o.output}: {text}{acc}", file=sys.stderr)
    report_table_notes(table)
    print(f"{len(report.layers)} layers, {report.samples} samples -> {args.output}", file=sys.stderr)
    return 0


def report_table_notes(table: CalibrationTable) -> None:
    """What the model's structure made of the table, on stderr: tensors the profile keeps in float,
    output clips, int32 bias overflows."""
    s = table.settings
    kept = [n for n, e in table.tensors.items() if e.extra.get("profile_float")]
    if kept:
        print(f"profile {s.get('profile')}: {len(kept)} tensors kept in float (e.g. '{kept[0]}': {table.tensors[kept[0]].extra['profile_float']}).", file=sys.stderr)
    protected = [n for n, e in table.tensors.items() if e.extra.get("output_minmax")]
    if protected:
        print(f"{len(protected)} graph inputs or tensors feeding graph outputs take MinMax instead of a clipping threshold: {', '.join(protected[:5])}.", file=sys.stderr)
    for text in dict(s.get("output_clip_warnings") or {}).values():
        print(f"warning: {text}", file=sys.stderr)
    for v in dict(s.get("bias_overflow") or {}).values():
        print(f"warning: {v['text']}", file=sys.stderr)


def _missing(path: str) -> CalibrationStats:
    raise QuantvizError(f"The statistics file '{path}' does not exist.")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m quantviz", description="Look inside INT8 post-training quantization.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("collect", help="stream a calibration set through a model and save statistics")
    p.add_argument("model")
    _add_data_args(p, required=True)
    p.add_argument("--range", metavar="START:STOP", help="only samples START..STOP-1 (a shard; `merge` joins shards exactly)")
    p.add_argument(
        "--ray", nargs="?", const=LOCAL_RAY, metavar="ADDRESS",
        help="collect in shards on a Ray cluster: auto, HOST:PORT or ray://HOST:10001 (none: a local Ray on 127.0.0.1)",
    )  # fmt: skip
    p.add_argument("--shards", type=int, help="with --ray: how many shards (default 4 per CPU of the cluster)")
    p.add_argument("-o", "--output", required=True, help="statistics file (.npz)")
    COMMANDS["collect"] = cmd_collect

    p = sub.add_parser("merge", help="merge statistics files of one model and settings (e.g. shards), exactly")
    p.add_argument("stats", nargs="+", help="statistics files, in sample order")
    p.add_argument("-o", "--output", required=True, help="merged statistics file (.npz)")
    COMMANDS["merge"] = cmd_merge

    p = sub.add_parser("calibrate", help="compute a calibration table with one method")
    p.add_argument("model", nargs="?")
    _add_data_args(p, required=False)
    p.add_argument("--stats", help="a statistics file from `collect` instead of MODEL and --data")
    p.add_argument("--model", dest="model_option", help="with --stats: the model, for weight scales, fused scales and requantization")
    p.add_argument("--per-tensor-weights", action="store_true", help="one scale per weight tensor (default: per output channel)")
    p.add_argument("--method", required=True, choices=sorted([*METHODS, "eq", "best"]))
    p.add_argument(
        "--profile", choices=list(PROFILES), default=DEFAULT_PROFILE,
        help="engine whose quantization points the table follows (default ort: onnxruntime's QDQ quantizer)",
    )  # fmt: skip
    p.add_argument(
        "--clip-outputs", action="store_true",
        help="let the method clip tensors that feed graph outputs (default: MinMax on them)",
    )  # fmt: skip
    p.add_argument("--asymmetric", action="store_true", help="uint8 [min, max] instead of symmetric int8")
    p.add_argument("--power-of-two", action="store_true", help="round scales up to powers of two")
    p.add_argument("--percentile", type=float, default=MethodConfig.percentile)
    p.add_argument("--kl-threshold", choices=("edge", "center"), default=MethodConfig.kl_threshold)
    p.add_argument("--mse-min-bin", type=int, default=MethodConfig.mse_min_bin, help="mse: smallest candidate threshold, in |x| histogram bins")
    p.add_argument("--aciq-prior", choices=ACIQ_PRIORS, default=MethodConfig.aciq_prior, help="aciq: fitted prior (default laplace)")
    e = p.add_argument_group("eq (EasyQuant; needs MODEL and --data)")
    e.add_argument("--eq-alpha", type=float, default=EQConfig.alpha, help=f"smallest candidate, times the start scale (default {EQConfig.alpha})")
    e.add_argument("--eq-beta", type=float, default=EQConfig.beta, help=f"largest candidate, times the start scale (default {EQConfig.beta})")
    e.add_argument("--eq-n", type=int, default=EQConfig.n, help=f"candidates per search (default {EQConfig.n})")
    e.add_argument("--eq-rounds", type=int, default=EQConfig.rounds, help=f"rounds of weight then input search (default {EQConfig.rounds})")
    e.add_argument("--eq-samples", type=int, default=EQConfig.max_samples, help=f"samples the search uses (default {EQConfig.max_samples})")
    e.add_argument("--eq-exhaustive", action="store_true", help="try every candidate (the paper's search) instead of coarse to fine")
    e.add_argument("--eq-mode", choices=EQ_MODES, default=EQConfig.mode, help="inputs from the quantized upstream (accumulated, default) or float (isolated)")
    b = p.add_argument_group("best (the best method per layer; needs MODEL and --data)")
    b.add_argument(
        "--best-methods", default=",".join(BEST_CANDIDATES),
        help=f"candidate methods, comma separated, the first wins ties (default {','.join(BEST_CANDIDATES)})",
    )  # fmt: skip
    b.add_argument("--best-samples", type=int, default=BEST_SAMPLES, help=f"samples each comparison runs (default {BEST_SAMPLES})")
    p.add_argument(
        "--ray", nargs="?", const=LOCAL_RAY, metavar="ADDRESS",
        help="with MODEL --data: collect on a Ray cluster; with --method best: one Ray task per candidate method; "
        "with --method eq --eq-mode isolated: runs of layer groups searched by Ray tasks",
    )  # fmt: skip
    p.add_argument("--shards", type=int, help="with --ray: how many shards of the collection (default 4 per CPU)")
    t = p.add_argument_group("mixed precision to a target (needs the model and data to measure it on)")
    t.add_argument("--target", help="cosine=0.999 | snr=30 | top1-drop=0.5 | metric=package.module:function>=VALUE")
    t.add_argument("--fallback", choices=("float", "int16"), default="float", help="precision of the layers taken out of int8 (default float)")
    t.add_argument("--target-data", help="data the search measures the model on (default --data); labels from its 'label' array")
    t.add_argument("--labels", help="FILE.npz:KEY or FILE.npy with one class per sample (default: a 'label' array in the data .npz)")
    t.add_argument("--target-samples", type=int, default=None, help="use at most N samples in the search (default: all)")
    p.add_argument("-o", "--output", required=True, help="table (.json)")
    COMMANDS["calibrate"] = cmd_calibrate

    p = sub.add_parser("analyze", help="per-layer and end-to-end error of the model quantized with a table")
    p.add_argument("model")
    _add_data_args(p, required=True)
    p.add_argument("--table", required=True, help="a quantviz table (.json)")
    p.add_argument("--labels", help="FILE.npz:KEY or FILE.npy with one class per sample (default: a 'label' array in the data .npz)")
    p.add_argument("--per-tensor-weights", action="store_true", help="one scale per weight tensor (default: per output channel)")
    p.add_argument(
        "--ray", nargs="?", const=LOCAL_RAY, metavar="ADDRESS",
        help="the isolated per-layer error in runs of layers on a Ray cluster: auto, HOST:PORT or ray://HOST:10001 "
        "(none: a local Ray on 127.0.0.1); the same figures",
    )  # fmt: skip
    p.add_argument("--shards", type=int, help="with --ray: how many runs of layers (default one per CPU of the cluster)")
    p.add_argument("-o", "--output", required=True, help="LAYERS.csv or REPORT.html")
    COMMANDS["analyze"] = cmd_analyze

    from quantviz.export.cli_commands import add_table_commands

    add_table_commands(sub, COMMANDS)  # export, import, diff
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        print(f"error: {exc} (see python -m quantviz --help)", file=sys.stderr)
        return EXIT_BAD_INPUT
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(levelname)s %(message)s")
    try:
        return COMMANDS[args.command](args)
    except QuantvizError as exc:
        # a name from a hostile file may hold characters the terminal cannot encode (lone surrogates)
        text = f"error: {exc}".encode("utf-8", "backslashreplace").decode("utf-8")
        print(text, file=sys.stderr)
        return EXIT_BAD_INPUT
    except CancelledError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_FAILURE
