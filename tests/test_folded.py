"""The folded model is built once per loaded model and shared by the table, the weights and fusion."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import quantviz.folded
from quantviz.collect import collect
from quantviz.data import open_source
from quantviz.fold import FoldReport, fold_batchnorm
from quantviz.fusion import analyse
from quantviz.model import load_model
from quantviz.store import deep_size
from quantviz.table import calibrate_model
from quantviz.weights import weight_scales
from tests.graphs import conv_bn_relu


def test_the_fold_happens_once_for_every_table(monkeypatch: pytest.MonkeyPatch) -> None:
    model = load_model(conv_bn_relu().SerializeToString())
    stats = collect(model, open_source("synthetic:16", model.inputs))
    calls: list[int] = []
    real = fold_batchnorm

    def counting(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, FoldReport]:
        calls.append(1)
        return real(proto)

    monkeypatch.setattr(quantviz.folded, "fold_batchnorm", counting)
    tables = [calibrate_model(model, stats, m, per_channel=pc) for m in ("minmax", "kl") for pc in (True, False)]
    assert len(calls) == 1
    assert all(t.settings["folded_batchnorm"] for t in tables)  # the sample's BatchNorm was folded


def test_folded_facts_match_folding_afresh() -> None:
    model = load_model(conv_bn_relu(seed=3).SerializeToString())
    proto, report = fold_batchnorm(model.proto)
    assert model.folded.proto == proto
    assert [p.to_dict() for p in model.folded.fold.folded] == [p.to_dict() for p in report.folded]
    assert model.folded.fusion.groups == analyse(model.proto).groups
    for per_channel in (True, False):
        expected = weight_scales(proto, per_channel)
        got = model.folded.weights(per_channel)
        assert got.keys() == expected.keys()
        for name, w in expected.items():
            np.testing.assert_array_equal(got[name].scales, w.scales)


def test_the_store_counts_the_folded_copy() -> None:
    model = load_model(conv_bn_relu().SerializeToString())
    before = deep_size(model)
    assert model.folded.proto.ByteSize() > 0
    assert deep_size(model) >= before + model.folded.proto.ByteSize()
