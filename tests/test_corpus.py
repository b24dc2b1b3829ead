"""Conformance corpus (issue 8): every peculiar model goes through collect -> every method -> analyze ->
every export, and the exported QDQ model, run in a plain onnxruntime session, reproduces analyze's
end-to-end cosine (computed here with numpy from the float and QDQ outputs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from quantviz.calib import METHODS
from quantviz.collect import collect
from quantviz.config import CollectConfig
from quantviz.data import open_source
from quantviz.easyquant import EQConfig, calibrate_eq
from quantviz.errors import QuantvizError
from quantviz.export.registry import FORMATS, ExportOptions, export_bytes, import_bytes
from quantviz.model import load_model
from quantviz.preflight import BLOCKING, preflight
from quantviz.sensitivity import analyze, best_method_table
from quantviz.table import calibrate_model
from tests.conftest import spec_session
from tests.corpus import CASES, SAMPLES, Case, already_quantized


def _feeds(case: Case, sess: ort.InferenceSession) -> list[dict[str, np.ndarray]]:
    """The samples in runs, built here from the case's arrays: a 0-d array is fed as is, an array with
    one axis more than the input is that input's value per sample (runs of one sample), otherwise runs
    take the model's fixed batch size (1 when it is dynamic)."""
    ranks = {i.name: len(i.shape) for i in sess.get_inputs()}
    fixed = [i.shape[0] for i in sess.get_inputs() if i.shape and isinstance(i.shape[0], int) and i.shape[0] > 0]
    per_sample = any(a.ndim == ranks[n] + 1 for n, a in case.data.items())
    step = 1 if per_sample or not fixed else fixed[0]
    feeds = []
    for s in range(0, SAMPLES, step):
        feed = {}
        for name, arr in case.data.items():
            if arr.ndim == 0:
                feed[name] = arr
            elif arr.ndim == ranks[name] + 1:
                feed[name] = arr[s]
            else:
                feed[name] = arr[s : s + step]
        feeds.append(feed)
    return feeds


