"""One typed state object per browser session, and the one way pages reach models, statistics and
everything derived from them.

- Session (in st.session_state under one key) holds the current model's identity (content hash +
  name), per model the work done on it (ModelWork: its review, the statistics it was last seen with,
  the open tensor and layer, typed-but-unused thresholds), the value of every control that must outlive
  a page switch (Controls), messages that must survive a rerun, and a bounded store (ByteLRU) of what
  this session opened and computed: models, calibration data, statistics and analyses.
- Everything derived is stored under a DerivedKey naming the statistics (so the model) and the review
  it came from: a page can never show an analysis, a figure or an export of another model.
- Models are read-only, so they are also kept server-wide by content hash (a second store, shared by
  sessions): a session never sees another session's data, statistics, reviews or analyses.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import streamlit as st

from quantviz.calib import MethodConfig
from quantviz.collect import collect
from quantviz.config import DEFAULT_BATCH_SIZE, DEFAULT_BINS, CollectConfig
from quantviz.data import CalibrationSource
from quantviz.distributed import ClusterConfig, collect_on_cluster
from quantviz.easyquant import EQConfig
from quantviz.errors import QuantvizError
from quantviz.model import LoadedModel, load_model
from quantviz.review import Review, build_table
from quantviz.runs import Run, keep_last, renamed, run_from_report
from quantviz.samples import DEFAULT_SAMPLE
from quantviz.sensitivity import LayerReport
from quantviz.stats import CalibrationStats
from quantviz.store import ByteLRU
from quantviz.summary import overview
from quantviz.table import CalibrationTable, apply_model, calibrate
from quantviz.weights import WeightQuant
from ui.config import LOCAL_ADDRESSES, app_config
from ui.errors import callback

SESSION = "qv_session"  # the only raw session_state key the app owns (widget keys are bound below)
T = TypeVar("T")

MODEL_SOURCES = ("Bundled sample", "Upload a model", "Path on this machine")
DATA_SOURCES = ("Sample calibration set", "Upload .npz / .npy", "Path on this machine", "Synthetic (random)")


# --- typed keys ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelId:
    """Which model: its content hash and the name it was opened with."""

    sha256: str
    name: str


@dataclass(frozen=True)
class ModelKey:
    sha256: str


@dataclass(frozen=True)
class SourceKey:
    data_id: str


@dataclass(frozen=True)
class StatsKey:
    model_sha256: str
    data_id: str
    settings: tuple[Hashable, ...]


@dataclass(frozen=True)
class DerivedKey:
    """A result computed from statistics (and so one model), a review and the weight mode."""

    kind: str
    stats: StatsKey
    review: Hashable
    per_channel: bool
    params: tuple[Hashable, ...] = ()


StoreKey = ModelKey | SourceKey | StatsKey | DerivedKey


# --- the session's state ---------------------------------------------------------------------------


@dataclass
class Controls:
    """Every control whose value outlives a page switch, under the widget key of the same name."""

    # Home
    model_source: str = MODEL_SOURCES[0]
    sample_model: str = DEFAULT_SAMPLE
    model_path: str = ""
    data_source: str = DATA_SOURCES[0]
    data_path: str = ""
    pre_color: str = "rgb"
    pre_layout: str = "nchw"
    pre_scale: float = 1 / 255
    pre_mean: str = "0"
    pre_std: str = "1"
    synthetic_n: int = 64
    collect_samples: int = 0
    collect_bins: int = DEFAULT_BINS
    collect_batch: int = DEFAULT_BATCH_SIZE
    home_rows: int | str = 40  # tensors in Home's overview picture
    collect_ray: bool = False  # collect in shards on Ray (quantviz.distributed); off: this process alone
    collect_ray_address: str = ""  # empty: a local Ray on this machine; "auto", HOST:PORT, ray://HOST:10001
    # Distributions
    dist_show_all: bool = False
    dist_log: bool = True
    dist_signed: bool = True
    dist_methods: list[str] | None = None  # None: the page's default selection
    dist_log2: bool = False
    dist_graph: bool = True  # graph context of the open tensor
    per_channel: bool = True  # weights per output channel (every page, table and export)
    # Layer sensitivity
    sens_data: str | None = None  # None: the labelled sample set when there is one
    sens_samples: int | None = None  # None: the page's default
    sens_mode: str = "isolated"
    sens_limit: int | str = 40
    sens_graph: bool = True  # graph context of the open layer
    runs_by: str = "isolated"  # the gain two runs' layers are sorted by (isolated / accumulated SNR)
    sens_measure: str = "1 - cosine (log)"  # how the per-layer error is drawn (pages/3_Layer_sensitivity.py)
    eq_alpha: float = EQConfig().alpha
    eq_beta: float = EQConfig().beta
    eq_n: int = EQConfig().n
    eq_rounds: int = EQConfig().rounds
    eq_samples: int = EQConfig().max_samples
    eq_mode: str = EQConfig().mode
    # Export
    trt_header: str | None = None  # None: the TensorRT default header
    qdq_reduce_range: bool = False
    qdq_prepared: bool = False


@dataclass
class ModelWork:
    """What this session did on one model; kept when the user switches to another and comes back."""

    model: ModelId
    review: Review = field(default_factory=Review)
    stats_key: StatsKey | None = None
    source_id: str | None = None
    tensor: str | None = None
    layer: str | None = None
    clicked_layer: str | None = None
    overview_clicked: str | None = None  # the tensor last opened from Home's overview picture
    graph_clicked: tuple[str, str] | None = None  # (graph chart, tensor) last opened from a graph context
    mixed_clicked: tuple[str, int] | None = None  # (trade-off chart, step) last applied by a click (Mixed precision)
    last_analysis: DerivedKey | None = None
    auto_tried: DerivedKey | None = None  # the analysis last started by itself (never twice in a row)
    last_eq: DerivedKey | None = None
    best_picks: dict[StatsKey, dict[str, Any]] = field(default_factory=dict)
    # each completed analysis of this model, named (quantviz.runs), the last RUNS_KEPT; saved in the review file
    runs: list[Run] = field(default_factory=list)
    # what the next analysis measures, set when best-method or EQ changed the table: that analysis starts
    # by itself and its run is named after it ("best method 14:05:07")
    reanalyse: str | None = None
    run_pair: tuple[str, str] | None = None  # (run A, run B) compared on Layer sensitivity; a new run becomes B
    # tensor -> (the threshold shown when the person typed, the typed value): dropped once the shown
    # threshold changes (another method, best method...), so a control never writes a stale value
    drafts: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class PendingReview:
    """A review file opened for another model than the current one, waiting for the person's choice."""

    file_name: str
    stats: CalibrationStats
    review: Review
    runs: tuple[Run, ...] = ()


