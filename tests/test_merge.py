"""Merging statistics exactly: accumulators (moving averages included, bit for bit), files of separate
`collect --range` runs against one run over all samples, and the refusals of `quantviz merge`."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest

from quantviz import stats as stats_module
from quantviz.cli import main
from quantviz.errors import QuantvizError
from quantviz.merge import inexact_moving_average, merge_calibration_stats
from quantviz.stats import TensorAccumulator, load_stats, save_stats
from tests.conftest import SAMPLES

MODEL = SAMPLES / "digits_cnn.onnx"
DATA = SAMPLES / "digits_calib.npz"  # 256 samples


@dataclasses.dataclass
class Ran:
    returncode: int
    stderr: str


def run(*args: str | Path) -> Ran:
    """The command line in this process (the subprocess path is covered by tests/test_cli.py)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return Ran(code, err.getvalue())


def _batches(seed: int, n: int = 11) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = [(rng.standard_normal((int(rng.integers(1, 6)), 7)) * (1 + k) + 0.3 * k).astype(np.float32) for k in range(n)]
    out[3][0, :2] = [np.nan, np.inf]
    out[6][:] = np.nan  # a batch with nothing finite is not a batch of the moving average
    return out


def _ema_loop(batches: list[np.ndarray], c: float) -> tuple[float, float]:
    """The moving average as one stream computes it, written out here: x <- (1 - c) x + c * batch_x."""
    lo = hi = math.nan
    first = True
    for b in batches:
        f = b[np.isfinite(b)]
        if f.size == 0:
            continue
        if first:
            lo, hi, first = float(f.min()), float(f.max()), False
        else:
            lo = (1 - c) * lo + c * float(f.min())
            hi = (1 - c) * hi + c * float(f.max())
    return lo, hi


def _fed(batches: list[np.ndarray], c: float) -> TensorAccumulator:
    acc = TensorAccumulator("t", bins=64, ema_constant=c, fine_bins=256)
    for b in batches:
        acc.update(b)
    return acc


@pytest.mark.parametrize("c", [0.01, 0.37])
@pytest.mark.parametrize("cuts", [(1,), (5,), (2, 7), (1, 2, 3, 9)])
def test_moving_average_merges_bit_for_bit(c: float, cuts: tuple[int, ...]) -> None:
    batches = _batches(3)
    lo, hi = _ema_loop(batches, c)
    bounds = [0, *cuts, len(batches)]
    parts = [_fed(batches[a:b], c) for a, b in zip(bounds, bounds[1:], strict=False)]
    acc = parts[0]
    for p in parts[1:]:
        acc.merge(p)
    s = acc.result()
    assert (s.ema_min, s.ema_max) == (lo, hi)  # equal, not close
    finite = [b[np.isfinite(b)] for b in batches]
    want = np.array([[f.min(), f.max()] for f in finite if f.size], np.float64)
    np.testing.assert_array_equal(s.batch_ranges, want)
    assert s.batches == len(want)


def test_record_is_bounded_and_merge_stays_exact_while_the_later_part_keeps_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats_module, "BATCH_RECORD_MAX", 4)
    batches = [b for b in _batches(5) if np.isfinite(b).any()]  # 10 batches
    c = 0.3
    lo, hi = _ema_loop(batches, c)
    whole = _fed(batches, c).result()
    assert whole.batch_ranges is None and whole.batches == 10  # past the bound: dropped
    # A left part past the bound, a right part within it: exact, the record of the whole dropped.
    left = _fed(batches[:7], c)
    left.merge(_fed(batches[7:], c))
    assert (left.result().ema_min, left.result().ema_max) == (lo, hi)
    assert left.result().batch_ranges is None
    # A right part past the bound: merged to rounding (re-based onto the left's average).
    a = _fed(batches[:3], c)
    a.merge(_fed(batches[3:], c))
    assert a.result().ema_min == pytest.approx(lo, rel=1e-12) and a.result().ema_max == pytest.approx(hi, rel=1e-12)
    # Two parts within the bound keep their joint record
    b = _fed(batches[:2], c)
    b.merge(_fed(batches[2:4], c))
    np.testing.assert_array_equal(
        b.result().batch_ranges, [[x[np.isfinite(x)].min(), x[np.isfinite(x)].max()] for x in batches[:4]]
    )


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _assert_files_equal(a: Path, b: Path) -> None:
    x, y = _arrays(a), _arrays(b)
    assert sorted(x) == sorted(y)
    for k in x:
        assert x[k].dtype == y[k].dtype, k
        np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("merge")
    out = {"whole": d / "whole.npz"}
    r = run("collect", MODEL, "--data", DATA, "--batch-size", "16", "-o", out["whole"])
    assert r.returncode == 0, r.stderr
    for rng in ("0:48", "48:160", "160:256"):
        out[rng] = d / f"s{rng.replace(':', '_')}.npz"
        r = run("collect", MODEL, "--data", DATA, "--batch-size", "16", "--range", rng, "-o", out[rng])
        assert r.returncode == 0, r.stderr
    out["dir"] = d
    return out


