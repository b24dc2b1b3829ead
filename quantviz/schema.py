"""What a valid file is, one schema per kind, checked on load before any computation and by every
writer before it writes (so whatever quantviz exports, its importer reads back).

Kinds: statistics (quantviz.stats, versions 1 and 2), reviews (quantviz.review), calibration tables
(every format in quantviz/export/ builds a CalibrationTable and goes through check_table), method
settings (MethodConfig) and collection settings (CollectConfig) as stored in files. Calibration data
is checked by quantviz.data against the model's inputs, ONNX models by quantviz.model and
quantviz.preflight; their sizes by quantviz.safeio.

Each check raises QuantvizError naming the FIRST violation in one sentence: the field, the tensor, and
what was expected. Checks are proportional to the file's real content (they run over arrays already
read within quantviz.limits), and cheap next to the calibration they protect: see
bench/bench_validate.py.

Why consistency matters beyond types: calibration methods trust that a tensor's min/max lie inside its
histograms, and size their searches from the two (MSE builds one candidate per bin edge up to the
abs-max: a 70 KB file whose abs-max was a million bins past its histogram made it allocate 7.6 GiB).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from quantviz.errors import QuantvizError
from quantviz.limits import FINE_BINS_MAX, HIST_BINS_MAX, TENSORS_MAX, LimitError

if TYPE_CHECKING:  # quantviz.table checks its tables here: a runtime import would be circular
    from quantviz.table import CalibrationTable

# Scales an int8 table may hold: float32 must represent them (TensorRT, ncnn, QDQ store float32) and
# T = 127 s must stay finite there; below SCALE_MIN the grid is finer than any activation quantviz sees.
SCALE_MIN = 2.0**-126  # float32's smallest normal number (1.18e-38): subnormal scales lose precision
SCALE_MAX = 1e30
ZERO_POINT_RANGE = (-32768, 65535)  # int8/uint8 tables; int16/uint16 QDQ models
WIDTH_EXPONENTS = (-1100, 1100)  # histogram widths 2**e (quantviz writes -118..128)
TEXT_MAX = 100_000  # characters of a note, a name, a method name


def _j(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --- primitive checks --------------------------------------------------------------------------------


def is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool | np.bool_)


def need_int(value: Any, where: str, lo: int | None = None, hi: int | None = None) -> int:
    if not is_int(value):
        raise QuantvizError(f"{where} must be a whole number, not {_j(value)}.")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        bounds = (
            f"between {lo} and {hi}"
            if lo is not None and hi is not None
            else (f"at least {lo}" if lo is not None else f"at most {hi}")
        )
        raise QuantvizError(f"{where} must be {bounds}, not {v}.")
    return v


def need_number(value: Any, where: str, *, finite: bool = True) -> float:
    if not is_number(value):
        raise QuantvizError(f"{where} must be a number, not {_j(value)}.")
    try:
        v = float(value)
    except OverflowError:
        raise QuantvizError(f"{where} is a number too large for a double.") from None
    if finite and not math.isfinite(v):
        raise QuantvizError(f"{where} must be a finite number, not {v}.")
    return v


def need_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise QuantvizError(f"{where} must be text, not {_j(value)}.")
    if len(value) > TEXT_MAX:
        raise LimitError(f"{where} is {len(value)} characters long, beyond quantviz's limit of {TEXT_MAX}.")
    return value


def need_bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise QuantvizError(f"{where} must be true or false, not {_j(value)}.")
    return bool(value)


def need_dict(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise QuantvizError(f"{where} must be an object, not {_j(value)}.")
    return value


def need_names(value: Any, where: str) -> list[str]:
    """A list of distinct tensor names (text), at most TENSORS_MAX."""
    if not isinstance(value, list):
        raise QuantvizError(f"{where} must be a list of tensor names, not {_j(value)}.")
    if len(value) > TENSORS_MAX:
        raise LimitError(f"{where} lists {len(value)} tensors, beyond quantviz's limit of {TENSORS_MAX}.")
    seen: set[str] = set()
    for i, name in enumerate(value):
        if not isinstance(name, str):
            raise QuantvizError(f"{where}[{i}] must be a tensor name (text), not {_j(name)}.")
        if name in seen:
            raise QuantvizError(f"{where} names the tensor '{name}' twice.")
        seen.add(name)
    return value


def check_version(doc: Mapping[str, Any], what: str, newest: int) -> int:
    version = doc.get("version", 0)
    if not is_int(version):
        raise QuantvizError(f'{what} is damaged: its "version" must be a whole number, not {_j(version)}.')
    if version > newest:
        raise QuantvizError(f"{what} has version {version}; this quantviz reads up to {newest}: upgrade quantviz.")
    if version < 0:
        raise QuantvizError(f"{what} is damaged: its version {version} is negative.")
    return int(version)


def check_fields(doc: Mapping[str, Any], cls: type, where: str, *, required: Sequence[str] = ()) -> dict[str, Any]:
    """Keyword arguments for dataclass cls from a JSON object: unknown keys and wrong types refused.

    Types come from the dataclass annotations (bool, int, float, str, int | None)."""
    if not isinstance(doc, dict):
        raise QuantvizError(f"{where} must be an object, not {_j(doc)}.")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in doc:
        if key not in names:
            raise QuantvizError(f"{where} has the unknown field {_j(key)} (known: {', '.join(sorted(names))}).")
    for key in required:
        if key not in doc:
            raise QuantvizError(f'{where} has no "{key}" field.')
    out: dict[str, Any] = {}
    for key, value in doc.items():
        hint = hints[key]
        args = typing.get_args(hint)
        optional = type(None) in args
        base = next((a for a in args if a is not type(None)), hint) if args else hint
        w = f"{where}.{key}"
        if value is None and optional:
            out[key] = None
        elif base is bool:
            out[key] = need_bool(value, w)
        elif base is int:
            out[key] = need_int(value, w)
        elif base is float:
            out[key] = need_number(value, w)
        elif base is str:
            out[key] = need_str(value, w)
        else:
            out[key] = value
    return out


def method_config(doc: Any, where: str = "The method settings") -> Any:
    """A MethodConfig from a stored dict (a review's, a table's settings): types, then its own ranges."""
    from quantviz.calib import MethodConfig

    kwargs = check_fields(doc, MethodConfig, where)
    for key in ("kl_start_bin", "kl_target_bins", "mse_min_bin"):
        if key in kwargs:
            need_int(kwargs[key], f"{where}.{key}", 1, HIST_BINS_MAX)
    config = MethodConfig(**kwargs)  # __post_init__ checks the remaining ranges
    if not config.kl_target_bins <= config.kl_start_bin <= config.kl_bins:
        raise QuantvizError(
            f"{where}: KL needs kl_target_bins <= kl_start_bin <= kl_bins, not {config.kl_target_bins}, {config.kl_start_bin}, {config.kl_bins}."
        )
    return config


def collect_config(doc: Any, where: str) -> Any:
    """A CollectConfig from a statistics header: types and the ranges histograms and batches need."""
    from quantviz.config import CollectConfig

    kwargs = check_fields(doc, CollectConfig, where, required=("bins",))
    bins = need_int(kwargs["bins"], f"{where}.bins", 2, HIST_BINS_MAX)
    if bins % 2:
        raise QuantvizError(f"{where}.bins must be even, not {bins}.")
    kwargs.setdefault("fine_bins", bins)  # version 1: no finer histogram
    need_int(kwargs["fine_bins"], f"{where}.fine_bins", 0, FINE_BINS_MAX)
    if "batch_size" in kwargs:
        need_int(kwargs["batch_size"], f"{where}.batch_size", 1)
    if kwargs.get("samples") is not None:
        need_int(kwargs["samples"], f"{where}.samples", 1)
    if "ema_constant" in kwargs and not 0 < kwargs["ema_constant"] <= 1:
        raise QuantvizError(f"{where}.ema_constant must be in (0, 1], not {kwargs['ema_constant']}.")
    return CollectConfig(**kwargs)


# --- statistics --------------------------------------------------------------------------------------

STATS_WHAT = "This statistics file"


def _array(data: Mapping[str, np.ndarray], key: str, rows: int, ndim: int, kind: str) -> np.ndarray:
    if key not in data:
        raise QuantvizError(f"{STATS_WHAT} is damaged: it has no '{key}' array.")
    a = data[key]
    if a.ndim != ndim or a.shape[0] != rows:
        want = f"({rows}, ...)" if ndim == 2 else f"({rows},)"
        raise QuantvizError(f"{STATS_WHAT} is damaged: its '{key}' array has shape {a.shape}, not {want} (one row per tensor).")
    ok = (
        np.issubdtype(a.dtype, np.integer)
        if kind == "int"
        else np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)
    )
    if not ok:
        raise QuantvizError(
            f"{STATS_WHAT} is damaged: its '{key}' array holds {a.dtype}, not {'integers' if kind == 'int' else 'numbers'}."
        )
    return a


def _widths(data: Mapping[str, np.ndarray], key: str, names: Sequence[str]) -> np.ndarray:
    w = _array(data, key, len(names), 1, "float").astype(np.float64)
    bad = ~(np.isfinite(w) & (w > 0))
    if not bad.any():
        mant, exp = np.frexp(w)
        bad = (mant != 0.5) | (exp - 1 < WIDTH_EXPONENTS[0]) | (exp - 1 > WIDTH_EXPONENTS[1])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise QuantvizError(
            f"{STATS_WHAT} is damaged: tensor '{names[i]}' has the histogram bin width {w[i]!r} in '{key}', not a positive power of two."
        )
    return w


def _counts(data: Mapping[str, np.ndarray], key: str, names: Sequence[str], bins_max: int) -> np.ndarray:
    c = _array(data, key, len(names), 2, "int")
    bins = c.shape[1]
    if bins < 2 or bins > bins_max or bins % 2:
        raise QuantvizError(
            f"{STATS_WHAT} is damaged: its '{key}' histograms have {bins} bins, not an even number from 2 to {bins_max}."
        )
    if c.size and c.min() < 0:
        i = int(np.flatnonzero((c < 0).any(axis=1))[0])
        raise QuantvizError(f"{STATS_WHAT} is damaged: tensor '{names[i]}' has a negative histogram count in '{key}'.")
    return c


def check_stats_file(header: Any, data: Mapping[str, np.ndarray], newest: int, fmt: str) -> dict[str, Any]:
    """The header and arrays of a statistics file, checked before any TensorStats is built.

    Returns the header's checked parts: names, config, version."""
    if not isinstance(header, dict) or header.get("format") != fmt:
        raise QuantvizError("This file is not a quantviz statistics file (its header's format is not quantviz-stats).")
    version = check_version(header, STATS_WHAT, newest)
    model = need_dict(header.get("model"), f"{STATS_WHAT}: model")
    need_str(model.get("name"), f"{STATS_WHAT}: model.name")
    need_str(model.get("sha256"), f"{STATS_WHAT}: model.sha256")
    d = need_dict(header.get("data"), f"{STATS_WHAT}: data")
    need_str(d.get("description"), f"{STATS_WHAT}: data.description")
    need_str(d.get("id"), f"{STATS_WHAT}: data.id")
    need_bool(d.get("synthetic"), f"{STATS_WHAT}: data.synthetic")
    samples = need_int(header.get("samples"), f"{STATS_WHAT}: samples", 0)
    data_range = None
    if "range" in d:
        r = d["range"]
        if not (isinstance(r, list) and len(r) == 2 and all(is_int(v) for v in r) and r[0] >= 0 and r[1] - r[0] >= samples):
            raise QuantvizError(f"{STATS_WHAT}: data.range must be [start, stop] of at least its {samples} samples, not {_j(r)}.")
        data_range = (int(r[0]), int(r[1]))
    config = collect_config(header.get("config"), f"{STATS_WHAT}: config")
    names = need_names(header.get("tensors"), f'{STATS_WHAT}: "tensors"')
    infos = need_dict(header.get("infos", {}), f"{STATS_WHAT}: infos")
    for n, info in infos.items():
        _check_info(n, info)
    shapes = _check_shapes(header.get("shapes", {}), names)
    out = {"names": names, "config": config, "version": version, "range": data_range, "shapes": shapes}
    if not names:
        return out
    sc = _array(data, "scalars", len(names), 2, "float")
    from quantviz.stats import _SCALARS

    if sc.shape[1] != len(_SCALARS):
        raise QuantvizError(f"{STATS_WHAT} is damaged: its 'scalars' array has {sc.shape[1]} columns, not {len(_SCALARS)}.")
    ac = _counts(data, "abs_counts", names, HIST_BINS_MAX)
    sgc = _counts(data, "signed_counts", names, HIST_BINS_MAX)
    if ac.shape[1] != config.bins or sgc.shape[1] != config.bins:
        raise QuantvizError(
            f"{STATS_WHAT} is damaged: its histograms have {ac.shape[1]} and {sgc.shape[1]} bins but its config says {config.bins}."
        )
    _widths(data, "abs_width", names)
    _widths(data, "signed_width", names)
    if ("fine_counts" in data) != ("fine_width" in data):
        raise QuantvizError(f"{STATS_WHAT} is damaged: it has one of 'fine_counts' and 'fine_width' without the other.")
    if "fine_counts" in data:
        fc = _counts(data, "fine_counts", names, FINE_BINS_MAX)
        ratio = fc.shape[1] // config.bins
        if fc.shape[1] % config.bins or ratio & (ratio - 1):
            raise QuantvizError(
                f"{STATS_WHAT} is damaged: its fine histograms have {fc.shape[1]} bins, not the {config.bins} bins times a power of two."
            )
        _widths(data, "fine_width", names)
    _batch_record(data, names, sc)
    return out