@dataclass
class Session:
    id: str
    store: ByteLRU[StoreKey]
    current: ModelId | None = None
    works: dict[str, ModelWork] = field(default_factory=dict)
    controls: Controls = field(default_factory=Controls)
    flashes: list[tuple[str, str]] = field(default_factory=list)
    opened_file: str | None = None
    pending: PendingReview | None = None
    auto_collect: bool = True  # the bundled sample runs by itself on a first visit or a new sample pick
    cluster_notes: dict[StatsKey, str] = field(default_factory=dict)  # statistics collected on Ray: how it ran

    def work(self) -> ModelWork | None:
        return None if self.current is None else self.works.get(self.current.sha256)

    def work_for(self, model: ModelId) -> ModelWork:
        w = self.works.get(model.sha256)
        if w is None:
            w = self.works[model.sha256] = ModelWork(model)
        return w


def new_session(limit_bytes: int | None = None) -> Session:
    return Session(id=uuid.uuid4().hex[:12], store=ByteLRU(limit_bytes or app_config().session_limit_bytes))


def session() -> Session:
    s = st.session_state.get(SESSION)
    if not isinstance(s, Session):
        s = new_session()
        st.session_state[SESSION] = s
    return s


def work() -> ModelWork | None:
    return session().work()


def current_work() -> ModelWork:
    """The current model's work, for pages past need_stats() (which stops the page when there is no model)."""
    w = session().work()
    if w is None:
        raise RuntimeError("No current model: call need_stats() first.")
    return w


# --- messages that survive a rerun -----------------------------------------------------------------


def flash(kind: str, text: str) -> None:
    """A message shown on the next run of the page (st.rerun would otherwise wipe it)."""
    session().flashes.append((kind, text))


def show_flashes() -> None:
    s = session()
    shown, s.flashes = s.flashes, []
    for kind, text in shown:
        {"success": st.success, "info": st.info, "warning": st.warning, "error": st.error}.get(kind, st.info)(text)


# --- controls bound to the typed state -------------------------------------------------------------