def _cosines(ref: np.ndarray, test: np.ndarray) -> float:
    a, b = ref.reshape(-1).astype(np.float64), test.reshape(-1).astype(np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    return float(a @ b / (na * nb)) if na and nb else 0.0


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_full_chain(name: str, tmp_path: Path) -> None:
    case = CASES[name](tmp_path)
    model = load_model(case.path)
    assert not [i for i in preflight(model) if i.severity == BLOCKING]
    npz = tmp_path / "data.npz"
    # numpy's stub lets **arrays fill its allow_pickle: bool parameter
    np.savez(npz, **case.data)  # type: ignore[arg-type]
    source = open_source(npz, model.inputs)
    assert source.num_samples == SAMPLES
    stats = collect(model, source, CollectConfig(batch_size=4))
    assert stats.samples == SAMPLES
    tables = {m: calibrate_model(model, stats, m) for m in METHODS}
    for m, t in tables.items():
        assert t.tensors, f"{m} gave an empty table"
    try:
        tables["eq"] = calibrate_eq(model, stats, source, EQConfig(rounds=1, n=5, max_samples=4))
    except QuantvizError as exc:  # EQ searches Conv and Gemm layers only: it says so in a sentence
        assert "EQ found no Conv or Gemm layer" in str(exc), exc
    tables["best"], _ = best_method_table(model, stats, source, ("kl", "minmax"), samples=4)
    report = analyze(model, tables["kl"], source, batch_size=4)
    assert report.samples == SAMPLES
    for fmt in FORMATS:
        for table in (tables["kl"], tables["best"]):
            assert export_bytes(table, fmt, ExportOptions(model=model))
    qdq = onnx.load_from_string(export_bytes(tables["kl"], "qdq", ExportOptions(model=model)))
    q_sess = spec_session(qdq)
    # the float model as quantviz loaded it (a batch dimension declared 0 made dynamic: onnxruntime takes 0 literally)
    f_sess = ort.InferenceSession(model.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = [o.name for o in f_sess.get_outputs()]
    per_output: dict[str, list[float]] = {o: [] for o in outs}
    for feed in _feeds(case, f_sess):
        ref = dict(zip(outs, f_sess.run(outs, feed), strict=True))
        test = dict(zip(outs, q_sess.run(outs, feed), strict=True))
        for o in outs:
            for r, t in zip(ref[o].reshape(ref[o].shape[0] if ref[o].ndim else 1, -1), test[o].reshape(test[o].shape[0] if test[o].ndim else 1, -1), strict=True):
                per_output[o].append(_cosines(r, t))
    figures = {o.output: o.figures.cosine for o in report.outputs}
    for o in outs:
        if o in figures:
            assert abs(float(np.mean(per_output[o])) - figures[o]) < 1e-4, (o, np.mean(per_output[o]), figures[o])


def test_already_quantized_model_is_blocked(tmp_path: Path) -> None:
    model = load_model(already_quantized(tmp_path))
    blocking = [i for i in preflight(model) if i.severity == BLOCKING]
    assert blocking and "already quantized" in blocking[0].text
    assert "MatMulInteger" in blocking[0].text


def test_blocking_preflight_stops_collect_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from quantviz.cli import main

    path = already_quantized(tmp_path)
    np.savez(tmp_path / "d.npz", x=np.ones((4, 8), np.float32))
    assert main(["collect", str(path), "--data", str(tmp_path / "d.npz"), "-o", str(tmp_path / "s.npz")]) == 2
    err = capsys.readouterr().err
    assert "already quantized" in err and "Traceback" not in err
    assert not (tmp_path / "s.npz").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["calibrate", "{m}", "--data", "{d}", "--method", "kl", "-o", "{o}"],
        ["calibrate", "--stats", "{t}/none.npz", "--model", "{m}", "--method", "kl", "-o", "{o}"],
        ["analyze", "{m}", "--data", "{d}", "--table", "{t}/table.json", "-o", "{o}.csv"],
        ["export", "{t}/table.json", "--model", "{m}", "--format", "qdq", "-o", "{o}"],
        ["import", "{t}/table.json", "--model", "{m}", "-o", "{o}"],
    ],
    ids=["calibrate", "calibrate-stats", "analyze", "export", "import"],
)
def test_every_cli_command_names_an_already_quantized_model(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from quantviz.cli import main

    path = already_quantized(tmp_path)
    np.savez(tmp_path / "d.npz", x=np.ones((4, 8), np.float32))
    (tmp_path / "table.json").write_text('{"format": "quantviz-calibration-table", "version": 1, "tensors": {}}')
    out = tmp_path / "out.bin"
    args = [a.format(m=path, d=tmp_path / "d.npz", t=tmp_path, o=out) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already quantized" in err and "Traceback" not in err, err
    assert not list(tmp_path.glob("out.bin*"))


@pytest.mark.parametrize("name", ["if_subgraph", "loop_subgraph"])
def test_subgraph_tensors_are_said_and_stay_float_everywhere(name: str, tmp_path: Path) -> None:
    case = CASES[name](tmp_path)
    model = load_model(case.path)
    said = [i for i in preflight(model) if i.topic == "subgraph"]
    assert said and "not collected" in said[0].text and "stay float" in said[0].text
    proto = onnx.load(str(case.path))
    inner = {o for n in proto.graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH for m in a.g.node for o in m.output}
    assert inner
    # numpy's stub lets **arrays fill its allow_pickle: bool parameter
    np.savez(tmp_path / "d.npz", **case.data)  # type: ignore[arg-type]
    stats = collect(model, open_source(tmp_path / "d.npz", model.inputs), CollectConfig(batch_size=4))
    table = calibrate_model(model, stats, "kl")
    assert not inner & set(stats.tensors) and not inner & set(table.tensors)
    for fmt in FORMATS:
        data = export_bytes(table, fmt, ExportOptions(model=model))
        if fmt == "qdq":
            qdq = onnx.load_from_string(data)
            sub_ops = {m.op_type for n in qdq.graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH for m in a.g.node}
            assert not sub_ops & {"QuantizeLinear", "DequantizeLinear"}, sub_ops
        else:
            back = import_bytes(data, fmt, ExportOptions(model=model))
            assert back.tensors and not inner & set(back.tensors), fmt


def test_zero_samples_never_succeed(tmp_path: Path) -> None:
    case = CASES["batch_minus1"](tmp_path)
    model = load_model(case.path)
    np.savez(tmp_path / "d.npz", x=case.data["x"])
    stats = collect(model, open_source(tmp_path / "d.npz", model.inputs), CollectConfig(batch_size=5))
    assert stats.samples == SAMPLES  # -1 is a dynamic batch, not a batch of -1
    with pytest.raises(QuantvizError):
        collect(model, open_source(tmp_path / "d.npz", model.inputs), CollectConfig(samples=0))