def _batch_record(data: Mapping[str, np.ndarray], names: Sequence[str], scalars: np.ndarray) -> None:
    """The per-batch (min, max) rows (optional): one run of `batches` rows per tensor (or -1: none), at
    most BATCH_RECORD_MAX each, finite (check_tensor_stats checks them against the tensor's range)."""
    from quantviz.limits import BATCH_RECORD_MAX
    from quantviz.stats import _SCALARS

    if ("batch_ranges" in data) != ("batch_record_len" in data):
        raise QuantvizError(f"{STATS_WHAT} is damaged: it has one of 'batch_ranges' and 'batch_record_len' without the other.")
    if "batch_ranges" not in data:
        return
    lens = _array(data, "batch_record_len", len(names), 1, "int").astype(np.int64)
    rows = data["batch_ranges"]
    if rows.ndim != 2 or rows.shape[1] != 2 or not np.issubdtype(rows.dtype, np.floating):
        raise QuantvizError(f"{STATS_WHAT} is damaged: its 'batch_ranges' array is not (rows, 2) numbers.")
    batches = scalars[:, _SCALARS.index("batches")]
    whole = np.isfinite(batches) & (batches == np.floor(batches))  # others are refused with their counts
    bad = whole & (lens != -1) & ((lens != batches) | (lens > BATCH_RECORD_MAX))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise QuantvizError(
            f"{STATS_WHAT} is damaged: tensor '{names[i]}' records {lens[i]} batch ranges for {int(batches[i])} batches."
        )
    if int(np.maximum(lens, 0).sum()) != rows.shape[0] or not np.isfinite(rows).all():
        raise QuantvizError(
            f"{STATS_WHAT} is damaged: its 'batch_ranges' do not hold one finite (min, max) row per recorded batch."
        )


