"""Collection on a Ray cluster: the calibration set cut into shards, their statistics merged exactly.

Why Ray: it is the distributed engine the ML ecosystem already runs (a laptop, a cluster of machines,
Kubernetes with KubeRay); quantviz only cuts the work and merges the results. Ray is optional (an
extra: requirements-ray.txt) and imported only here, only when a cluster is asked for.

How: the samples to collect are cut into shards of whole batches (sample ranges of an .npz/.npy,
files of an image folder: quantviz.data.sample_range). Each shard is one Ray task that opens the
model and the data itself (the same paths, or the bytes of an upload put once into Ray's object
store), runs its own onnxruntime session over its samples with the bounded memory of quantviz.collect
and returns its statistics. As shards finish, statistics of ADJACENT sample ranges are merged by Ray
tasks too (quantviz.merge: exact, in sample order), so the driver holds object references and a
few small records, never the shards' statistics, until the last merge: its memory does not grow with
the number of shards. Every merge is exact, moving averages included, as long as the later part
keeps its per-batch record: runs that do not start at sample 0 merge only while they stay within
quantviz.limits.BATCH_RECORD_MAX batches, the run from sample 0 takes any run that follows it. The
result equals a single process's collection bit for bit.

Failures: a worker that dies mid-shard (a lost machine, a killed process) has its shard run again by
Ray (max_retries); only the statistics of a shard's finished run are ever merged, so every sample
counts exactly once. A shard whose data or model run fails stops the whole collection with one
sentence that names the shard. Cancel stops every task.

On a cluster of several machines, the model and data paths must be readable at the same place on
every machine (a shared file system), or be uploaded (bytes); quantviz must be importable there (it
is sent with the job: Ray's runtime_env py_modules).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantviz.collect import collect, samples_and_batch, validate_config
from quantviz.config import CollectConfig
from quantviz.data import CalibrationSource, Cancel, ImagePreprocess, Progress, open_source, sample_range
from quantviz.errors import CancelledError, QuantvizError
from quantviz.limits import BATCH_RECORD_MAX
from quantviz.merge import merge_calibration_stats
from quantviz.model import LoadedModel, load_model, session_with_outputs
from quantviz.stats import CalibrationStats
from quantviz.store import deep_size

log = logging.getLogger(__name__)

RAY_VERSION = "2.60.0"
INSTALL = (
    f"Collecting on a Ray cluster needs Ray, which is not installed here: install it with "
    f"`pip install -r requirements-ray.txt` (ray=={RAY_VERSION}), or collect without a cluster."
)
# The local Ray started when no address is given: this machine only, no dashboard, these CPUs and this
# much shared memory for shard statistics (a shard of a 400-tensor model sends about 60 MB). Ray 2.60
# registers its servers under the machine's address even when asked for 127.0.0.1 (ray._private.
# services.resolve_ip_for_localhost) and requires its session token (token authentication is on).
LOCAL_CPUS = 2
LOCAL_OBJECT_STORE_BYTES = 512 << 20
# Shards per CPU of the cluster by default: enough for an even finish and to re-run little when a
# worker is lost; few enough that the per-shard start (model load, session) stays small.
SHARDS_PER_CPU = 4
TASK_RETRIES = 3  # runs of a shard whose worker died (Ray's max_retries)
WAIT_SECONDS = 0.2  # how often the driver looks at cancel() while shards run


@dataclass(frozen=True)
class ClusterConfig:
    """Where and how to collect on Ray.

    address: None starts (or reuses) a local Ray on this machine with LOCAL_CPUS CPUs; "auto" joins the
    cluster this machine belongs to; "HOST:PORT" or "ray://HOST:10001" a given one.
    shards: how many shards (None: SHARDS_PER_CPU per CPU of the cluster); each holds whole batches.
    local_cpus: CPUs of the local Ray (address None): how many shards run at once.
    """

    address: str | None = None
    shards: int | None = None
    retries: int = TASK_RETRIES
    local_cpus: int = LOCAL_CPUS


@dataclass(frozen=True)
class ShardInfo:
    """One shard as it ran: its samples start..stop-1, the worker that ran it, the bytes it sent back."""

    index: int
    start: int
    stop: int
    node: str
    pid: int
    nbytes: int


@dataclass(frozen=True)
class ClusterRun:
    """A collection on Ray: the statistics (as one process would have written them) and how it ran."""

    stats: CalibrationStats
    shards: tuple[ShardInfo, ...]
    cpus: int
    address: str

    @property
    def workers(self) -> int:
        """Worker processes that ran a shard."""
        return len({(s.node, s.pid) for s in self.shards})

    @property
    def nodes(self) -> int:
        return len({s.node for s in self.shards})


def import_ray() -> Any:
    """The ray module, or one sentence on how to install it."""
    try:
        import ray
    except ImportError:
        raise QuantvizError(INSTALL) from None
    return ray


_connected: str | None = None  # the address this process initialised Ray with ("local:CPUS" for our own)


def connect(address: str | None = None, local_cpus: int = LOCAL_CPUS) -> Any:
    """Ray, initialised for quantviz: a local Ray on this machine (address None) or the given cluster.

    A Ray already initialised for the same address is reused; one initialised for another is shut down
    first (the app may change its cluster address between runs)."""
    global _connected
    ray = import_ray()
    key = address or f"local:{local_cpus}"
    if ray.is_initialized():
        if _connected in (None, key):
            return ray
        ray.shutdown()
    package = str(Path(__file__).resolve().parent)
    common: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    try:
        if address is None:
            root = str(Path(package).parent)
            path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
            ray.init(
                address="local", num_cpus=local_cpus, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                runtime_env={"env_vars": {"PYTHONPATH": path}}, **common,
            )  # fmt: skip
        else:
            ray.init(address=address, runtime_env={"py_modules": [package]}, **common)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        where = "start a local Ray" if address is None else f"reach the Ray cluster at '{address}'"
        raise QuantvizError(f"quantviz could not {where}: {first}") from exc
    _connected = key
    return ray


def plan_shards(total: int, batch_size: int, shards: int) -> list[tuple[int, int]]:
    """Sample ranges of whole batches covering 0..total-1, as even as batches allow, at most `shards`."""
    if total <= 0:
        return []
    batches = -(-total // batch_size)
    n = max(1, min(shards, batches))
    cuts = [batch_size * (batches * k // n) for k in range(n)] + [total]
    return [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]


# ---------------------------------------------------------------------------------------------- tasks
# Plain functions, wrapped with ray.remote when a collection starts (Ray imports this module on the
# workers by name). A worker keeps the last model and data it opened: its next shard skips the load.

_worker_model: dict[str, LoadedModel] = {}
_worker_data: dict[tuple[str, str], Any] = {}
_worker_session: dict[tuple[str, tuple[str, ...] | None], Any] = {}  # the onnxruntime session of the last shard


def _open_on_worker(
    model_key: str,
    model_source: str | bytes,
    model_name: str,
    data: str | bytes,
    data_key: str,
    name: str | None,
    pre: ImagePreprocess,
) -> Any:
    if model_key not in _worker_model:
        _worker_model.clear()
        _worker_data.clear()
        _worker_session.clear()
        _worker_model[model_key] = load_model(model_source, model_name)
    model = _worker_model[model_key]
    if (model_key, data_key) not in _worker_data:
        _worker_data.clear()
        _worker_data[(model_key, data_key)] = open_source(data, model.inputs, name=name, preprocess=pre)
    return model, _worker_data[(model_key, data_key)]


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, QuantvizError):
        return str(exc)
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def collect_shard(
    model_key: str, model_source: str | bytes, model_name: str, data: str | bytes, data_key: str, name: str | None,
    pre: ImagePreprocess, start: int, stop: int, config: CollectConfig, tensors: list[str] | None,
) -> tuple[dict[str, Any], CalibrationStats | None]:  # fmt: skip
    """One shard (a Ray task with two results): a small record first (its worker, its size, or the
    sentence of its failure), then its statistics. Any failure of the shard is a record, not a raised
    exception: the driver names the shard in its sentence."""
    import ray

    ctx = ray.get_runtime_context()
    where = {"node": ctx.get_node_id(), "pid": os.getpid()}
    try:
        model, source = _open_on_worker(model_key, model_source, model_name, data, data_key, name, pre)
        if model.sha256 != model_key:
            raise QuantvizError(f"the model this worker read is not the one being calibrated (sha256 {model.sha256[:12]}...)")
        session_key = (model_key, tuple(tensors) if tensors is not None else None)
        if session_key not in _worker_session:
            _worker_session.clear()
            _worker_session[session_key] = session_with_outputs(model, tensors)
        stats = collect(model, sample_range(source, start, stop), config, tensors=tensors, session=_worker_session[session_key])
    except Exception as exc:  # noqa: BLE001 - whatever failed, the driver says which shard and why
        return {**where, "error": _error_text(exc)}, None
    return {**where, "samples": stats.samples, "nbytes": deep_size(stats)}, stats


def merge_pair(left: CalibrationStats, right: CalibrationStats) -> CalibrationStats:
    """Statistics of two adjacent sample ranges, left first (a Ray task; quantviz.merge)."""
    return merge_calibration_stats([left, right])


# --------------------------------------------------------------------------------------------- driver


@dataclass
class _Inputs:
    """The model and data as the workers open them: absolute paths, synthetic:N, or bytes."""

    model_source: str | bytes
    data: str | bytes
    data_name: str | None
    pre: ImagePreprocess
    source: Any  # the data opened here to check and plan (dropped before the tasks run)

    @staticmethod
    def of(
        model: LoadedModel, model_source: str | Path | bytes, data: str | Path | bytes | CalibrationSource,
        data_name: str | None, preprocess: ImagePreprocess | None,
    ) -> _Inputs:  # fmt: skip
        pre = preprocess or ImagePreprocess()
        if isinstance(data, CalibrationSource):
            if data.origin is None:
                raise QuantvizError(
                    "Data uploaded here cannot be sent to a Ray cluster's workers: give its path (on a file system every "
                    "machine of the cluster reads), or run without a cluster."
                )
            if data.first:
                raise QuantvizError("A sample range of the data cannot be sent to a cluster: give the whole data.")
            return _Inputs(_model_arg(model_source), data.origin.location, None, data.origin.preprocess, data)
        if isinstance(data, Path) or (isinstance(data, str) and not data.startswith("synthetic:")):
            data = str(Path(data).resolve())
        raw = bytes(data) if isinstance(data, bytes | bytearray | memoryview) else data
        source = open_source(raw, model.inputs, name=data_name, preprocess=pre)  # checked here, before any task
        return _Inputs(_model_arg(model_source), raw, data_name, pre, source)

    def put(self, ray: Any) -> tuple[Any, Any]:
        """Bytes go to Ray's object store once (every task then reads the same copy); paths as they are."""
        model = ray.put(self.model_source) if isinstance(self.model_source, bytes) else self.model_source
        data = ray.put(self.data) if isinstance(self.data, bytes) else self.data
        return model, data


