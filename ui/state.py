"""Session state keys, cached heavy results, and the one way pages reach the current statistics.

Small selections live in st.session_state under the names below (per browser session: two sessions
never share them). Heavy results (models, statistics) live in st.cache_resource, keyed by
(model sha256, data id, settings): a rerun after switching tensor runs no inference.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import streamlit as st

from quantviz.calib import MethodConfig
from quantviz.collect import collect
from quantviz.config import CollectConfig
from quantviz.data import CalibrationSource
from quantviz.fold import fold_batchnorm
from quantviz.model import LoadedModel, load_model
from quantviz.review import Review, build_table, review_from_dict, review_to_dict
from quantviz.stats import CalibrationStats
from quantviz.summary import overview
from quantviz.table import CalibrationTable, apply_model, calibrate
from quantviz.weights import WeightQuant, weight_scales

# session_state keys (selections only; never arrays)
STATS_KEY = "qv_stats_key"  # key of the current statistics in the store
MODEL_KEY = "qv_model_sha"  # sha256 of the current model, when a model is loaded
TENSOR = "qv_tensor"  # current tensor name (shared by every page's tensor picker)
REVIEW = "qv_review"  # the person's Review: per-tensor choices and notes
PER_CHANNEL = "qv_per_channel"  # weights per output channel (True) or per tensor


@dataclass(frozen=True)
class StatsKey:
    model_sha256: str
    data_id: str
    settings: tuple[Any, ...]


@st.cache_resource(show_spinner=False, max_entries=8)
def _model_cache() -> dict[str, LoadedModel]:
    return {}


@st.cache_resource(show_spinner=False, max_entries=1)
def _stats_store() -> dict[StatsKey, CalibrationStats]:
    return {}


def model_from(source: str | bytes, name: str | None = None) -> LoadedModel:
    """Load a model once per content: cached by sha256 of the bytes (paths are read to hash them)."""
    import hashlib
    from pathlib import Path

    raw = source if isinstance(source, bytes) else Path(source).read_bytes() if Path(source).is_file() else None
    if raw is None:
        return load_model(source, name)  # raises a clear error for missing paths
    sha = hashlib.sha256(raw).hexdigest()
    cache = _model_cache()
    if sha not in cache:
        cache[sha] = load_model(source if isinstance(source, str) else raw, name)
    return cache[sha]


def collected(
    model: LoadedModel, source: CalibrationSource, config: CollectConfig, progress: Callable[[int, int], None] | None = None
) -> StatsKey:
    """Run (or reuse) a collection and return the key under which its statistics are stored."""
    key = StatsKey(model.sha256, source.data_id, (config.samples, config.bins, config.batch_size, config.ema_constant))
    store = _stats_store()
    if key not in store:
        store[key] = collect(model, source, config, progress=progress)
        while len(store) > 8:
            store.pop(next(iter(store)))
    remember_source(source)
    return key


@st.cache_resource(show_spinner=False, max_entries=1)
def _sources() -> dict[str, CalibrationSource]:
    return {}


def remember_source(source: CalibrationSource) -> None:
    """Keep an opened calibration set (by data id) so analysis pages can stream it again."""
    store = _sources()
    store[source.data_id] = source
    while len(store) > 8:
        store.pop(next(iter(store)))


def model_and_source() -> tuple[LoadedModel | None, CalibrationSource | None]:
    """The model and data the current statistics came from, if this server still has them."""
    key = st.session_state.get(STATS_KEY)
    if key is None:
        return None, None
    return _model_cache().get(key.model_sha256), _sources().get(key.data_id)


def put_stats(stats: CalibrationStats) -> StatsKey:
    """Register statistics opened from a file."""
    key = StatsKey(stats.model_sha256, stats.data_id, ("file", stats.samples, stats.config.bins))
    _stats_store()[key] = stats
    return key


def current_stats() -> CalibrationStats | None:
    key = st.session_state.get(STATS_KEY)
    if key is None:
        return None
    return _stats_store().get(key)


@st.cache_resource(show_spinner=False, max_entries=64)
def _tables(key: StatsKey, method: str, config: MethodConfig) -> CalibrationTable:
    stats = _stats_store()[key]
    return calibrate(stats, method, config)


def table_for(method: str, config: MethodConfig | None = None) -> CalibrationTable | None:
    key = st.session_state.get(STATS_KEY)
    if key is None or key not in _stats_store():
        return None
    return _tables(key, method, config or MethodConfig())


def need_stats() -> CalibrationStats:
    """The current statistics, or a hint to go Home and stop the page."""
    stats = current_stats()
    if stats is None:
        st.info("No statistics yet: choose a model and calibration data on the Home page and run the collection.")
        st.page_link("pages/0_Home.py", label="Go to Home", icon=":material/home:")
        st.stop()
    return stats


@st.cache_resource(show_spinner=False, max_entries=16)
def _overview(key: StatsKey, config: MethodConfig):
    return overview(_stats_store()[key], config)


def overview_table():
    """Every tensor with every method's threshold and clipped %, computed once per statistics."""
    key = st.session_state.get(STATS_KEY)
    return _overview(key, review().config)