SHAPE_RANK_MAX = 32  # ONNX allows any rank; no real tensor comes near this


def _check_shapes(shapes: Any, names: list[str]) -> dict[str, list[int]]:
    """The optional "shapes" of a statistics header: tensor name -> observed dimensions."""
    d = need_dict(shapes, f"{STATS_WHAT}: shapes")
    known = set(names)
    for n, dims in d.items():
        if n not in known:
            raise QuantvizError(f"{STATS_WHAT}: shapes names '{n}', which is not one of its tensors.")
        if (
            not isinstance(dims, list) or len(dims) > SHAPE_RANK_MAX
            or not all(is_int(v) and 0 <= v < 2**62 for v in dims)
        ):  # fmt: skip
            raise QuantvizError(f"{STATS_WHAT}: shapes['{n}'] must be a list of whole numbers >= 0, not {_j(dims)}.")
    return d


def _check_info(name: str, info: Any) -> None:
    where = f"{STATS_WHAT}: infos['{name}']"
    d = need_dict(info, where)
    for key in ("name", "kind", "producer", "op_type", "dtype"):
        need_str(d.get(key), f"{where}.{key}")
    shape = d.get("shape")
    if not isinstance(shape, list) or not all(v is None or is_int(v) or isinstance(v, str) for v in shape):
        raise QuantvizError(f"{where}.shape must be a list of dimensions, not {_j(shape)}.")
    consumers = d.get("consumers", [])
    if not isinstance(consumers, list) or not all(isinstance(c, str) for c in consumers):
        raise QuantvizError(f"{where}.consumers must be a list of node names.")
    extra = set(d) - {"name", "kind", "producer", "op_type", "dtype", "shape", "consumers"}
    if extra:
        raise QuantvizError(f"{where} has the unknown field {_j(sorted(extra)[0])}.")