def _model_arg(model_source: str | Path | bytes) -> str | bytes:
    return model_source if isinstance(model_source, bytes) else str(Path(model_source).resolve())


@dataclass
class _Run:
    """Shards first..last merged (or being merged: ready False) into the object `ref`."""

    first: int
    last: int
    ref: Any
    batches: int
    ready: bool


def collect_on_cluster(
    model: LoadedModel,
    model_source: str | Path | bytes,
    data: str | Path | bytes | CalibrationSource,
    config: CollectConfig | None = None,
    cluster: ClusterConfig | None = None,
    *,
    data_name: str | None = None,
    preprocess: ImagePreprocess | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    tensors: Sequence[str] | None = None,
) -> ClusterRun:
    """quantviz.collect.collect over shards on Ray; the statistics equal its result bit for bit.

    model: the model loaded here (to plan and check); model_source: its path or bytes, opened again on
    every worker. data: a path, "synthetic:N", an upload's bytes (data_name: its file name), or a source
    opened from a path or synthetic:N (its origin says how the workers open it)."""
    config = config or CollectConfig()
    cluster = cluster or ClusterConfig()
    validate_config(config)
    inputs = _Inputs.of(model, model_source, data, data_name, preprocess)
    total, batch_size = samples_and_batch(model, inputs.source, config)
    data_key, description, pre = inputs.source.data_id, inputs.source.description, inputs.pre
    del inputs.source  # the driver keeps no data
    ray = connect(cluster.address, cluster.local_cpus)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    plan = plan_shards(total, batch_size, cluster.shards or SHARDS_PER_CPU * cpus)
    shard_config = dataclasses.replace(config, samples=None)
    model_arg, data_arg = inputs.put(ray)
    names = list(tensors) if tensors is not None else None
    task = ray.remote(num_returns=2, max_retries=cluster.retries)(collect_shard)
    merge_task = ray.remote(max_retries=cluster.retries)(merge_pair)

    pending: dict[Any, int] = {}
    stats_refs: dict[int, Any] = {}
    for i, (a, b) in enumerate(plan):
        info_ref, stats_ref = task.options(name=f"quantviz shard {i + 1}/{len(plan)}").remote(
            model.sha256, model_arg, model.name, data_arg, data_key, inputs.data_name, pre, a, b, shard_config, names
        )
        pending[info_ref] = i
        stats_refs[i] = stats_ref
    merging: dict[Any, int] = {}  # merge task -> first shard of its run
    runs: dict[int, _Run] = {}
    infos: dict[int, ShardInfo] = {}
    done = 0
    if progress:
        progress(0, total)
    try:
        while pending or merging or len(runs) > 1:
            if cancel is not None and cancel():
                raise CancelledError(f"Collection cancelled after {done} of {total} samples.")
            waiting = [*pending, *merging]
            ready, _ = ray.wait(waiting, num_returns=1, timeout=WAIT_SECONDS, fetch_local=False) if waiting else ([], [])
            for ref in ready:
                if ref in merging:
                    runs[merging.pop(ref)].ready = True
                    continue
                i = pending.pop(ref)
                rec = ray.get(ref)
                a, b = plan[i]
                if "error" in rec:
                    raise QuantvizError(
                        f"Shard {i + 1} of {len(plan)} (samples {a}..{b - 1} of {description}) failed: {rec['error']}"
                    )
                infos[i] = ShardInfo(i, a, b, str(rec["node"]), int(rec["pid"]), int(rec["nbytes"]))
                runs[i] = _Run(i, i, stats_refs.pop(i), -(-(b - a) // batch_size), True)
                done += int(rec["samples"])
                if progress:
                    progress(done, total)
            _merge_adjacent(runs, merging, merge_task)
        if not runs:
            raise QuantvizError("No sample to collect: the data holds no samples for these settings.")
        stats: CalibrationStats = ray.get(runs[0].ref)
    except BaseException:
        for ref in [*pending, *merging]:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - a task that finished meanwhile cannot be cancelled; nothing to do
                log.debug("shard already finished")
        raise
    stats = dataclasses.replace(stats, config=config)
    return ClusterRun(stats, tuple(infos[i] for i in sorted(infos)), cpus, cluster.address or "local")


def _merge_adjacent(runs: dict[int, _Run], merging: dict[Any, int], merge_task: Any) -> None:
    """Start a merge task for each pair of finished adjacent runs whose merge stays exact (see the
    module doc): the run from sample 0 takes any follower; others while within BATCH_RECORD_MAX."""
    firsts = sorted(runs)
    k = 0
    while k + 1 < len(firsts):
        left, right = runs[firsts[k]], runs[firsts[k + 1]]
        if (
            left.ready
            and right.ready
            and left.last + 1 == right.first
            and (left.first == 0 or left.batches + right.batches <= BATCH_RECORD_MAX)
        ):
            ref = merge_task.options(name=f"quantviz merge shards {left.first + 1}-{right.last + 1}").remote(left.ref, right.ref)
            runs[left.first] = _Run(left.first, right.last, ref, left.batches + right.batches, False)
            del runs[right.first]
            merging[ref] = left.first
            k += 2
        else:
            k += 1


# ------------------------------------------------------------------- analyses independent per candidate


def analyze_method(
    model_key: str, model_source: str | bytes, model_name: str, data: str | bytes, data_key: str, name: str | None,
    pre: ImagePreprocess, stats: CalibrationStats, method: str, config: Any, samples: int | None, per_channel: bool,
    profile: str | None, clip_outputs: bool,
) -> tuple[dict[str, Any], Any]:  # fmt: skip
    """One candidate of best-method-per-layer (a Ray task): the table of that method everywhere and its
    analysis (quantviz.sensitivity.analyze), exactly as best_method_picks computes it in one process."""
    import ray

    from quantviz.sensitivity import analyze
    from quantviz.table import calibrate_model

    where = {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
    try:
        model, source = _open_on_worker(model_key, model_source, model_name, data, data_key, name, pre)
        table = calibrate_model(model, stats, method, config, per_channel=per_channel, profile=profile, clip_outputs=clip_outputs)
        report = analyze(model, table, source, samples=samples, per_channel=per_channel, parts=False)
    except Exception as exc:  # noqa: BLE001 - whatever failed, the driver says which method and why
        return {**where, "error": _error_text(exc)}, None
    return where, report


def analyses_on_cluster(
    model: LoadedModel,
    model_source: str | Path | bytes,
    stats: CalibrationStats,
    data: str | Path | bytes | CalibrationSource,
    methods: Sequence[str],
    config: Any,
    cluster: ClusterConfig | None = None,
    *,
    samples: int | None,
    per_channel: bool = True,
    profile: str | None = None,
    clip_outputs: bool = False,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> dict[str, Any]:
    """method -> LayerReport of the model calibrated with that method everywhere, one Ray task a method
    (the candidates of best-method-per-layer are independent). Each task computes what the single
    process computes for that method, so the reports, and the picks made from them, are the same."""
    cluster = cluster or ClusterConfig()
    inputs = _Inputs.of(model, model_source, data, None, None)
    data_key = inputs.source.data_id
    del inputs.source
    ray = connect(cluster.address, cluster.local_cpus)
    model_arg, data_arg = inputs.put(ray)
    stats_ref = ray.put(stats)  # sent once, read by every task
    task = ray.remote(num_returns=2, max_retries=cluster.retries)(analyze_method)
    pending: dict[Any, str] = {}
    reports: dict[str, Any] = {}
    for m in methods:
        info_ref, report_ref = task.options(name=f"quantviz analysis {m}").remote(
            model.sha256, model_arg, model.name, data_arg, data_key, inputs.data_name, inputs.pre, stats_ref, m, config, samples,
            per_channel, profile, clip_outputs,
        )  # fmt: skip
        pending[info_ref] = m
        reports[m] = report_ref
    if progress:
        progress(0, len(methods))
    try:
        while pending:
            if cancel is not None and cancel():
                raise CancelledError(
                    f"The comparison of methods was cancelled after {len(methods) - len(pending)} of {len(methods)}."
                )
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_SECONDS)
            for ref in ready:
                m = pending.pop(ref)
                rec = ray.get(ref)
                if "error" in rec:
                    raise QuantvizError(f"The analysis of method '{m}' failed on the cluster: {rec['error']}")
                if progress:
                    progress(len(methods) - len(pending), len(methods))
    except BaseException:
        for ref in pending:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - finished meanwhile: nothing to cancel
                log.debug("analysis already finished")
        raise
    return {m: ray.get(reports[m]) for m in methods}


# ----------------------------------------------------------------------------- EQ, isolated mode


def eq_search_groups(
    model_key: str, model_source: str | bytes, model_name: str, data: str | bytes, data_key: str, name: str | None,
    pre: ImagePreprocess, stats: CalibrationStats, config: Any, method_config: Any, per_channel: bool, profile: str | None,
    clip_outputs: bool, first: int, stop: int,
) -> tuple[dict[str, Any], Any]:  # fmt: skip
    """EQ's isolated search of the layer groups first..stop-1 (a Ray task): the same start as one process
    (quantviz.easyquant.table.eq_setup), an evaluator over these groups' layers only, eq_search."""
    import ray

    from quantviz.easyquant.search import eq_search
    from quantviz.easyquant.table import eq_evaluator, eq_groups, eq_setup

    where = {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
    try:
        model, source = _open_on_worker(model_key, model_source, model_name, data, data_key, name, pre)
        setup = eq_setup(model, stats, method_config, per_channel, profile, clip_outputs)
        layers = [layer for group in eq_groups(setup.layers)[first:stop] for layer in group]
        evaluator = eq_evaluator(model, setup, source, config, layers)
        result = eq_search(layers, setup.initial, evaluator, config, on_round=evaluator.start_round, on_fixed=evaluator.fix)
    except Exception as exc:  # noqa: BLE001 - whatever failed, the driver says which groups and why
        return {**where, "error": _error_text(exc)}, None
    return {**where, "samples": evaluator.samples}, result


def eq_isolated_on_cluster(
    model: LoadedModel,
    model_source: str | Path | bytes,
    stats: CalibrationStats,
    data: str | Path | bytes | CalibrationSource,
    config: Any,
    method_config: Any,
    cluster: ClusterConfig | None = None,
    *,
    per_channel: bool,
    profile: str | None,
    clip_outputs: bool,
    groups: int,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> tuple[Any, int]:
    """EQ's isolated search fanned out: runs of whole layer groups, one Ray task each (SHARDS_PER_CPU a
    CPU at most). Returns the EQResult of all layers (evaluations summed) and the samples searched."""
    from quantviz.easyquant.search import EQResult

    cluster = cluster or ClusterConfig()
    inputs = _Inputs.of(model, model_source, data, None, None)
    data_key = inputs.source.data_id
    del inputs.source
    ray = connect(cluster.address, cluster.local_cpus)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    runs = plan_shards(groups, 1, cluster.shards or SHARDS_PER_CPU * cpus)
    model_arg, data_arg = inputs.put(ray)
    stats_ref = ray.put(stats)
    task = ray.remote(num_returns=2, max_retries=cluster.retries)(eq_search_groups)
    pending: dict[Any, int] = {}
    results: dict[int, Any] = {}
    for i, (a, b) in enumerate(runs):
        info_ref, result_ref = task.options(name=f"quantviz EQ groups {a + 1}-{b}").remote(
            model.sha256, model_arg, model.name, data_arg, data_key, inputs.data_name, inputs.pre, stats_ref, config, method_config,
            per_channel, profile, clip_outputs, a, b,
        )  # fmt: skip
        pending[info_ref] = i
        results[i] = result_ref
    samples = 0
    done = 0
    total = config.rounds * groups
    if progress:
        progress(0, total)
    try:
        while pending:
            if cancel is not None and cancel():
                raise CancelledError(f"EQ cancelled after {done} of {total} layer groups.")
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_SECONDS)
            for ref in ready:
                i = pending.pop(ref)
                rec = ray.get(ref)
                a, b = runs[i]
                if "error" in rec:
                    raise QuantvizError(
                        f"EQ's search of layer groups {a + 1}..{b} of {groups} failed on the cluster: {rec['error']}"
                    )
                samples = int(rec["samples"])
                done += config.rounds * (b - a)
                if progress:
                    progress(done, total)
    except BaseException:
        for ref in pending:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - finished meanwhile: nothing to cancel
                log.debug("EQ task already finished")
        raise
    parts = [ray.get(results[i]) for i in range(len(runs))]
    layers = {name: r for part in parts for name, r in part.layers.items()}
    return EQResult(layers, config, sum(p.evaluations for p in parts)), samples


# ------------------------------------------------------------------- analyze: isolated error per layer


def isolated_layers(
    model_key: str, model_source: str | bytes, model_name: str, data: str | bytes, data_key: str, name: str | None,
    pre: ImagePreprocess, table: Any, layers: list[str], total: int, batch_size: int, rest: int | None, per_channel: bool,
    float_nodes: frozenset[str], parts: bool,
) -> tuple[dict[str, Any], Any]:  # fmt: skip
    """The isolated figures (and parts) of a run of layers (a Ray task): quantviz.sensitivity.isolated_errors
    on the samples and batches of the driver's analysis."""
    import ray

    from quantviz.sensitivity import isolated_errors

    where = {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
    try:
        model, source = _open_on_worker(model_key, model_source, model_name, data, data_key, name, pre)
        if model.sha256 != model_key:
            raise QuantvizError(f"the model this worker read is not the one being analysed (sha256 {model.sha256[:12]}...)")
        result = isolated_errors(
            model, table, source, layers, total, batch_size, rest, per_channel=per_channel, float_nodes=float_nodes, parts=parts
        )
    except Exception as exc:  # noqa: BLE001 - whatever failed, the driver says which layers and why
        return {**where, "error": _error_text(exc)}, None
    return where, result


class IsolatedFanOut:
    """analyze's isolated per-layer error on Ray (quantviz.sensitivity.analyze with a cluster): the
    layers cut into runs, one Ray task a run, while the driver runs the float and QDQ models itself.

    One run per CPU of the cluster by default (ClusterConfig.shards to change it): every task runs the
    whole float model besides its layers' copies, so more runs than CPUs would only repeat float work.
    connect at construction (the number of runs is known before the analysis starts), start when the
    driver knows the batches (the first sample's outputs size them), finished/wait/cancel after."""

    def __init__(
        self, model: LoadedModel, model_source: str | Path | bytes, table: Any, source: CalibrationSource,
        layers: Sequence[str], cluster: ClusterConfig,
    ) -> None:  # fmt: skip
        self.model = model
        self.table = table
        self.layers = list(layers)
        self.cluster = cluster
        self.inputs = _Inputs.of(model, model_source, source, None, None)
        self.data_key, self.description = self.inputs.source.data_id, self.inputs.source.description
        del self.inputs.source
        self.ray = connect(cluster.address, cluster.local_cpus)
        cpus = int(self.ray.cluster_resources().get("CPU", 1))
        self.plan = plan_shards(len(self.layers), 1, cluster.shards or cpus)
        self.runs = len(self.plan)
        self.pending: dict[Any, int] = {}
        self.refs: dict[int, Any] = {}
        self.workers: set[tuple[str, int]] = set()

    def start(
        self, total: int, batch_size: int, rest: int | None, *, per_channel: bool, float_nodes: Iterable[str], parts: bool
    ) -> None:
        """One task a run of layers, on samples 0..total-1 in the driver's batches (analyze: batch_size, or
        the first sample alone and then batches of rest)."""
        ray = self.ray
        model_arg, data_arg = self.inputs.put(ray)
        table_ref = ray.put(self.table)
        task = ray.remote(num_returns=2, max_retries=self.cluster.retries)(isolated_layers)
        for i, (a, b) in enumerate(self.plan):
            info_ref, result_ref = task.options(name=f"quantviz isolated layers {a + 1}-{b}").remote(
                self.model.sha256, model_arg, self.model.name, data_arg, self.data_key, self.inputs.data_name, self.inputs.pre,
                table_ref, self.layers[a:b], total, batch_size, rest, per_channel, frozenset(float_nodes), parts,
            )  # fmt: skip
            self.pending[info_ref] = i
            self.refs[i] = result_ref

    def _take(self, timeout: float) -> None:
        if not self.pending:
            return
        ready, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=timeout)
        for ref in ready:
            i = self.pending.pop(ref)
            rec = self.ray.get(ref)
            if "error" in rec:
                a, b = self.plan[i]
                raise QuantvizError(
                    f"The isolated error of layers {a + 1}..{b} of {len(self.layers)} ('{self.layers[a]}' to "
                    f"'{self.layers[b - 1]}') failed on the cluster: {rec['error']}"
                )
            self.workers.add((str(rec["node"]), int(rec["pid"])))

    def finished(self) -> int:
        """Runs done so far (looks without waiting; a failed run raises its sentence)."""
        if self.pending and self.refs:
            self._take(0)
        return self.runs - len(self.pending) if self.refs else 0

    def wait(self, on_progress: Callable[[], None], cancel: Cancel | None) -> dict[str, Any]:
        """layer -> (isolated ErrorFigures, ErrorParts or None), once every run is done."""
        while self.pending:
            if cancel is not None and cancel():
                raise CancelledError(
                    f"The analysis was cancelled after {self.runs - len(self.pending)} of {self.runs} runs of layers."
                )
            before = len(self.pending)
            self._take(WAIT_SECONDS)
            if len(self.pending) < before:
                on_progress()
        out: dict[str, Any] = {}
        for i in range(self.runs):
            out.update(self.ray.get(self.refs[i]))
        return out

    def cancel(self) -> None:
        for ref in self.pending:
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - finished meanwhile: nothing to cancel
                log.debug("isolated-error task already finished")