def bound(name: str, options: Sequence[Any] | None = None, on_change: Callable[[], None] | None = None) -> dict[str, Any]:
    """Widget arguments that show Controls.<name> and write the person's change back to it.

    The value is put in the widget's state before it is drawn (so leaving and coming back never resets
    it, and a value changed elsewhere is what the control shows); pass no value=/index= beside it.
    """
    controls = session().controls
    if name not in {f.name for f in fields(Controls)}:
        raise KeyError(f"Controls has no field {name}")
    value = getattr(controls, name)
    if options is not None and value not in options:
        value = options[0]
        setattr(controls, name, value)
    if value is not None:
        st.session_state[name] = value

    def sync() -> None:
        setattr(controls, name, st.session_state[name])
        if on_change is not None:
            on_change()

    return {"key": name, "on_change": callback(sync)}


def controlled(key: str, value: Any) -> str:
    """Put a value in a widget's state before it is drawn (a control whose value belongs to the review)."""
    st.session_state[key] = value
    return key


# --- the stores --------------------------------------------------------------------------------------

_shared_lock = threading.Lock()


@st.cache_resource(show_spinner=False)
def _shared_models() -> ByteLRU[ModelKey]:
    """Read-only models by content hash, shared by sessions (a session keeps its own reference too)."""
    return ByteLRU(app_config().shared_models_limit_bytes)


def _remember(key: StoreKey, value: object) -> None:
    try:
        session().store.put(key, value)
    except QuantvizError as exc:
        raise QuantvizError(f"{exc} (limit: QUANTVIZ_SESSION_LIMIT_MB)") from None


def model_from(source: str | bytes, name: str | None = None) -> LoadedModel:
    """Load a model once per content (paths are read to hash them)."""
    raw = source if isinstance(source, bytes) else Path(source).read_bytes() if Path(source).is_file() else None
    if raw is None:
        return load_model(source, name)  # raises a clear error for missing paths
    key = ModelKey(hashlib.sha256(raw).hexdigest())
    model = session().store.get(key)
    if model is None:
        with _shared_lock:
            model = _shared_models().get(key)
        if model is None:
            model = load_model(source if isinstance(source, str) else raw, name)
            with _shared_lock:
                _shared_models().put(key, model)
        _remember(key, model)
    assert isinstance(model, LoadedModel)
    return model


def make_current(model: ModelId, stats_key: StatsKey | None, source_id: str | None = None) -> ModelWork:
    """Make a model the current one; its previous review comes back, the other model's stays kept."""
    s = session()
    before = s.current
    w = s.work_for(model)
    if stats_key is not None:
        w.stats_key = stats_key
    if source_id is not None or stats_key is not None:
        w.source_id = source_id
    if before is not None and before.sha256 != model.sha256:
        old = s.works.get(before.sha256)
        kept = _review_words(old.review) if old is not None else ""
        back = f" Its own review ({_review_words(w.review)}) is back." if w.review.choices or w.review.weight_scales else ""
        flash(
            "info",
            f"Now on {model.name}."
            + (f" The review of {before.name} ({kept}) is kept for when you come back to it." if kept else "")
            + back,
        )
    s.current = model
    return w


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _review_words(r: Review) -> str:
    if not r.choices and not r.weight_scales:
        return ""
    return f"{_count(len(r.choices), 'choice')}, {_count(len(r.notes), 'note')}"


def collected(
    model: LoadedModel,
    source: CalibrationSource,
    config: CollectConfig,
    progress: Callable[[int, int], object] | None = None,
    cluster: ClusterConfig | None = None,
    model_source: str | bytes | None = None,
) -> StatsKey:
    """Run (or reuse) a collection, make its model current and return the statistics' key.

    cluster: collect in shards on Ray (the statistics are the same bit for bit, so the key is too);
    model_source: the model's path or bytes, which the workers open. How the run went is kept for the
    page (cluster_note)."""
    key = StatsKey(model.sha256, source.data_id, (config.samples, config.bins, config.batch_size, config.ema_constant))
    store = session().store
    if key not in store:
        if cluster is not None:
            if model_source is None:
                raise QuantvizError(
                    "The model uploaded before is no longer at hand to send to Ray's workers: upload it again, or collect without a cluster."
                )
            run = collect_on_cluster(model, model_source, source, config, cluster, progress=progress)
            stats = run.stats
            machines = f"{run.nodes} machine" + ("s" if run.nodes != 1 else "")
            session().cluster_notes[key] = (
                f"Collected on Ray ({run.address}): {len(run.shards)} shards on {run.workers} workers, {machines}, {run.cpus} CPUs."
            )
        else:
            stats = collect(model, source, config, progress=progress)
            session().cluster_notes.pop(key, None)
        _remember(key, stats)
    _remember(SourceKey(source.data_id), source)
    _remember(ModelKey(model.sha256), model)
    make_current(ModelId(model.sha256, model.name), key, source.data_id)
    return key