def check_tensor_stats(t: Any) -> None:
    """One TensorStats: counts, ranges, and histograms that agree with them (see the module doc)."""
    where = f"Tensor '{t.name}' of the statistics"
    for key in ("count", "nan_count", "posinf_count", "neginf_count", "zero_count", "batches"):
        v = getattr(t, key)
        if not is_int(v) or v < 0:
            raise QuantvizError(f"{where} has {key} {v!r}, not a whole number >= 0.")
    if t.zero_count > t.count:
        raise QuantvizError(f"{where} counts {t.zero_count} zeros among only {t.count} values.")
    for key in ("ema_min", "ema_max", "first_batch_min", "first_batch_max"):
        v = getattr(t, key)
        if math.isinf(v):
            raise QuantvizError(f"{where} has {key} {v}, not a finite number.")
    hists = [("|x| histogram", t.abs_hist), ("signed histogram", t.signed_hist)]
    if t.fine_hist is not None:
        hists.append(("fine |x| histogram", t.fine_hist))
    for label, h in hists:
        if h.total != t.count:
            raise QuantvizError(f"{where}: its {label} holds {h.total} values but its count is {t.count}.")
    if t.count == 0:
        return
    if not (math.isfinite(t.min) and math.isfinite(t.max)):
        raise QuantvizError(f"{where} has {t.count} values but its range [{t.min}, {t.max}] is not finite.")
    if t.min > t.max:
        raise QuantvizError(f"{where} has min {t.min!r} greater than max {t.max!r}.")
    absmax = max(abs(t.min), abs(t.max))
    for label, h in hists:
        lo, hi = _occupied(h)
        if h.signed:
            inside = _edge(h, lo) <= t.min < _edge(h, lo + 1) and _edge(h, hi) <= t.max < _edge(h, hi + 1)
        else:
            inside = _edge(h, hi) <= absmax < _edge(h, hi + 1)
        if not inside:
            span = f"[{_edge(h, lo)!r}, {_edge(h, hi + 1)!r})"
            raise QuantvizError(
                f"{where}: its range [{t.min!r}, {t.max!r}] disagrees with its {label}, whose values lie in {span}."
            )
    r = getattr(t, "batch_ranges", None)
    if r is not None and r.shape[0] and (r[:, 0].min() != t.min or r[:, 1].max() != t.max or (r[:, 0] > r[:, 1]).any()):
        raise QuantvizError(f"{where}: its per-batch ranges disagree with its range [{t.min!r}, {t.max!r}].")


