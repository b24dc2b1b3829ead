"""Per-tensor statistics: the streaming accumulator, its frozen result, and the versioned stats file.

A statistics file (.npz, loaded with allow_pickle=False) holds everything the calibration methods
and the plots need, so a reviewer can open it without the model or the data.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from quantviz.config import DEFAULT_BINS, DEFAULT_EMA_CONSTANT, STATS_FORMAT, STATS_VERSION, CollectConfig
from quantviz.errors import QuantvizError
from quantviz.histogram import (
    MIN_EXPONENT,
    Histogram,
    HistogramAccumulator,
    coarsened,
    edges_for,
    fine_bins_for,
    merge,
    update_pair,
    update_pair_within,
)
from quantviz.limits import BATCH_RECORD_MAX, STATS_ARRAY_BYTES, STATS_TOTAL_BYTES
from quantviz.model import TensorInfo
from quantviz.safeio import load_json, read_npz, write_bytes
from quantviz.schema import check_stats, check_stats_file, check_tensor_stats


@dataclass(frozen=True)
class TensorStats:
    """What one streaming pass learnt about one tensor.

    count: finite elements seen; nan_count / posinf_count / neginf_count are kept out of every range.
    min, max: over finite values (NaN when the tensor was empty or never finite).
    ema_min, ema_max: moving averages of per-batch min/max, x <- (1 - c) x + c * batch_min, the first
    batch initialising (onnxruntime's MinMax calibrator with moving_average=True).
    abs_hist: histogram of |x|; signed_hist: histogram of x (see quantviz.histogram).
    fine_hist: the finer histogram of |x| that abs_hist is coarsened from and KL re-bins to its own
    grid (None in statistics files of version 1).
    shape: the shape the tensor had in the runs, each dimension the largest seen (the first is the
    samples of one onnxruntime run when the model batches); None when not recorded (older files).
    batch_ranges: each batch's (min, max), in order, shape (batches, 2): what makes the moving
    averages of merged statistics exact (see TensorAccumulator.merge). None when the tensor saw more
    than quantviz.limits.BATCH_RECORD_MAX batches, and in files written before it was kept.
    """

    name: str
    count: int
    nan_count: int
    posinf_count: int
    neginf_count: int
    zero_count: int
    min: float
    max: float
    ema_min: float
    ema_max: float
    batches: int
    abs_hist: Histogram
    signed_hist: Histogram
    first_batch_min: float = math.nan
    first_batch_max: float = math.nan
    fine_hist: Histogram | None = None
    shape: tuple[int, ...] | None = None
    batch_ranges: npt.NDArray[np.float64] | None = None

    @property
    def absmax(self) -> float:
        return max(abs(self.min), abs(self.max)) if self.count else math.nan

    @property
    def empty(self) -> bool:
        return self.count == 0

    @property
    def nonfinite(self) -> int:
        return self.nan_count + self.posinf_count + self.neginf_count

    @property
    def constant(self) -> bool:
        return self.count > 0 and self.min == self.max


class TensorAccumulator:
    """Streaming statistics of one tensor: update(batch), merge(other), result()."""

    def __init__(
        self, name: str, bins: int = DEFAULT_BINS, ema_constant: float = DEFAULT_EMA_CONSTANT, fine_bins: int | None = None
    ) -> None:
        """fine_bins: bins of the |x| histogram kept (rounded up to bins times a power of two; None:
        bins); the |x| histogram of `bins` bins is coarsened from it exactly (see quantviz.histogram)."""
        if not 0 < ema_constant <= 1:
            raise QuantvizError(f"The moving-average constant must be in (0, 1], not {ema_constant}.")
        self.name = name
        self.c = ema_constant
        self.count = 0
        self.nan = 0
        self.posinf = 0
        self.neginf = 0
        self.zeros = 0
        self.min = math.inf
        self.max = -math.inf
        self.ema_min = math.nan
        self.ema_max = math.nan
        self.first_min = math.nan
        self.first_max = math.nan
        self.batches = 0
        self.bins = bins
        fine = fine_bins_for(bins, fine_bins or bins)
        self.abs_hist = HistogramAccumulator(fine, signed=False, min_exponent=MIN_EXPONENT - (fine // bins).bit_length() + 1)
        self.signed_hist = HistogramAccumulator(bins, signed=True)
        # The batch being added (update(..., same_batch=True) extends it): its min/max so far and the
        # moving averages before it, so that a batch given in parts averages exactly as a whole.
        self._open = False
        self._batch_min = math.inf
        self._batch_max = -math.inf
        self._ema_min_before = math.nan
        self._ema_max_before = math.nan
        self.shape: tuple[int, ...] | None = None
        # Each batch's (min, max) in order (rows 0..batches-1 used; grown by doubling), None once
        # more than BATCH_RECORD_MAX batches were seen.
        self._record: npt.NDArray[np.float64] | None = np.empty((0, 2), np.float64)

    def update(self, batch: npt.NDArray[np.floating], same_batch: bool = False) -> None:
        """Add one batch of values (any shape). same_batch=True: more values of the batch given to the
        previous call (collection splits a batch over several onnxruntime runs to bound memory); the
        moving averages and the batch count then come out exactly as from one call with all of it."""
        if not same_batch:
            self._open = False
        arr = np.asarray(batch)
        self.shape = seen_shape(self.shape, arr.shape)
        x = arr.reshape(-1)
        if x.dtype == np.float16:
            x = x.astype(np.float32)
        if x.size == 0:
            return
        # Once a range has been seen, the leading values on the current grid are counted in one
        # compiled pass that finds their min and max as it goes (update_pair_within); the rest (all of
        # it on the first batch, or from the first block beyond the grid) takes the numpy reductions
        # and update_pair, which widens the grid first. Same statistics either way, bit for bit.
        fast = update_pair_within(self.abs_hist, self.signed_hist, x) if self.count else None
        counted, zeros, lo, hi = fast if fast is not None else (0, 0, math.inf, -math.inf)
        rest = x[counted:]
        rlo, rhi = math.inf, -math.inf
        if rest.size:
            rlo = float(rest.min())  # NaN propagates through min/max and an Inf shows in them: when both
            rhi = float(rest.max())  # are finite, every value is, and the isfinite pass is skipped
            if not (math.isfinite(rlo) and math.isfinite(rhi)):
                finite = np.isfinite(rest)
                bad = rest[~finite]
                self.nan += int(np.isnan(bad).sum())
                self.posinf += int((bad == np.inf).sum())
                self.neginf += int((bad == -np.inf).sum())
                rest = rest[finite]
                rlo, rhi = (float(rest.min()), float(rest.max())) if rest.size else (math.inf, -math.inf)
            lo, hi = min(lo, rlo), max(hi, rhi)
        if counted + rest.size == 0:
            return
        self.count += counted + int(rest.size)
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)
        if self._open:  # the rest of the current batch
            self._batch_min = min(self._batch_min, lo)
            self._batch_max = max(self._batch_max, hi)
        else:
            self._open = True
            self._batch_min, self._batch_max = lo, hi
            self._ema_min_before, self._ema_max_before = self.ema_min, self.ema_max
            self.batches += 1
        bmin, bmax = self._batch_min, self._batch_max
        self._note_batch(bmin, bmax)
        if self.batches == 1:
            self.ema_min, self.ema_max = bmin, bmax
            self.first_min, self.first_max = bmin, bmax
        else:
            self.ema_min = (1 - self.c) * self._ema_min_before + self.c * bmin
            self.ema_max = (1 - self.c) * self._ema_max_before + self.c * bmax
        if rest.size:
            absmax = max(abs(lo), abs(hi))
            rest_zeros = update_pair(self.abs_hist, self.signed_hist, rest, absmax, nonnegative=rlo >= 0)
            if rest_zeros is None:  # not found by the histogram pass; -0.0 counts, as in x == 0
                rest_zeros = int(np.count_nonzero(rest == 0)) if rlo <= 0 <= rhi else 0
            zeros += rest_zeros
        self.zeros += zeros

    def _note_batch(self, bmin: float, bmax: float) -> None:
        """The current batch's (min, max) into the record: a new row, or the open batch's row updated."""
        rec = self._record
        if rec is None:
            return
        if self.batches > BATCH_RECORD_MAX:
            self._record = None
            return
        if self.batches > rec.shape[0]:
            grown = np.empty((min(BATCH_RECORD_MAX, max(8, 2 * rec.shape[0])), 2), np.float64)
            grown[: rec.shape[0]] = rec
            self._record = rec = grown
        rec[self.batches - 1] = (bmin, bmax)

    @property
    def batch_ranges(self) -> npt.NDArray[np.float64] | None:
        """Each batch's (min, max) so far, in order (a copy), or None once the record was dropped."""
        return None if self._record is None else self._record[: self.batches].copy()

    def merge(self, other: TensorAccumulator) -> None:
        """Fold in the statistics of a LATER shard (the moving average continues as if streamed).

        With other's per-batch record the moving averages are recomputed batch by batch with the very
        operations update() does, so the result equals one stream's bit for bit. Without it (a shard of
        more than BATCH_RECORD_MAX batches) other's average is re-based onto ours,
        ema = (1-c)^n * ours + other_ema - (1-c)^n * other_first (n = other's batches), equal to rounding.
        """
        theirs = other.batch_ranges
        if other.batches:
            if self.batches == 0:
                self.ema_min, self.ema_max = other.ema_min, other.ema_max
                self.first_min, self.first_max = other.first_min, other.first_max
            elif theirs is not None:
                lo, hi, c = self.ema_min, self.ema_max, self.c
                for bmin, bmax in theirs.tolist():
                    lo = (1 - c) * lo + c * bmin
                    hi = (1 - c) * hi + c * bmax
                self.ema_min, self.ema_max = lo, hi
            else:
                k = (1 - self.c) ** other.batches
                self.ema_min = k * self.ema_min + other.ema_min - k * other.first_min
                self.ema_max = k * self.ema_max + other.ema_max - k * other.first_max
        mine = self.batch_ranges
        total = self.batches + other.batches
        self._record = (
            np.concatenate([mine, theirs]) if mine is not None and theirs is not None and total <= BATCH_RECORD_MAX else None
        )
        self.count += other.count
        self.nan += other.nan
        self.posinf += other.posinf
        self.neginf += other.neginf
        self.zeros += other.zeros
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.batches += other.batches
        if other.shape is not None:
            self.shape = seen_shape(self.shape, other.shape)
        self._open = False  # a later update starts a new batch
        self.abs_hist.merge(other.abs_hist)
        self.signed_hist.merge(other.signed_hist)

    def result(self) -> TensorStats:
        empty = self.count == 0
        fine = self.abs_hist.result()
        return TensorStats(
            name=self.name,
            count=self.count,
            nan_count=self.nan,
            posinf_count=self.posinf,
            neginf_count=self.neginf,
            zero_count=self.zeros,
            min=math.nan if empty else self.min,
            max=math.nan if empty else self.max,
            ema_min=self.ema_min,
            ema_max=self.ema_max,
            batches=self.batches,
            abs_hist=coarsened(fine, self.bins),
            signed_hist=self.signed_hist.result(),
            first_batch_min=self.first_min,
            first_batch_max=self.first_max,
            fine_hist=fine,
            shape=self.shape,
            batch_ranges=self.batch_ranges,
        )


def seen_shape(before: tuple[int, ...] | None, now: tuple[int, ...]) -> tuple[int, ...]:
    """The shape recorded after one more run: each dimension the largest seen; a run of another rank
    (a model whose output rank varies) replaces it."""
    if before == now:  # every run of the same shape: nothing to build
        return before
    now = tuple(int(d) for d in now)
    if before is None or len(before) != len(now):
        return now
    return tuple(max(a, b) for a, b in zip(before, now, strict=True))


@dataclass(frozen=True)
class CalibrationStats:
    """Everything one collection produced: per-tensor statistics plus where they came from."""

    model_name: str
    model_sha256: str
    data_description: str
    data_id: str
    synthetic: bool
    samples: int
    config: CollectConfig
    tensors: dict[str, TensorStats]
    infos: dict[str, TensorInfo] = field(default_factory=dict)
    # The samples start..stop-1 of the data these statistics cover, when they are not its first ones
    # (a shard: `collect --range`, quantviz.shards); None: the first `samples` samples.
    data_range: tuple[int, int] | None = None

    def tensor(self, name: str) -> TensorStats:
        try:
            return self.tensors[name]
        except KeyError:
            raise QuantvizError(f"These statistics have no tensor named '{name}'.") from None

    @property
    def nonfinite_tensors(self) -> list[str]:
        return [n for n, t in self.tensors.items() if t.nonfinite]

    @property
    def empty_tensors(self) -> list[str]:
        return [n for n, t in self.tensors.items() if t.empty]


_SCALARS = (
    "count", "nan_count", "posinf_count", "neginf_count", "zero_count", "min", "max",
    "ema_min", "ema_max", "batches", "first_batch_min", "first_batch_max",
)  # fmt: skip
_INT_SCALARS = ("count", "nan_count", "posinf_count", "neginf_count", "zero_count", "batches")


STATS_MEMBERS = frozenset(
    {"header", "scalars", "abs_counts", "abs_width", "signed_counts", "signed_width", "fine_counts", "fine_width",
     "batch_ranges", "batch_record_len"}
)  # fmt: skip


def stats_arrays(stats: CalibrationStats) -> dict[str, np.ndarray]:
    """The arrays of a statistics file (plain arrays and a JSON header; no pickles), checked first
    against quantviz.schema so that what is written reads back."""
    check_stats(stats)
    names = list(stats.tensors)
    header: dict[str, Any] = {
        "format": STATS_FORMAT,
        "version": STATS_VERSION,
        "model": {"name": stats.model_name, "sha256": stats.model_sha256},
        "data": {"description": stats.data_description, "id": stats.data_id, "synthetic": stats.synthetic},
        "samples": stats.samples,
        "config": asdict(stats.config),
        "tensors": names,
        "infos": {n: asdict(i) for n, i in stats.infos.items()},
        # observed shapes: an optional key, so older readers and older files keep working
        "shapes": {n: list(t.shape) for n, t in stats.tensors.items() if t.shape is not None},
    }
    if stats.data_range is not None:
        header["data"]["range"] = list(stats.data_range)
    arrays: dict[str, np.ndarray] = {"header": np.array(json.dumps(header))}
    if names:
        ts = [stats.tensors[n] for n in names]
        arrays["scalars"] = np.array([[float(getattr(t, k)) for k in _SCALARS] for t in ts], dtype=np.float64)
        arrays["abs_counts"] = np.stack([t.abs_hist.counts for t in ts])
        arrays["abs_width"] = np.array([t.abs_hist.width for t in ts])
        arrays["signed_counts"] = np.stack([t.signed_hist.counts for t in ts])
        arrays["signed_width"] = np.array([t.signed_hist.width for t in ts])
        if all(t.fine_hist is not None for t in ts):  # version 2: the fine |x| histograms
            arrays["fine_counts"] = np.stack([t.fine_hist.counts for t in ts if t.fine_hist is not None])
            arrays["fine_width"] = np.array([t.fine_hist.width for t in ts if t.fine_hist is not None])
        # Each tensor's per-batch (min, max) rows, one after the other; -1: no record for that tensor.
        records = [t.batch_ranges for t in ts]
        arrays["batch_record_len"] = np.array([-1 if r is None else r.shape[0] for r in records], dtype=np.int64)
        arrays["batch_ranges"] = np.concatenate([np.zeros((0, 2))] + [r for r in records if r is not None]).astype(np.float64)
    return arrays


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def save_stats(stats: CalibrationStats, target: str | Path | BinaryIO) -> None:
    """Write one versioned .npz. A path is written exactly as given (numpy would add '.npz')."""
    data = npz_bytes(stats_arrays(stats))
    if isinstance(target, str | Path):
        write_bytes(target, data, "statistics file")
    else:
        target.write(data)


def read_stats_arrays(source: str | Path | bytes | BinaryIO, extra: frozenset[str] = frozenset()) -> dict[str, np.ndarray]:
    """The arrays of a statistics (or review) file, read within quantviz.limits (quantviz.safeio)."""
    src = str(source) if isinstance(source, Path) else source
    keep = STATS_MEMBERS | extra
    return read_npz(
        src, "This statistics file", array_bytes=STATS_ARRAY_BYTES, total_bytes=STATS_TOTAL_BYTES,
        only=keep.__contains__, kind="quantviz statistics file (.npz)",
    )  # fmt: skip


def json_member(arrays: dict[str, np.ndarray], key: str, what: str) -> Any:
    """A JSON document stored as a 0-d text array (the header, a review)."""
    a = arrays[key]
    if a.ndim != 0 or a.dtype.kind != "U":
        raise QuantvizError(f"{what} is not a quantviz statistics file: its '{key}' is not one text value.")
    return load_json(str(a), f"The {key} of {what[0].lower() + what[1:]}")


def load_stats(source: str | Path | bytes | BinaryIO) -> CalibrationStats:
    """Read a statistics file written by save_stats; a clear QuantvizError for anything else.

    Everything is checked (quantviz.schema) before a method can run on it."""
    return stats_from_arrays(read_stats_arrays(source))


def stats_from_arrays(data: dict[str, np.ndarray]) -> CalibrationStats:
    if "header" not in data:
        raise QuantvizError("This file is not a quantviz statistics file (it has no quantviz header).")
    header = json_member(data, "header", "This statistics file")
    checked = check_stats_file(header, data, STATS_VERSION, STATS_FORMAT)
    names: list[str] = checked["names"]
    tensors: dict[str, TensorStats] = {}
    if names:
        scalars = data["scalars"].astype(np.float64)
        integer = np.array([k in _INT_SCALARS for k in _SCALARS])
        ints = scalars[:, integer]
        bad = ~(np.isfinite(ints) & (ints >= 0) & (ints == np.floor(ints)) & (ints < 2.0**62))
        if bad.any():
            i = int(np.flatnonzero(bad.any(axis=1))[0])
            raise QuantvizError(f"This statistics file is damaged: tensor '{names[i]}' has a count that is not a whole number >= 0.")
        abs_e = np.frexp(data["abs_width"].astype(np.float64))[1] - 1
        signed_e = np.frexp(data["signed_width"].astype(np.float64))[1] - 1
        fine = "fine_counts" in data
        fine_e = np.frexp(data["fine_width"].astype(np.float64))[1] - 1 if fine else None
        shapes: dict[str, list[int]] = checked["shapes"]
        record_len = data["batch_record_len"].astype(np.int64) if "batch_record_len" in data else None
        record_at = np.concatenate(([0], np.cumsum(np.maximum(record_len, 0)))) if record_len is not None else None
        for i, name in enumerate(names):
            vals: dict[str, Any] = dict(zip(_SCALARS, scalars[i].tolist(), strict=True))
            for k in _INT_SCALARS:
                vals[k] = int(vals[k])
            ac = data["abs_counts"][i].astype(np.int64)
            sc_counts = data["signed_counts"][i].astype(np.int64)
            fine_hist = None
            if fine_e is not None:
                fc = data["fine_counts"][i].astype(np.int64)
                fine_hist = Histogram(fc, edges_for(int(fine_e[i]), fc.size, signed=False))
            ranges = None
            if record_len is not None and record_at is not None and record_len[i] >= 0:
                ranges = data["batch_ranges"][record_at[i] : record_at[i + 1]].astype(np.float64)
            t = TensorStats(
                name=name,
                batch_ranges=ranges,
                abs_hist=Histogram(ac, edges_for(int(abs_e[i]), ac.size, signed=False)),
                signed_hist=Histogram(sc_counts, edges_for(int(signed_e[i]), sc_counts.size, signed=True)),
                fine_hist=fine_hist,
                shape=tuple(shapes[name]) if name in shapes else None,
                **vals,
            )
            check_tensor_stats(t)
            tensors[name] = t
    infos = {
        n: TensorInfo(**{**d, "shape": tuple(d["shape"]), "consumers": tuple(d.get("consumers", ()))})
        for n, d in header.get("infos", {}).items()
    }
    return CalibrationStats(
        model_name=header["model"]["name"],
        model_sha256=header["model"]["sha256"],
        data_description=header["data"]["description"],
        data_id=header["data"]["id"],
        synthetic=bool(header["data"]["synthetic"]),
        samples=int(header["samples"]),
        config=checked["config"],
        tensors=tensors,
        infos=infos,
        data_range=checked["range"],
    )


def merge_stats(a: TensorStats, b: TensorStats, ema_constant: float = DEFAULT_EMA_CONSTANT) -> TensorStats:
    """Statistics of a then b (exact for counts, ranges and histograms). Pure function.

    ema_constant: the c both were collected with (CollectConfig.ema_constant); the moving average
    continues through b's batches with it.
    """
    if a.name != b.name:
        raise QuantvizError(f"Cannot merge statistics of different tensors ('{a.name}' and '{b.name}').")
    acc = _accumulator_from(a, ema_constant)
    acc.merge(_accumulator_from(b, ema_constant))
    return acc.result()


def _accumulator_from(t: TensorStats, ema_constant: float = DEFAULT_EMA_CONSTANT) -> TensorAccumulator:
    fine = t.fine_hist if t.fine_hist is not None else t.abs_hist
    acc = TensorAccumulator(t.name, t.abs_hist.bins, ema_constant, fine.bins)
    acc.count, acc.nan, acc.posinf, acc.neginf, acc.zeros = t.count, t.nan_count, t.posinf_count, t.neginf_count, t.zero_count
    acc.min = t.min if t.count else math.inf
    acc.max = t.max if t.count else -math.inf
    acc.ema_min, acc.ema_max, acc.batches = t.ema_min, t.ema_max, t.batches
    acc.first_min, acc.first_max = t.first_batch_min, t.first_batch_max
    acc.shape = t.shape
    acc._record = None if t.batch_ranges is None else np.array(t.batch_ranges, np.float64).reshape(-1, 2)  # noqa: SLF001
    for hist, target in ((fine, acc.abs_hist), (t.signed_hist, acc.signed_hist)):
        merged = merge(hist, target.result())
        target._counts = merged.counts  # noqa: SLF001 - rebuilding an accumulator from its own result
        target._exponent = int(np.frexp(merged.width)[1]) - 1  # noqa: SLF001
    return acc