def put_stats(stats: CalibrationStats, review: Review | None = None, runs: Sequence[Run] = ()) -> StatsKey:
    """Statistics opened from a file become the current ones (their model, by the hash they name); a
    review file's runs join the model's (the last RUNS_KEPT, ids already held not twice)."""
    key = StatsKey(stats.model_sha256, stats.data_id, ("file", stats.samples, stats.config.bins))
    _remember(key, stats)
    w = session().work_for(ModelId(stats.model_sha256, stats.model_name))
    keep_source = w.source_id if w.stats_key is not None and w.stats_key.data_id == stats.data_id else None
    w = make_current(ModelId(stats.model_sha256, stats.model_name), key, keep_source)
    if review is not None:
        w.review = review
    held = {r.id for r in w.runs}
    w.runs = [*w.runs, *(r for r in runs if r.id not in held)][-RUNS_KEPT:]
    return key


def current_key() -> StatsKey | None:
    w = work()
    return None if w is None else w.stats_key


def current_stats() -> CalibrationStats | None:
    key = current_key()
    if key is None:
        return None
    stats = session().store.get(key)
    return stats if isinstance(stats, CalibrationStats) else None


def model_and_source() -> tuple[LoadedModel | None, CalibrationSource | None]:
    """The current model and the data its statistics came from, if this session still holds them."""
    w = work()
    if w is None:
        return None, None
    store = session().store
    model = store.get(ModelKey(w.model.sha256))
    source = store.get(SourceKey(w.source_id)) if w.source_id is not None else None
    return model, source


def need_stats() -> CalibrationStats:
    """The current statistics, or a hint to go Home and stop the page."""
    show_flashes()
    stats = current_stats()
    if stats is None:
        if current_key() is not None:
            st.info("The statistics of this model were released to free memory: run the collection again on Home.")
        else:
            st.info("No statistics yet: choose a model and calibration data on the Home page and run the collection.")
        st.page_link("pages/0_Home.py", label="Go to Home", icon=":material/home:")
        st.stop()
    return stats


def review() -> Review:
    w = work()
    return Review() if w is None else w.review


def set_review(new: Review) -> None:
    w = work()
    if w is None:
        raise QuantvizError("Open a model or a statistics file first: a review belongs to a model.")
    w.review = new


def per_channel() -> bool:
    return session().controls.per_channel


RUNS_KEPT = 10  # analyses kept as runs per model (the oldest goes first)


def runs() -> list[Run]:
    w = work()
    return [] if w is None else w.runs


def add_run(report: LayerReport, label: str | None = None) -> Run:
    """Keep an analysis of the current review's table as the model's newest run."""
    w = current_work()
    run = run_from_report(report, w.review, id=uuid.uuid4().hex[:12], when=datetime.now(UTC), label=label)
    before = w.runs[-1].id if w.runs else run.id
    w.runs = keep_last(w.runs, run, RUNS_KEPT)
    w.run_pair = (before, run.id)
    return run


def rename_run(run_id: str, name: str) -> None:
    w = current_work()
    w.runs = renamed(w.runs, run_id, name)


# --- derived results, keyed by what they come from --------------------------------------------------


def derived_key(kind: str, params: tuple[Hashable, ...] = (), *, with_review: bool = True) -> DerivedKey:
    key = current_key()
    if key is None:
        raise QuantvizError("No statistics yet: choose a model and calibration data on the Home page.")
    return DerivedKey(kind, key, review().fingerprint() if with_review else None, per_channel(), params)


def stored(key: DerivedKey | None) -> Any:
    return None if key is None else session().store.get(key)


def store(key: DerivedKey, value: T) -> T:
    _remember(key, value)
    return value


def cached(key: DerivedKey, make: Callable[[], T]) -> T:
    """A derived result kept in this session's store: reruns rebuild nothing."""
    value = stored(key)
    return value if value is not None else store(key, make())


def table_for(method: str, config: MethodConfig | None = None) -> CalibrationTable:
    stats = need_stats()
    cfg = config or MethodConfig()
    return cached(derived_key("table", (method, cfg), with_review=False), lambda: calibrate(stats, method, cfg))


def current_table() -> CalibrationTable:
    """The table of the current review (default method, per-tensor choices, notes), with weight
    scales, fused shared scales and requantization multipliers when the model is loaded."""
    stats = need_stats()
    r = review()
    model, _ = model_and_source()

    def make() -> CalibrationTable:
        table = build_table(stats, r, base=table_for(r.default_method, r.config))
        if model is None:
            return table
        return apply_model(table, model, per_channel(), weight_overrides=r.weight_scales, weight_method="eq")

    return cached(derived_key("review table", (model is not None,)), make)


