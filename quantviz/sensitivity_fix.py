"""Which method fixes the part that makes a layer sensitive (the error decomposition, ErrorParts).

The input part's error depends only on the scales of the layer's input activations, the output
part's only on its output's scale; so for each candidate method, the review with that method on those
tensors (and every other choice kept) gives the part's error with that method. Each candidate costs
one QDQ build and one pass of the layer's pruned isolated model (quantviz.sensitivity_plan with
only_layers and parts) over the samples. The weights part does not depend on any activation method:
its fixes are per-channel weight scales, EQ's weight search, or keeping the layer in float (the page
offers them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from quantviz.calib import METHOD_LABELS
from quantviz.collect import effective_batch_size
from quantviz.config import DEFAULT_BATCH_SIZE
from quantviz.data import CalibrationSource, Cancel, batch_loop
from quantviz.errors import QuantvizError
from quantviz.metrics import ErrorAccumulator, ErrorFigures
from quantviz.model import LoadedModel
from quantviz.progress import Report, Step
from quantviz.review import Review, build_table
from quantviz.sensitivity import BEST_CANDIDATES, _run, _session
from quantviz.sensitivity_plan import PARTS, LayerSpec, plan
from quantviz.stats import CalibrationStats
from quantviz.table import CalibrationTable, apply_model


@dataclass(frozen=True)
class PartFix:
    """One part of one layer with each candidate method on the tensors it depends on.

    tensors: the tensors whose method was changed (a fused output: the activation it shares its scale
    with); current: the part's error with the review as it is; by_method: method -> the part's error."""

    layer: str
    part: str
    tensors: tuple[str, ...]
    current: ErrorFigures
    by_method: dict[str, ErrorFigures]

    @property
    def best(self) -> str | None:
        """The method with the highest cosine (ties: the earlier candidate)."""
        best, best_c = None, -math.inf
        for m, f in self.by_method.items():
            if not math.isnan(f.cosine) and f.cosine > best_c + 1e-12:
                best, best_c = m, f.cosine
        return best


def _table(model: LoadedModel, stats: CalibrationStats, review: Review, per_channel: bool) -> CalibrationTable:
    return apply_model(build_table(stats, review), model, per_channel, weight_overrides=review.weight_scales, weight_method="eq")


def _part_error(
    model: LoadedModel, table: CalibrationTable, layer: str, part: str, source: CalibrationSource, total: int,
    per_channel: bool, progress: Step | None, steps: Report | None, cancel: Cancel | None,
) -> tuple[LayerSpec, ErrorFigures]:  # fmt: skip
    p = plan(model, table, per_channel=per_channel, only_layers=[layer], parts=True)
    if not p.layers:
        raise QuantvizError(f"'{layer}' is not a quantized layer of this model (see the analysis table for their names).")
    spec = p.layers[0]
    k = PARTS.index(part)
    tensor = spec.part_tensors[k]
    if not tensor:
        raise QuantvizError(f"Layer '{layer}' quantizes no {part}: there is nothing to fix there.")
    sess = _session(p.isolated)
    acc = ErrorAccumulator()

    def cb(done: int, _total: int) -> None:
        if steps is not None and progress is not None:
            steps(Step(progress.phase, progress.done + done, progress.total, progress.unit))

    for done, batch, _ in batch_loop(source, effective_batch_size(model, DEFAULT_BATCH_SIZE, source), total, "The search", cb, cancel):
        f = _run(sess, [spec.output_tensor, tensor], batch, done)
        acc.update(spec.as_engine(f[spec.output_tensor]), spec.as_engine(f[tensor]))
    return spec, acc.result()


def fix_candidates(
    model: LoadedModel,
    stats: CalibrationStats,
    review: Review,
    layer: str,
    part: str,
    source: CalibrationSource,
    methods: Sequence[str] = BEST_CANDIDATES,
    *,
    samples: int | None = None,
    per_channel: bool = True,
    steps: Report | None = None,
    cancel: Cancel | None = None,
) -> PartFix:
    """The error of one part ("input" or "output") of one layer with the review as it is and with each
    candidate method on the tensors that part depends on (module doc). steps: "<part> of <layer> with
    <method> (i of n)" in samples over all the passes; cancel: asked before each batch (CancelledError,
    nothing returned)."""
    if part not in ("input", "output"):
        raise QuantvizError(f"Only the input and output parts depend on a method, not '{part}'.")
    methods = list(dict.fromkeys(methods))
    total = source.num_samples if samples is None else min(samples, source.num_samples)
    grand = (len(methods) + 1) * total
    now = _table(model, stats, review, per_channel)
    spec, current = _part_error(model, now, layer, part, source, total, per_channel, Step(f"{part} of {layer} as it is (1 of {len(methods) + 1})", 0, grand, "samples"), steps, cancel)
    names = spec.quantized_inputs if part == "input" else (spec.output_tensor,)
    tensors = tuple(dict.fromkeys((now.tensors[n].scale_from or n) if n in now.tensors else n for n in names))
    by_method: dict[str, ErrorFigures] = {}
    for i, m in enumerate(methods, start=1):
        r = review
        for t in tensors:
            r = r.with_choice(t, method=None if m == review.default_method else m, override=None)
        table = _table(model, stats, r, per_channel)
        label = METHOD_LABELS.get(m, m)
        step = Step(f"{part} of {layer} with {label} ({i + 1} of {len(methods) + 1})", i * total, grand, "samples")
        by_method[m] = _part_error(model, table, layer, part, source, total, per_channel, step, steps, cancel)[1]
    return PartFix(layer, part, tensors, current, by_method)
