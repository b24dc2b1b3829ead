"""quantviz.stats: the per-tensor accumulator against numpy and a plain loop; the stats file round trip."""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from quantviz.config import STATS_VERSION, CollectConfig
from quantviz.errors import QuantvizError
from quantviz.histogram import histogram_of
from quantviz.model import TensorInfo
from quantviz.stats import CalibrationStats, TensorAccumulator, TensorStats, load_stats, merge_stats, save_stats

C = 0.01


def _batches(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(9):
        b = (rng.standard_normal((int(rng.integers(1, 5)), 3, 4)) * (1 + 3 * k) + k - 4).astype(np.float32)
        b.flat[0] = 0.0
        out.append(b)
    out[2].flat[1:4] = [np.nan, np.inf, -np.inf]
    out[5].flat[2] = np.inf
    return out


def _ema_loop(batches: list[np.ndarray], c: float) -> tuple[float, float]:
    """x <- (1 - c) x + c * batch_x over batches with finite values; the first initialises."""
    lo: float | None = None
    hi: float | None = None
    for b in batches:
        f = b[np.isfinite(b)]
        if f.size == 0:
            continue
        if lo is None or hi is None:
            lo, hi = float(f.min()), float(f.max())
        else:
            lo = (1 - c) * lo + c * float(f.min())
            hi = (1 - c) * hi + c * float(f.max())
    assert lo is not None and hi is not None, "no finite value in any batch"
    return lo, hi


def _fed(batches: list[np.ndarray], name: str = "t", c: float = C, bins: int = 64) -> TensorAccumulator:
    acc = TensorAccumulator(name, bins=bins, ema_constant=c)
    for b in batches:
        acc.update(b)
    return acc


def _assert_stats_equal(a: TensorStats, b: TensorStats, ema_rtol: float = 0.0) -> None:
    for k in ("name", "count", "nan_count", "posinf_count", "neginf_count", "zero_count", "batches"):
        assert getattr(a, k) == getattr(b, k), k
    for k in ("min", "max", "first_batch_min", "first_batch_max"):
        np.testing.assert_equal(getattr(a, k), getattr(b, k), err_msg=k)
    for k in ("ema_min", "ema_max"):
        np.testing.assert_allclose(getattr(a, k), getattr(b, k), rtol=ema_rtol, atol=0, err_msg=k)
    for h in ("abs_hist", "signed_hist"):
        np.testing.assert_array_equal(getattr(a, h).counts, getattr(b, h).counts)
        np.testing.assert_array_equal(getattr(a, h).edges, getattr(b, h).edges)


def test_accumulator_against_numpy_and_loop() -> None:
    batches = _batches()
    s = _fed(batches).result()
    allv = np.concatenate([b.ravel() for b in batches])
    finite = allv[np.isfinite(allv)]
    assert s.min == float(finite.min()) and s.max == float(finite.max())
    assert s.absmax == float(np.abs(finite).max())
    assert s.count == finite.size
    assert s.nan_count == int(np.isnan(allv).sum()) == 1
    assert s.posinf_count == int((allv == np.inf).sum()) == 2
    assert s.neginf_count == int((allv == -np.inf).sum()) == 1
    assert s.zero_count == int((finite == 0).sum())
    assert s.batches == len(batches)
    lo, hi = _ema_loop(batches, C)
    assert s.ema_min == pytest.approx(lo, rel=1e-12) and s.ema_max == pytest.approx(hi, rel=1e-12)
    assert (s.first_batch_min, s.first_batch_max) == (float(batches[0].min()), float(batches[0].max()))
    # histograms hold the finite values only, exactly as histogram_of sees them
    np.testing.assert_array_equal(s.abs_hist.counts, histogram_of(finite, 64, signed=False).counts)
    np.testing.assert_array_equal(s.signed_hist.counts, histogram_of(finite, 64, signed=True).counts)
    assert s.abs_hist.total == finite.size


def test_nonfinite_never_in_range() -> None:
    acc = TensorAccumulator("t", bins=16)
    acc.update(np.array([np.inf, -np.inf, np.nan, 2.0, -1.0], np.float32))
    s = acc.result()
    assert (s.min, s.max, s.absmax) == (-1.0, 2.0, 2.0)
    assert s.nonfinite == 3 and s.count == 2


@pytest.mark.parametrize(
    "batches",
    [[], [np.zeros((0, 3), np.float32)], [np.array([np.nan, np.nan], np.float32)], [np.array([np.inf, -np.inf]), np.zeros(0)]],
    ids=["nothing", "zero-elements", "only-nan", "only-inf"],
)
def test_empty_tensor_reported_as_empty(batches: list[np.ndarray]) -> None:
    s = _fed(batches).result()
    assert s.empty and s.count == 0
    assert math.isnan(s.min) and math.isnan(s.max) and math.isnan(s.absmax)
    assert math.isnan(s.ema_min) and math.isnan(s.ema_max)
    assert s.abs_hist.total == 0 and s.signed_hist.total == 0


def test_float16_and_float64_batches() -> None:
    x16 = np.array([1.5, -2.25, 0.0], np.float16)
    x64 = np.array([1e-300, -3.0], np.float64)
    s = _fed([x16, x64]).result()
    assert (s.min, s.max, s.count, s.zero_count) == (-3.0, 1.5, 5, 1)


@pytest.mark.parametrize("split", [1, 4, 8])
@pytest.mark.parametrize("c", [0.01, 0.3, 1.0])
def test_merge_equals_one_stream(split: int, c: float) -> None:
    batches = _batches(1)
    whole = _fed(batches, c=c).result()
    a, b = _fed(batches[:split], c=c), _fed(batches[split:], c=c)
    a.merge(b)
    _assert_stats_equal(a.result(), whole, ema_rtol=1e-12)
    lo, hi = _ema_loop(batches, c)
    assert a.result().ema_min == pytest.approx(lo, rel=1e-12)
    # merge of / with an empty accumulator changes nothing
    e = TensorAccumulator("t", bins=64, ema_constant=c)
    e.merge(_fed(batches, c=c))
    _assert_stats_equal(e.result(), whole)
    f = _fed(batches, c=c)
    f.merge(TensorAccumulator("t", bins=64, ema_constant=c))
    _assert_stats_equal(f.result(), whole)


@pytest.mark.parametrize("c", [C, 0.3])
def test_merge_stats_pure_function(c: float) -> None:
    batches = _batches(2)
    a, b = _fed(batches[:3], c=c).result(), _fed(batches[3:], c=c).result()
    a_counts = a.abs_hist.counts.copy()
    merged = merge_stats(a, b, ema_constant=c)
    _assert_stats_equal(merged, _fed(batches, c=c).result(), ema_rtol=1e-12)
    np.testing.assert_array_equal(a.abs_hist.counts, a_counts)  # inputs untouched
    with pytest.raises(QuantvizError, match="different tensors"):
        merge_stats(a, _fed(batches, name="other").result())


def test_bad_ema_constant() -> None:
    with pytest.raises(QuantvizError, match="moving-average constant"):
        TensorAccumulator("t", ema_constant=0.0)


# ---------------------------------------------------------------- the statistics file


def _stats() -> CalibrationStats:
    batches = _batches(4)
    tensors = {
        "x": _fed(batches, "x").result(),
        "empty": _fed([np.array([np.nan], np.float32)], "empty").result(),
        "y": _fed([b * 3 for b in batches[:2]], "y").result(),
    }
    infos = {
        "x": TensorInfo("x", "input", "", "Input", ("N", 3, 4), "float32", ("relu",)),
        "y": TensorInfo("y", "activation", "relu", "Relu", ("N", 3, 4), "float32", ()),
    }
    return CalibrationStats(
        "m.onnx", "ab" * 32, "data.npz", "cd" * 32, False, 17, CollectConfig(samples=17, bins=64), tensors, infos
    )


def test_round_trip(tmp_path: Path) -> None:
    stats = _stats()
    path = tmp_path / "s.npz"
    save_stats(stats, path)
    back = load_stats(path)
    for k in ("model_name", "model_sha256", "data_description", "data_id", "synthetic", "samples", "config", "infos"):
        assert getattr(back, k) == getattr(stats, k), k
    assert list(back.tensors) == list(stats.tensors)
    for n in stats.tensors:
        _assert_stats_equal(back.tensors[n], stats.tensors[n])
    # bytes and file objects as well
    buf = io.BytesIO()
    save_stats(stats, buf)
    assert list(load_stats(buf.getvalue()).tensors) == list(stats.tensors)
    # opens with plain numpy, no pickles
    with np.load(path, allow_pickle=False) as z:
        assert json.loads(str(z["header"]))["version"] == STATS_VERSION


def _saved(stats: CalibrationStats) -> bytes:
    buf = io.BytesIO()
    save_stats(stats, buf)
    return buf.getvalue()


def _rewrite(raw: bytes, edit: Callable[[dict[str, np.ndarray]], object]) -> bytes:
    """The same .npz with its arrays passed through edit(dict) (for damaged/forged files)."""
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    edit(arrays)
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def test_load_rejects_random_npz() -> None:
    buf = io.BytesIO()
    np.savez(buf, weights=np.arange(5))
    with pytest.raises(QuantvizError, match="not a quantviz statistics file"):
        load_stats(buf.getvalue())


def test_load_rejects_truncated_file(tmp_path: Path) -> None:
    raw = _saved(_stats())
    for cut in (len(raw) // 2, len(raw) - 10, 30):
        p = tmp_path / "cut.npz"
        p.write_bytes(raw[:cut])
        with pytest.raises(QuantvizError, match="not a readable quantviz statistics file"):
            load_stats(p)


def test_load_rejects_pickles() -> None:
    def add_object(a: dict[str, np.ndarray]) -> None:
        a["scalars"] = np.array([{"evil": 1}], dtype=object)

    with np.errstate(all="ignore"):
        buf = io.BytesIO()
        raw = _saved(_stats())
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        add_object(arrays)
        np.savez(buf, **arrays, allow_pickle=True)
    with pytest.raises(QuantvizError, match="Python objects"):
        load_stats(buf.getvalue())


def test_load_rejects_newer_version() -> None:
    def bump(a: dict[str, np.ndarray]) -> None:
        h = json.loads(str(a["header"]))
        h["version"] = STATS_VERSION + 1
        a["header"] = np.array(json.dumps(h))

    with pytest.raises(QuantvizError, match=rf"version {STATS_VERSION + 1}.*upgrade quantviz"):
        load_stats(_rewrite(_saved(_stats()), bump))


def test_load_rejects_damaged_header_and_arrays() -> None:
    def numeric_header(a: dict[str, np.ndarray]) -> None:
        a["header"] = np.array(3)

    with pytest.raises(QuantvizError, match="not a quantviz statistics file"):
        load_stats(_rewrite(_saved(_stats()), numeric_header))

    def drop(a: dict[str, np.ndarray]) -> None:
        del a["abs_counts"]

    with pytest.raises(QuantvizError, match="damaged"):
        load_stats(_rewrite(_saved(_stats()), drop))


def test_load_not_a_zip() -> None:
    with pytest.raises(QuantvizError, match="not a readable quantviz statistics file"):
        load_stats(b"plain text, not numpy")
    assert not zipfile.is_zipfile(io.BytesIO(b"plain text"))


# ---------------------------------------------------------------- observed shapes


def test_shape_seen_is_each_dimension_largest_and_survives_the_file() -> None:
    acc = TensorAccumulator("t", bins=64)
    acc.update(np.ones((1, 3, 5), np.float32))  # the first run of one sample
    acc.update(np.ones((8, 3, 4), np.float32))
    acc.update(np.ones((2, 3, 6), np.float32), same_batch=True)
    assert acc.result().shape == (8, 3, 6)
    other = TensorAccumulator("t", bins=64)
    other.update(np.ones((9, 3, 2), np.float32))
    acc.merge(other)
    assert acc.result().shape == (9, 3, 6)
    stats = _stats()
    assert stats.tensors["x"].shape is not None
    back = load_stats(_saved(stats))
    assert {n: t.shape for n, t in back.tensors.items()} == {n: t.shape for n, t in stats.tensors.items()}


def test_files_without_shapes_still_load_and_bad_shapes_are_refused() -> None:
    raw = _saved(_stats())

    def drop(arrays: dict[str, np.ndarray]) -> None:
        h = json.loads(str(arrays["header"]))
        h.pop("shapes")
        arrays["header"] = np.array(json.dumps(h))

    assert all(t.shape is None for t in load_stats(_rewrite(raw, drop)).tensors.values())
    for bad in ({"x": [-1]}, {"x": "3x4"}, {"nope": [1]}, [1, 2]):

        def forge(arrays: dict[str, np.ndarray], bad: object = bad) -> None:
            h = json.loads(str(arrays["header"]))
            h["shapes"] = bad
            arrays["header"] = np.array(json.dumps(h))

        with pytest.raises(QuantvizError, match="shapes"):
            load_stats(_rewrite(raw, forge))