def test_merge_of_separate_runs_equals_one_run_bit_for_bit(shards: dict[str, Path]) -> None:
    merged = shards["dir"] / "merged.npz"
    r = run("merge", shards["0:48"], shards["48:160"], shards["160:256"], "-o", merged)
    assert r.returncode == 0, r.stderr
    assert "256 samples" in r.stderr
    _assert_files_equal(merged, shards["whole"])  # every member: header, scalars (moving averages), histograms, record
    s = load_stats(shards["48:160"])
    assert s.data_range == (48, 160) and s.samples == 112
    assert all(t.batch_ranges is not None and t.batch_ranges.shape == (7, 2) for t in s.tensors.values())
    # a tree of merges gives the same file: (0:48 + 48:160) + 160:256
    left = shards["dir"] / "left.npz"
    assert run("merge", shards["0:48"], shards["48:160"], "-o", left).returncode == 0
    assert load_stats(left).data_range is None  # starts at sample 0: what --samples 160 would write
    tree = shards["dir"] / "tree.npz"
    assert run("merge", left, shards["160:256"], "-o", tree).returncode == 0
    _assert_files_equal(tree, shards["whole"])


def test_files_of_other_data_merge_as_their_concatenation(shards: dict[str, Path], tmp_path: Path) -> None:
    """Two data files: the merge equals one run over the two concatenated (only the data's name and id differ)."""
    with np.load(DATA) as z:
        x = z["input"]
    np.savez(tmp_path / "a.npz", input=x[:96])
    np.savez(tmp_path / "b.npz", input=x[96:])
    for name in ("a", "b"):
        assert (
            run(
                "collect", MODEL, "--data", tmp_path / f"{name}.npz", "--batch-size", "16", "-o", tmp_path / f"{name}s.npz"
            ).returncode
            == 0
        )
    assert run("merge", tmp_path / "as.npz", tmp_path / "bs.npz", "-o", tmp_path / "m.npz").returncode == 0
    m, whole = load_stats(tmp_path / "m.npz"), load_stats(shards["whole"])
    assert m.samples == 256 and m.data_id != whole.data_id and "a.npz" in m.data_description and "b.npz" in m.data_description
    same = dataclasses.replace(m, data_description=whole.data_description, data_id=whole.data_id)
    save_stats(same, tmp_path / "same.npz")
    _assert_files_equal(tmp_path / "same.npz", shards["whole"])


def _one_sentence(r: Ran, pattern: str) -> None:
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert pattern in lines[0], lines[0]


def test_merge_refuses_other_models_settings_and_ranges(shards: dict[str, Path], tmp_path: Path) -> None:
    a, b = shards["0:48"], shards["48:160"]
    other = dataclasses.replace(load_stats(b), model_sha256="0" * 64, model_name="other.onnx")
    save_stats(other, tmp_path / "other_model.npz")
    _one_sentence(run("merge", a, tmp_path / "other_model.npz", "-o", tmp_path / "x.npz"), "another model")
    r = run(
        "collect", MODEL, "--data", DATA, "--batch-size", "16", "--bins", "1024", "--range", "48:160", "-o", tmp_path / "bins.npz"
    )
    assert r.returncode == 0, r.stderr
    _one_sentence(run("merge", a, tmp_path / "bins.npz", "-o", tmp_path / "x.npz"), "bins 1024")
    _one_sentence(run("merge", a, shards["160:256"], "-o", tmp_path / "x.npz"), "leave samples 48..159 out")
    _one_sentence(run("merge", b, a, "-o", tmp_path / "x.npz"), "overlap")
    _one_sentence(run("merge", a, "-o", tmp_path / "x.npz"), "at least two")
    _one_sentence(
        run("collect", MODEL, "--data", DATA, "--range", "4:20", "-o", tmp_path / "x.npz"), "multiple of the batch size"
    )
    _one_sentence(run("collect", MODEL, "--data", DATA, "--range", "8:2", "-o", tmp_path / "x.npz"), "START < STOP")
    assert not (tmp_path / "x.npz").exists()


def _without_record(path: Path) -> bytes:
    """The file as a quantviz without per-batch records wrote it."""
    src = zipfile.ZipFile(path)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            if not info.filename.startswith("batch_"):
                dst.writestr(info, src.read(info))
    return buf.getvalue()


def test_files_without_record_load_and_merge_to_rounding(shards: dict[str, Path]) -> None:
    old = load_stats(_without_record(shards["48:160"]))
    assert all(t.batch_ranges is None for t in old.tensors.values())
    first = load_stats(shards["0:48"])
    assert inexact_moving_average([first, old]) == list(first.tensors)
    merged = merge_calibration_stats([first, old])
    exact = merge_calibration_stats([first, load_stats(shards["48:160"])])
    for n, t in merged.tensors.items():
        assert t.ema_min == pytest.approx(exact.tensors[n].ema_min, rel=1e-12, abs=1e-300)
        assert t.ema_max == pytest.approx(exact.tensors[n].ema_max, rel=1e-12, abs=1e-300)
        assert t.batch_ranges is None and t.count == exact.tensors[n].count
    with pytest.raises(QuantvizError, match="Nothing to merge"):
        merge_calibration_stats([])