def _occupied(h: Any) -> tuple[int, int]:
    nz = np.flatnonzero(h.counts)
    return int(nz[0]), int(nz[-1])


def _edge(h: Any, i: int) -> float:
    return float(h.edges[i])


def check_stats(stats: Any) -> None:
    """A whole CalibrationStats (after load, and before save): header fields and every tensor."""
    if len(stats.tensors) > TENSORS_MAX:
        raise LimitError(f"The statistics hold {len(stats.tensors)} tensors, beyond quantviz's limit of {TENSORS_MAX}.")
    need_int(stats.samples, "The statistics' sample count", 0)
    for name, t in stats.tensors.items():
        need_str(name, "A tensor name of the statistics")
        if t.name != name:
            raise QuantvizError(f"The statistics file names tensor '{name}' as '{t.name}'.")
        check_tensor_stats(t)


# --- calibration tables ------------------------------------------------------------------------------


def check_entry(name: str, e: Any, where: str) -> None:
    """One table entry: finite range min <= max, threshold >= 0, a positive finite scale, an integer
    zero point; a tensor kept in float may carry no numbers (NaN) but not wrong ones."""
    w = f"{where}: tensor '{name}'"
    if not isinstance(e.method, str):
        raise QuantvizError(f"{w} has the method {_j(e.method)}, not text.")
    values = {"min": e.min, "max": e.max, "threshold": e.threshold, "scale": e.scale}
    for key, v in values.items():
        if not is_number(v):
            raise QuantvizError(f"{w} has the {key} {_j(v)}, not a number.")
    if not is_int(e.zero_point) or not ZERO_POINT_RANGE[0] <= e.zero_point <= ZERO_POINT_RANGE[1]:
        raise QuantvizError(
            f"{w} has the zero point {_j(e.zero_point)}, not an integer in {ZERO_POINT_RANGE[0]}..{ZERO_POINT_RANGE[1]}."
        )
    if e.cosine is not None and (not is_number(e.cosine) or math.isinf(e.cosine)):
        raise QuantvizError(f"{w} has the cosine {_j(e.cosine)}, not a number.")
    # the all-zero treatment (quantviz.table): threshold 0 kept in float, scale 0 since there is none
    all_zero = e.threshold == 0 and e.scale == 0
    if e.float_kept and (all_zero or not all(math.isfinite(v) for v in values.values())):
        # kept in float: a number may be missing (NaN), but those given must still make sense
        for key, v in values.items():
            if math.isinf(v):
                raise QuantvizError(f"{w} has the {key} {v}, not a finite number.")
        if e.scale == e.scale and not all_zero and not SCALE_MIN <= e.scale <= SCALE_MAX:
            raise QuantvizError(f"{w} has the scale {e.scale!r}, not a positive number between {SCALE_MIN:g} and {SCALE_MAX:g}.")
        if e.threshold < 0:
            raise QuantvizError(f"{w} has the negative threshold {e.threshold!r}.")
        return
    for key, v in values.items():
        if not math.isfinite(v):
            raise QuantvizError(f"{w} has the {key} {v}, not a finite number: recalibrate it or keep it in float.")
    if e.min > e.max:
        raise QuantvizError(f"{w} has min {e.min!r} greater than max {e.max!r}.")
    if e.threshold < 0:
        raise QuantvizError(f"{w} has the negative threshold {e.threshold!r}.")
    if not SCALE_MIN <= e.scale <= SCALE_MAX:
        raise QuantvizError(f"{w} has the scale {e.scale!r}, not a positive number between {SCALE_MIN:g} and {SCALE_MAX:g}.")
    if e.threshold > SCALE_MAX * 127:
        raise QuantvizError(f"{w} has the threshold {e.threshold!r}, beyond what a float32 scale can express.")