def review() -> Review:
    if REVIEW not in st.session_state:
        st.session_state[REVIEW] = Review()
    return st.session_state[REVIEW]


def set_review(new: Review) -> None:
    st.session_state[REVIEW] = new


@st.cache_resource(show_spinner=False, max_entries=32)
def _model_table(key: StatsKey, review_json: str, per_channel: bool) -> CalibrationTable:
    stats = _stats_store()[key]
    r = review_from_dict(json.loads(review_json))
    table = build_table(stats, r, base=_tables(key, r.default_method, r.config))
    model = _model_cache().get(key.model_sha256)
    if model is None:
        return table
    return apply_model(table, model, per_channel, weight_overrides=r.weight_scales, weight_method="eq")


def current_table() -> CalibrationTable:
    """The table of the current review (default method, per-tensor choices, notes), with weight
    scales, fused shared scales and requantization multipliers when the model is loaded."""
    need_stats()
    r = review()
    return _model_table(st.session_state[STATS_KEY], json.dumps(review_to_dict(r), sort_keys=True), per_channel())


def per_channel() -> bool:
    return bool(st.session_state.get(PER_CHANNEL, True))


@st.cache_resource(show_spinner=False, max_entries=8)
def weights_of(model_sha256: str, per_channel: bool) -> dict[str, WeightQuant]:
    """Per-channel (or per-tensor) weight scales of the folded model, keyed by initializer."""
    model = _model_cache()[model_sha256]
    return weight_scales(fold_batchnorm(model.proto)[0], per_channel)


def tensor_picker(names: list[str], label_of: Callable[[str], str], widget_key: str, label: str = "Tensor (type to search)") -> str:
    """A selectbox whose choice is shared by every page (widget state alone is dropped on page switch)."""
    current = st.session_state.get(TENSOR)
    if current not in names:
        current = names[0]
    st.session_state[widget_key] = current

    def _sync() -> None:
        st.session_state[TENSOR] = st.session_state[widget_key]

    choice = st.selectbox(label, names, format_func=label_of, key=widget_key, on_change=_sync)
    st.session_state[TENSOR] = choice
    return choice


# ---------------------------------------------------------------------------------------------
# Layer sensitivity: analyses and comparisons, stored by what they depend on (model, data, table,
# samples), run outside any cached function so the page can show progress.


@st.cache_resource(show_spinner=False, max_entries=1)
def _analysis_store() -> dict[tuple[Any, ...], Any]:
    return {}


def review_json(r: Review | None = None) -> str:
    return json.dumps(review_to_dict(r or review()), sort_keys=True)


def analysis_key(data_id: str, samples: int, extra: tuple[Any, ...] = ()) -> tuple[Any, ...]:
    """What an analysis of the current table depends on."""
    return (st.session_state.get(STATS_KEY), review_json(), per_channel(), data_id, int(samples), *extra)


def stored(key: tuple[Any, ...]) -> Any:
    return _analysis_store().get(key)


def store(key: tuple[Any, ...], value: Any) -> Any:
    s = _analysis_store()
    s[key] = value
    while len(s) > 32:
        s.pop(next(iter(s)))
    return value


@st.cache_resource(show_spinner=False, max_entries=32)
def model_table_for(key: StatsKey, method: str, config: MethodConfig, per_channel: bool) -> CalibrationTable:
    """One method everywhere, with the model's fused scales, weight scales and requantization."""
    table = _tables(key, method, config)
    model = _model_cache().get(key.model_sha256)
    return apply_model(table, model, per_channel) if model is not None else table


@st.cache_resource(show_spinner=False, max_entries=4)
def _sample_shas() -> dict[str, str]:
    import hashlib

    from quantviz.samples import SAMPLES

    return {hashlib.sha256(s.model.read_bytes()).hexdigest(): k for k, s in SAMPLES.items() if s.model.is_file()}


def sample_key_of(model: LoadedModel) -> str | None:
    """The bundled sample this model is, if any (by content)."""
    return _sample_shas().get(model.sha256)


@st.cache_resource(show_spinner=False, max_entries=8)
def labelled_sample_source(sample_key: str, model_sha256: str) -> tuple[CalibrationSource, Any]:
    """A bundled sample's labelled evaluation set, opened once (it is read on every rerun otherwise)."""
    from quantviz.data import open_source
    from quantviz.samples import SAMPLES
    from quantviz.sensitivity import default_labels

    path = SAMPLES[sample_key].eval
    return open_source(path, _model_cache()[model_sha256].inputs), default_labels(path)


def cached(key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
    """A derived result (a figure of a stored analysis...) kept beside it: reruns rebuild nothing."""
    value = stored(key)
    return value if value is not None else store(key, make())


@st.cache_resource(show_spinner=False, max_entries=256)
def _method_rows(key: StatsKey, tensor: str, config: MethodConfig):
    from quantviz.summary import all_thresholds, method_table

    t = _stats_store()[key].tensors[tensor]
    results = all_thresholds(t, config)
    return list(results), method_table(t, results)


def method_rows(tensor: str):
    """(method names, table of thresholds, clipped % and MSE per method) of one tensor, computed once."""
    return _method_rows(st.session_state[STATS_KEY], tensor, review().config)
