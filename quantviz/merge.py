"""Statistics of parts of a calibration set merged into the statistics of the whole, exactly.

Parts are statistics of the same model collected with the same settings: files of separate
`collect --range` runs (`quantviz merge`), or the shards of a Ray collection (quantviz.distributed).
Everything merges exactly: counts add, min/max are the min/max of the parts, histograms re-bin by
whole power-of-two bins (quantviz.histogram), and the moving-average min/max continue through the
later part's per-batch (min, max) record with the very operations one stream does
(quantviz.stats.TensorAccumulator.merge). So parts given in sample order merge into the statistics a
single run over all their samples writes, bit for bit: every field of the file.

What is refused, in one sentence naming the file: another model (its sha256), other settings (bins,
fine bins, batch size, moving-average constant, samples), other tensors, and ranges of the same data
that overlap or leave a gap (every sample is counted exactly once, in order).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

from quantviz.errors import QuantvizError
from quantviz.stats import CalibrationStats, TensorStats, _accumulator_from


def span(stats: CalibrationStats) -> tuple[int, int]:
    """The samples start..stop-1 of their data that statistics cover."""
    return stats.data_range if stats.data_range is not None else (0, stats.samples)


def check_mergeable(a: CalibrationStats, b: CalibrationStats, a_label: str, b_label: str) -> None:
    """Raise QuantvizError (one sentence naming both) when b cannot follow a in a merge."""
    if a.model_sha256 != b.model_sha256:
        raise QuantvizError(
            f"{b_label} holds statistics of another model ({b.model_name}, sha256 {b.model_sha256[:12]}...) than "
            f"{a_label} ({a.model_name}, sha256 {a.model_sha256[:12]}...): merge only statistics of the same model."
        )
    for f in dataclasses.fields(a.config):
        va, vb = getattr(a.config, f.name), getattr(b.config, f.name)
        if va != vb:
            raise QuantvizError(
                f"{b_label} was collected with {f.name} {vb} and {a_label} with {va}: "
                "merge only statistics collected with the same settings."
            )
    if list(a.tensors) != list(b.tensors):
        only = next(iter([n for n in b.tensors if n not in a.tensors] + [n for n in a.tensors if n not in b.tensors]), None)
        what = f"tensor '{only}' is in one and not the other" if only is not None else "their tensors come in another order"
        raise QuantvizError(f"{b_label} and {a_label} hold other tensors ({what}): merge only statistics of the same collection.")
    if a.data_id == b.data_id:
        (_, a_stop), (b_start, b_stop) = span(a), span(b)
        if b_start != a_stop:
            how = "overlap" if b_start < a_stop else f"leave samples {a_stop}..{b_start - 1} out"
            raise QuantvizError(
                f"{b_label} covers samples {b_start}..{b_stop - 1} of the same data as {a_label}, which ends at sample "
                f"{a_stop - 1}: the two {how}; give files whose sample ranges follow one another, in order."
            )


def merge_tensor_stats(parts: Sequence[TensorStats], ema_constant: float) -> TensorStats:
    """Statistics of one tensor over parts given in sample order (exact; see the module doc)."""
    acc = _accumulator_from(parts[0], ema_constant)
    for t in parts[1:]:
        acc.merge(_accumulator_from(t, ema_constant))
    return acc.result()


def inexact_moving_average(parts: Sequence[CalibrationStats]) -> list[str]:
    """Tensors whose moving averages merge to rounding only: a later part lost its per-batch record
    (more than quantviz.limits.BATCH_RECORD_MAX batches, or a file written before it was kept)."""
    return [n for n in parts[0].tensors if any(p.tensors[n].batch_ranges is None and p.tensors[n].batches for p in parts[1:])]


def merge_calibration_stats(parts: Sequence[CalibrationStats], labels: Sequence[str] | None = None) -> CalibrationStats:
    """The statistics of parts given in sample order, as one run over all of them would have written.

    labels name the parts in messages (file names; default "part 1", "part 2", ...)."""
    if not parts:
        raise QuantvizError("Nothing to merge: give at least one statistics file.")
    names = list(labels) if labels is not None else [f"part {i + 1}" for i in range(len(parts))]
    for i in range(1, len(parts)):
        check_mergeable(parts[i - 1], parts[i], names[i - 1], names[i])
    first = parts[0]
    if len(parts) == 1:
        return first
    c = first.config.ema_constant
    tensors = {n: merge_tensor_stats([p.tensors[n] for p in parts], c) for n in first.tensors}
    same_data = all(p.data_id == first.data_id for p in parts)
    if same_data:
        description, data_id = first.data_description, first.data_id
        start, stop = span(first)[0], span(parts[-1])[1]
        data_range = None if start == 0 else (start, stop)
    else:  # parts of different data sets: the merged data is their concatenation, in order
        description = " + ".join(dict.fromkeys(p.data_description for p in parts))
        data_id = hashlib.sha256("+".join(p.data_id for p in parts).encode()).hexdigest()
        data_range = None
    return CalibrationStats(
        model_name=first.model_name,
        model_sha256=first.model_sha256,
        data_description=description,
        data_id=data_id,
        synthetic=any(p.synthetic for p in parts),
        samples=sum(p.samples for p in parts),
        config=first.config,
        tensors=tensors,
        infos=first.infos,
        data_range=data_range,
    )
