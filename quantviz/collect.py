"""One streaming pass: calibration batches through onnxruntime, per-tensor accumulators updated.

Memory holds the model, one batch of inputs, the activations of one onnxruntime run and the
accumulators (2 histograms per tensor). Nothing grows with the size of the set: onnxruntime's
HistogramCalibrater, by contrast, keeps every activation of every sample until the end.

A run is at most one batch, and fewer samples when a batch's activations would exceed RUN_BYTES
(models with a dynamic batch dimension only): one sample is run first to measure them, and not
counted, so every batch then runs in the same equal parts wherever a collection starts (a shard's
statistics, shapes included, equal those of the same batches in one process). The parts of a batch update the accumulators as one batch (TensorAccumulator.update(same_batch=True)),
so the statistics are those of whole batches, bit for bit, for any model that computes each sample
on its own (all usual ones; a tensor that mixes samples, e.g. a mean over the batch axis, would see
the smaller runs).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import numpy as np
import onnxruntime as ort

from quantviz.config import CollectConfig
from quantviz.data import BATCHED, CalibrationSource, Cancel, Progress, batch_loop
from quantviz.errors import QuantvizError
from quantviz.model import LoadedModel, batch_dim, session_with_outputs
from quantviz.stats import CalibrationStats, TensorAccumulator

log = logging.getLogger(__name__)


# Activations one onnxruntime run may return (every fetched tensor) before a batch is split into
# several runs. Measured at batch 8, 64 samples: digits_resnet (12.4 MB a sample) runs 4 + 4, peak
# RSS 245 -> 185 MB, same time; a 357-tensor model with 52 MB a sample (bench/make_wide_model.py)
# runs one sample at a time: 601 -> 232 MB, collection 3.9 -> 5.0 s.
RUN_BYTES = 64 * 2**20
# Threads adding one run's tensors to their accumulators (see collect): onnxruntime is idle while
# they run, so on an idle machine the updates use every core it used (bench/README.md measures it).
UPDATE_THREADS = max(1, min(4, os.cpu_count() or 1))
# The fine |x| histogram: 8 bytes a bin and tensor (2**18 bins: 2 MB per tensor).
MAX_FINE_BINS = 1 << 18


def fixed_batch_size(model: LoadedModel, source: CalibrationSource | None = None) -> int | None:
    """The batch dimension the model's batched inputs fix (e.g. 1), or None when it is dynamic.

    -1 and 0 are dynamic (quantviz.model.batch_dim); inputs the source holds per sample or as a constant
    have no batch axis and fix nothing.
    """
    fixed = {
        d
        for spec in model.inputs
        if (source is None or source.layout.get(spec.name, BATCHED) == BATCHED) and (d := batch_dim(spec)) is not None
    }
    return int(fixed.pop()) if len(fixed) == 1 else None


def effective_batch_size(model: LoadedModel, requested: int, source: CalibrationSource | None = None) -> int:
    """Samples per batch: the requested size, unless the model fixes its batch dimension (e.g. 1), or the
    source holds an input per sample (a state without a batch axis: one sample a run)."""
    if source is not None and source.one_sample_per_run:
        return 1
    fixed = fixed_batch_size(model, source)
    return requested if fixed is None else fixed


def validate_config(config: CollectConfig) -> None:
    if config.bins < 16 or config.bins % 2 or config.bins > 1 << 16:
        raise QuantvizError(f"bins must be an even number between 16 and 65536, not {config.bins}.")
    if config.fine_bins < 0 or config.fine_bins > MAX_FINE_BINS:
        raise QuantvizError(f"fine_bins must be between 0 (none) and {MAX_FINE_BINS}, not {config.fine_bins}.")
    if config.batch_size < 1:
        raise QuantvizError(f"The batch size must be at least 1, not {config.batch_size}.")
    if config.samples is not None and config.samples < 1:
        raise QuantvizError(f"The number of samples must be at least 1, not {config.samples}.")


def update_all(work: list[tuple[TensorAccumulator, np.ndarray]], same_batch: bool, pool: ThreadPoolExecutor | None) -> None:
    """acc.update(values, same_batch) for every pair, spread over the pool's threads: the pairs are
    dealt largest first to the thread with the fewest values so far, each thread adds its share in
    order. Exceptions are raised here, after every thread has stopped."""
    if pool is None or UPDATE_THREADS < 2 or len(work) < 2:
        for acc, values in work:
            acc.update(values, same_batch=same_batch)
        return
    shares: list[list[tuple[TensorAccumulator, np.ndarray]]] = [[] for _ in range(UPDATE_THREADS)]
    loads = [0] * UPDATE_THREADS
    for acc, values in sorted(work, key=lambda p: -p[1].size):
        k = loads.index(min(loads))
        shares[k].append((acc, values))
        loads[k] += values.size

    def add(share: list[tuple[TensorAccumulator, np.ndarray]]) -> None:
        for acc, values in share:
            acc.update(values, same_batch=same_batch)

    futures = [pool.submit(add, share) for share in shares if share]
    wait(futures)
    for f in futures:
        f.result()


def samples_and_batch(model: LoadedModel, source: CalibrationSource, config: CollectConfig) -> tuple[int, int]:
    """How many samples a collection runs and in batches of how many (collect; the Ray collection plans
    its shards from the same figures)."""
    total = source.num_samples if config.samples is None else min(config.samples, source.num_samples)
    batch_size = effective_batch_size(model, config.batch_size, source)
    if source.first % batch_size:
        raise QuantvizError(
            f"A sample range must start at a multiple of the batch size ({batch_size}), not at {source.first}: "
            "then its batches are those of one run over all the samples, and merged statistics equal that run's."
        )
    if fixed_batch_size(model, source) is not None and total % batch_size:
        # A fixed batch dimension (other than 1) cannot run a shorter last batch.
        usable = total - total % batch_size
        if usable == 0:
            raise QuantvizError(
                f"The model's batch dimension is fixed at {batch_size}, but only {total} samples were given: "
                f"give at least {batch_size} samples, or export the model with a dynamic batch dimension."
            )
        log.warning("The model's batch dimension is fixed at %d: the last %d of %d samples are left out.", batch_size, total - usable, total)
        total = usable
    return total, batch_size


def _run(session: ort.InferenceSession, fetched: list[str], feed: dict[str, np.ndarray], first: int, last: int) -> list[Any]:
    """One onnxruntime run; its failure in one sentence naming the samples."""
    try:
        return list(session.run(fetched, feed))
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QuantvizError(f"onnxruntime could not run the model on samples {first}..{last}: {line}") from exc


def collect(
    model: LoadedModel,
    source: CalibrationSource,
    config: CollectConfig | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    tensors: list[str] | None = None,
    session: ort.InferenceSession | None = None,
) -> CalibrationStats:
    """Gather min/max, moving averages, NaN/Inf counts and two histograms for every float tensor.

    session: a session_with_outputs(model, tensors) made before (a Ray worker keeps one for all its
    shards: for a 400-tensor model it takes seconds to make)."""
    config = config or CollectConfig()
    validate_config(config)
    names = tensors if tensors is not None else model.tensor_names
    session = session or session_with_outputs(model, names)
    fetched = [o.name for o in session.get_outputs()]
    input_names = [i.name for i in model.inputs]
    accs = {n: TensorAccumulator(n, config.bins, config.ema_constant, config.fine_bins) for n in names}
    total, batch_size = samples_and_batch(model, source, config)
    splittable = fixed_batch_size(model, source) is None and not source.one_sample_per_run
    unbatched = {k for k, v in source.layout.items() if v != BATCHED}  # never sliced
    run = batch_size  # samples per onnxruntime run; a splittable model's is measured on one sample first
    measured = not splittable
    ran = 0
    # Each run's tensors are added on UPDATE_THREADS threads (the compiled histogram loop and numpy's
    # reductions release the GIL); onnxruntime is idle meanwhile, so its cores are free. Every
    # accumulator is updated by one thread per run, runs one after the other: the result is the same.
    with ThreadPoolExecutor(UPDATE_THREADS) as pool:
        for done, batch, n in batch_loop(source, batch_size, total, "Collection", progress, cancel):
            if not measured:
                probe = {k: v if k in unbatched else v[:1] for k, v in batch.items()}
                per_sample = sum(np.asarray(v).nbytes for v in _run(session, fetched, probe, done, done))
                most = max(1, min(batch_size, int(RUN_BYTES // max(per_sample, 1.0))))
                run = -(-batch_size // -(-batch_size // most))  # batches in equal runs: 8 -> 4 + 4, not 5 + 3
                measured = True
            start = 0
            while start < n:
                stop = min(n, start + run)
                part = batch if stop - start == n else {k: v if k in unbatched else v[start:stop] for k, v in batch.items()}
                outputs = _run(session, fetched, part, done + start, done + stop - 1)
                work = [(accs[name], part[name]) for name in input_names if name in accs]
                work += [(accs[name], np.asarray(v)) for name, v in zip(fetched, outputs, strict=True) if name in accs]
                update_all(work, start > 0, pool)
                del outputs, work
                start = stop
            ran = done + n
    if ran == 0:
        raise QuantvizError(
            f"No sample ran through the model ({total} samples were asked for, batch size {batch_size}): statistics of nothing "
            "cannot calibrate; check the data and --samples."
        )
    # Results built while the accumulators are let go: the peak holds one set of histograms, not two.
    stats = {n: accs.pop(n).result() for n in list(accs)}
    infos = {t.name: t for t in model.tensors if t.name in stats}
    for tname, s in stats.items():
        if s.nonfinite:
            log.warning("Tensor %s had %d NaN and %d Inf values (kept out of its range).", tname, s.nan_count, s.posinf_count + s.neginf_count)
    return CalibrationStats(
        model_name=model.name,
        model_sha256=model.sha256,
        data_description=source.description,
        data_id=source.data_id,
        synthetic=source.synthetic,
        samples=ran,
        config=config,
        tensors=stats,
        infos=infos,
        data_range=(source.first, source.first + ran) if source.first else None,
    )