def check_weight(name: str, w: Any, where: str) -> None:
    if not isinstance(w, dict):
        raise QuantvizError(f"{where}: weight '{name}' must be an object, not {_j(w)}.")
    for key in ("scales", "absmax", "absmax_scales"):
        if key not in w:
            continue
        values = w[key]
        if isinstance(values, np.ndarray):
            values = values.reshape(-1).tolist()
        if not isinstance(values, list | tuple) or not all(is_number(v) for v in values):
            raise QuantvizError(f"{where}: weight '{name}' has {key} that is not a list of numbers.")
        if len(values) > HIST_BINS_MAX * 16:
            raise LimitError(f"{where}: weight '{name}' has {len(values)} {key}, beyond quantviz's limit.")
        if key == "absmax":
            bad = [v for v in values if not (math.isfinite(v) and v >= 0)]
        else:
            bad = [v for v in values if not (math.isfinite(v) and SCALE_MIN <= v <= SCALE_MAX)]
        if bad:
            raise QuantvizError(
                f"{where}: weight '{name}' has the {key[:-1] if key.endswith('s') else key} {bad[0]!r}, not a positive finite number."
            )


def check_table(table: CalibrationTable, where: str = "The table") -> CalibrationTable:
    """A CalibrationTable read from any format or about to be written: every entry and weight scale.
    Returns the table."""
    if len(table.tensors) > TENSORS_MAX:
        raise LimitError(f"{where} holds {len(table.tensors)} tensors, beyond quantviz's limit of {TENSORS_MAX}.")
    for name, e in table.tensors.items():
        if not isinstance(name, str):
            raise QuantvizError(f"{where} has a tensor name {_j(name)} that is not text.")
        check_entry(name, e, where)
    for name, w in table.weights.items():
        check_weight(name, w, where)
    return table


# --- reviews -----------------------------------------------------------------------------------------


def check_override(value: Any, name: str) -> float:
    """A typed threshold: a positive finite number a float32 scale can express."""
    if not is_number(value) or not math.isfinite(float(value)) or float(value) <= 0:
        raise QuantvizError(f"The threshold of '{name}' must be a positive number, not {value}.")
    v = float(value)
    if not SCALE_MIN * 127 <= v <= SCALE_MAX * 127:
        raise QuantvizError(f"The threshold of '{name}' ({v!r}) is beyond what a float32 scale can express.")
    return v
