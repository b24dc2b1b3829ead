"""Collection on a real local Ray cluster (tests/conftest.py: ray_cluster) equals one process's, bit for bit.

Oracle: quantviz.collect.collect in this process, written to a statistics file; the Ray collection's
file must hold the same members with the same bytes (header, every scalar including the moving
averages, every histogram, the per-batch record)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from quantviz.cli import main
from quantviz.collect import collect
from quantviz.config import CollectConfig
from quantviz.data import ImagePreprocess, open_source
from quantviz.distributed import ClusterConfig, ClusterRun, collect_on_cluster, import_ray
from quantviz.errors import CancelledError, QuantvizError
from quantviz.model import load_model
from quantviz.stats import CalibrationStats, stats_arrays
from tests import graphs
from tests.conftest import SAMPLES

# A real cluster starts once for the session (about 10 s): slow for `make test-fast`, run by `make test`.
pytestmark = [pytest.mark.usefixtures("ray_cluster"), pytest.mark.ray, pytest.mark.slow]


def assert_same_stats(a: CalibrationStats, b: CalibrationStats) -> None:
    x, y = stats_arrays(a), stats_arrays(b)
    assert sorted(x) == sorted(y)
    for k in x:
        assert x[k].dtype == y[k].dtype, k
        np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _single_and_ray(
    model_path: Path, data: str | Path, config: CollectConfig, shards: int, **kw: Any
) -> tuple[CalibrationStats, ClusterRun]:
    model = load_model(model_path)
    pre = kw.get("preprocess")
    single = collect(model, open_source(data, model.inputs, preprocess=pre), config)
    run = collect_on_cluster(model, model_path, data, config, ClusterConfig(shards=shards), **kw)
    return single, run


@pytest.mark.parametrize("model_name", ["digits_cnn.onnx", "digits_resnet.onnx"])
def test_four_shards_equal_one_process_on_the_samples(model_name: str) -> None:
    config = (
        CollectConfig(batch_size=16, samples=200) if model_name == "digits_cnn.onnx" else CollectConfig(batch_size=4, samples=16)
    )
    data = SAMPLES / ("digits_calib.npz" if model_name == "digits_cnn.onnx" else "digits32_calib.npz")
    seen: list[tuple[int, int]] = []
    single, run = _single_and_ray(SAMPLES / model_name, data, config, 4, progress=lambda d, t: seen.append((d, t)))
    assert len(run.shards) == 4 and run.stats.samples == config.samples
    assert_same_stats(run.stats, single)
    assert seen[0] == (0, config.samples) and seen[-1] == (config.samples, config.samples)
    assert 1 <= run.workers <= 2 and all(s.nbytes > 0 for s in run.shards)


@pytest.fixture(scope="module")
def deep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A generated model of 316 tensors (tests/graphs.py) and 48 samples for it, as an .npy."""
    d = tmp_path_factory.mktemp("deep")
    onnx.save_model(graphs.deep_residual(), str(d / "deep.onnx"))
    np.save(d / "x.npy", np.random.default_rng(1).standard_normal((48, 4, 8, 8)).astype(np.float32))
    return d / "deep.onnx", d / "x.npy"


DEEP_CONFIG = CollectConfig(batch_size=4, fine_bins=4096)


def test_a_generated_model_of_300_tensors(deep: tuple[Path, Path]) -> None:
    single, run = _single_and_ray(*deep, DEEP_CONFIG, 4)
    assert len(single.tensors) >= 300
    assert_same_stats(run.stats, single)


def _image_folder(tmp_path: Path, n: int, bad: int | None = None) -> Path:
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for i in range(n):
        path = folder / f"img{i:03d}.png"
        if i == bad:
            path.write_bytes(b"not an image")
        else:
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(path)
    return folder


def test_image_folder_shards_are_files(tmp_path: Path) -> None:
    folder = _image_folder(tmp_path, 40)
    pre = ImagePreprocess(color="gray")
    single, run = _single_and_ray(SAMPLES / "digits_cnn.onnx", folder, CollectConfig(batch_size=4), 3, preprocess=pre)
    assert [(s.start, s.stop) for s in run.shards] == [(0, 12), (12, 24), (24, 40)]
    assert_same_stats(run.stats, single)