def model_table_for(method: str, config: MethodConfig) -> CalibrationTable:
    """One method everywhere, with the model's fused scales, weight scales and requantization."""
    table = table_for(method, config)
    model, _ = model_and_source()
    if model is None:
        return table
    r = review()
    return cached(
        derived_key("model table", (method, config, r.profile, r.clip_outputs), with_review=False),
        lambda: apply_model(table, model, per_channel(), profile=r.profile, clip_outputs=r.clip_outputs),
    )


def overview_table(progress: Callable[[int, int], object] | None = None) -> Any:
    """Every tensor with every method's threshold and clipped %, computed once per statistics."""
    stats = need_stats()
    cfg = review().config
    return cached(derived_key("overview", (cfg,), with_review=False), lambda: overview(stats, cfg, progress=progress))


def overview_ready() -> bool:
    """Whether overview_table() is already computed (a rerun would build nothing)."""
    return stored(derived_key("overview", (review().config,), with_review=False)) is not None


def method_rows(tensor: str) -> Any:
    """(method names, table of thresholds, clipped % and MSE per method) of one tensor, computed once."""
    from quantviz.summary import all_thresholds, method_table

    stats = need_stats()
    cfg = review().config

    def make() -> tuple[list[str], Any]:
        t = stats.tensors[tensor]
        results = all_thresholds(t, cfg)
        return list(results), method_table(t, results)

    return cached(derived_key("method rows", (tensor, cfg), with_review=False), make)


def weights_of(model: LoadedModel, per_channel: bool) -> dict[str, WeightQuant]:
    """Per-channel (or per-tensor) weight scales of the folded model, keyed by initializer."""
    key = DerivedKey("weights", StatsKey(model.sha256, "", ()), None, per_channel)
    return cached(key, lambda: model.folded.weights(per_channel))


def tensor_picker(names: list[str], label_of: Callable[[str], str], widget_key: str, label: str = "Tensor (type to search)") -> str:
    """A selectbox whose choice is the current model's open tensor, shared by every page."""
    w = work()
    current = w.tensor if w is not None else None
    if current not in names:
        current = names[0]
    controlled(widget_key, current)

    def _sync() -> None:
        if w is not None:
            w.tensor = st.session_state[widget_key]

    choice: str = st.selectbox(label, names, format_func=label_of, key=widget_key, on_change=callback(_sync))
    if w is not None:
        w.tensor = choice
    return choice


# --- bundled samples (the server's own files: safe to share) ------------------------------------------


@st.cache_resource(show_spinner=False, max_entries=4)
def _sample_shas() -> dict[str, str]:
    from quantviz.samples import SAMPLES

    return {hashlib.sha256(s.model.read_bytes()).hexdigest(): k for k, s in SAMPLES.items() if s.model.is_file()}


def sample_key_of(model: LoadedModel) -> str | None:
    """The bundled sample this model is, if any (by content)."""
    return _sample_shas().get(model.sha256)


@st.cache_resource(show_spinner=False, max_entries=4)
def _labelled_sample(sample_key: str, inputs: tuple[Any, ...]) -> tuple[CalibrationSource, Any]:
    from quantviz.data import default_labels, open_source
    from quantviz.samples import SAMPLES

    path = SAMPLES[sample_key].eval
    return open_source(path, inputs), default_labels(path)


def labelled_sample_source(sample_key: str, model: LoadedModel) -> tuple[CalibrationSource, Any]:
    """A bundled sample's labelled evaluation set, opened once per server (it is the server's own file)."""
    return _labelled_sample(sample_key, model.inputs)


# --- where paths may be typed --------------------------------------------------------------------------


def paths_allowed() -> bool:
    """Paths on the server may be typed when it listens on this machine only, or under the folder the
    operator named (QUANTVIZ_PATHS_UNDER)."""
    address = str(st.get_option("server.address") or "")
    return address in LOCAL_ADDRESSES or app_config().paths_under is not None


def checked_path(text: str) -> Path:
    """A typed path, refused unless this server lets visitors read it."""
    path = Path(text.strip()).expanduser()
    root = app_config().paths_under
    address = str(st.get_option("server.address") or "")
    if address in LOCAL_ADDRESSES:
        return path
    if root is None or not path.resolve().is_relative_to(root):
        raise QuantvizError("Paths on this server can only be opened under the folder its operator named.")
    return path