def test_a_shard_with_bad_data_fails_the_run_naming_it(tmp_path: Path) -> None:
    folder = _image_folder(tmp_path, 32, bad=27)  # in the 4th of 4 shards (samples 24..31)
    model = load_model(SAMPLES / "digits_cnn.onnx")
    with pytest.raises(QuantvizError) as info:
        collect_on_cluster(
            model, SAMPLES / "digits_cnn.onnx", folder, CollectConfig(batch_size=4), ClusterConfig(shards=4),
            preprocess=ImagePreprocess(color="gray"),
        )  # fmt: skip
    text = str(info.value)
    assert text.startswith("Shard 4 of 4 (samples 24..31 of folder 'images') failed: 'img027.png' is not a readable image")
    assert "\n" not in text


def _shard_pids() -> list[int]:
    """Worker processes of this user running a quantviz shard now (Ray titles them ray::<task name>)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if cmd.startswith(b"ray::quantviz shard"):
                pids.append(int(entry.name))
    return pids


def test_a_worker_killed_mid_run_leaves_the_result_unchanged(deep: tuple[Path, Path]) -> None:
    path, data = deep
    config = DEEP_CONFIG
    model = load_model(path)
    single = collect(model, open_source(data, model.inputs), config)
    killed: list[int] = []

    def kill_one() -> None:
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline:
            pids = _shard_pids()
            if pids:
                os.kill(pids[0], signal.SIGKILL)  # a worker this test's cluster started
                killed.append(pids[0])
            time.sleep(0.01)

    killer = threading.Thread(target=kill_one)
    killer.start()
    try:
        run = collect_on_cluster(model, path, data, config, ClusterConfig(shards=4))
    finally:
        killer.join()
    assert killed, "no shard was seen running"
    assert_same_stats(run.stats, single)
    assert sum(s.stop - s.start for s in run.shards) == 48 and killed[0] not in {s.pid for s in run.shards}


def test_cancel_stops_the_run() -> None:
    model = load_model(SAMPLES / "digits_cnn.onnx")
    with pytest.raises(CancelledError, match="cancelled after 0 of 256 samples"):
        collect_on_cluster(model, SAMPLES / "digits_cnn.onnx", SAMPLES / "digits_calib.npz", cancel=lambda: True)


def test_cli_collect_ray_equals_collect(tmp_path: Path) -> None:
    err = io.StringIO()
    argv = ["collect", str(SAMPLES / "digits_cnn.onnx"), "--data", str(SAMPLES / "digits_calib.npz"), "--batch-size", "32"]
    with contextlib.redirect_stderr(err):
        assert main([*argv, "-o", str(tmp_path / "one.npz")]) == 0
        assert main([*argv, "--ray", "--shards", "3", "-o", str(tmp_path / "ray.npz")]) == 0, err.getvalue()
    assert "ray: 3 shards on" in err.getvalue()
    with np.load(tmp_path / "one.npz") as a, np.load(tmp_path / "ray.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main([*argv, "--ray", "--range", "0:64", "-o", str(tmp_path / "x.npz")]) == 2
    assert err.getvalue().count("\n") == 1 and "--ray or --range" in err.getvalue()


def test_missing_ray_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as where it is not installed
    with pytest.raises(QuantvizError) as info:
        import_ray()
    assert "pip install -r requirements-ray.txt" in str(info.value) and "\n" not in str(info.value)


def test_best_method_candidates_fan_out_to_the_same_picks_and_table() -> None:
    from quantviz.export.qv_json import table_to_dict
    from quantviz.sensitivity import best_method_table

    path = SAMPLES / "digits_cnn.onnx"
    model = load_model(path)
    source = open_source(SAMPLES / "digits_calib.npz", model.inputs)
    stats = collect(model, source, CollectConfig(samples=64))
    methods = ["kl", "minmax", "percentile"]
    table, picks = best_method_table(model, stats, source, methods, samples=48)
    seen: list[tuple[int, int]] = []
    on_ray, ray_picks = best_method_table(
        model,
        stats,
        source,
        methods,
        samples=48,
        cluster=ClusterConfig(),
        model_source=path,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert ray_picks == picks  # every layer's pick and every method's cosine, equal
    assert len(picks) > 5
    assert table_to_dict(on_ray) == table_to_dict(table)
    assert seen[-1] == (3, 3)


def test_eq_isolated_fans_out_to_the_same_table() -> None:
    from quantviz.easyquant import EQConfig, calibrate_eq
    from quantviz.export.qv_json import table_to_dict

    path = SAMPLES / "digits_resnet.onnx"
    model = load_model(path)
    source = open_source(SAMPLES / "digits32_calib.npz", model.inputs)
    stats = collect(model, source, CollectConfig(samples=16, batch_size=8))
    config = EQConfig(rounds=1, n=3, max_samples=4, mode="isolated")
    one = calibrate_eq(model, stats, source, config)
    seen: list[tuple[int, int]] = []
    on_ray = calibrate_eq(
        model,
        stats,
        source,
        config,
        cluster=ClusterConfig(shards=2),
        model_source=path,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert table_to_dict(on_ray) == table_to_dict(one)  # every scale, every layer's trace of cosines
    assert len(one.settings["eq"]["layers"]) > 8 and seen[-1][0] == seen[-1][1]


@pytest.fixture(scope="module")
def cnn_table() -> Any:
    from quantviz.table import calibrate_model

    model = load_model(SAMPLES / "digits_cnn.onnx")
    stats = collect(model, open_source(SAMPLES / "digits_calib.npz", model.inputs), CollectConfig(samples=64))
    return calibrate_model(model, stats, "kl")


def test_analyze_isolated_error_fans_out_to_the_same_report(cnn_table: Any) -> None:
    import dataclasses

    from quantviz.sensitivity import analyze

    path = SAMPLES / "digits_cnn.onnx"
    model = load_model(path)
    source = open_source(SAMPLES / "digits_eval.npz", model.inputs)
    labels = np.load(SAMPLES / "digits_eval.npz")["label"]
    # batch_size 8 with a free batch dimension: the first sample alone, then batches of 8 (analyze's sizing)
    one = analyze(model, cnn_table, source, samples=41, batch_size=8, labels=labels)
    seen: list[tuple[int, int]] = []
    on_ray = analyze(
        model, cnn_table, source, samples=41, batch_size=8, labels=labels, cluster=ClusterConfig(shards=2), model_source=path,
        progress=lambda d, t: seen.append((d, t)),
    )  # fmt: skip
    for f in dataclasses.fields(one):
        assert getattr(on_ray, f.name) == getattr(one, f.name), f.name
    for a, b in zip(one.layers, on_ray.layers, strict=True):
        assert a == b, a.layer  # isolated, accumulated and the three parts: the same floats
    assert len(one.layers) > 10 and all(le.parts is not None for le in one.layers)
    assert any(le.isolated != le.accumulated for le in one.layers)  # the isolated figures are not the driver's
    assert one.has_labels and seen[-1] == (41 * 3, 41 * 3)  # the driver's pass and 2 runs of layers, in samples


def test_analyze_a_failing_run_of_layers_is_one_sentence(cnn_table: Any, tmp_path: Path) -> None:
    from quantviz.sensitivity import analyze

    proto = onnx.load(str(SAMPLES / "digits_cnn.onnx"))
    proto.producer_name = "analysed here"  # bytes no worker has seen yet
    path = tmp_path / "model.onnx"
    onnx.save_model(proto, str(path))
    model = load_model(path)
    path.write_bytes((SAMPLES / "digits_resnet.onnx").read_bytes())  # the file changes before the workers read it
    source = open_source(SAMPLES / "digits_eval.npz", model.inputs)
    with pytest.raises(QuantvizError) as info:
        analyze(model, cnn_table, source, samples=8, cluster=ClusterConfig(shards=2), model_source=path)
    text = str(info.value)
    # the first run to fail names its layers; its worker opened another model, which does not read this data
    assert re.match(r"The isolated error of layers (1\.\.9|10\.\.19) of 19 \('/[^']+' to '/[^']+'\) failed on the cluster: \S", text), text
    assert "\n" not in text
    with pytest.raises(CancelledError, match="cancelled after 0 of 8 samples"):
        analyze(model, cnn_table, source, samples=8, cluster=ClusterConfig(), model_source=SAMPLES / "digits_cnn.onnx", cancel=lambda: True)


def test_cli_analyze_ray_writes_the_same_layers_csv(tmp_path: Path, cnn_table: Any) -> None:
    from quantviz.export.qv_json import write_json

    table = tmp_path / "kl.json"
    write_json(cnn_table, table)
    argv = ["analyze", str(SAMPLES / "digits_cnn.onnx"), "--data", str(SAMPLES / "digits_eval.npz"), "--table", str(table)]
    argv += ["--samples", "40", "--batch-size", "16"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main([*argv, "-o", str(tmp_path / "one.csv")]) == 0, err.getvalue()
        assert main([*argv, "--ray", "--shards", "2", "-o", str(tmp_path / "ray.csv")]) == 0, err.getvalue()
    one, ray = (tmp_path / "one.csv").read_text(), (tmp_path / "ray.csv").read_text()
    assert one.count("\n") > 10 and ray == one
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main([*argv, "--ray", "--shards", "0", "-o", str(tmp_path / "x.csv")]) == 2
    assert err.getvalue().count("\n") == 1 and "--shards must be at least 1" in err.getvalue()
