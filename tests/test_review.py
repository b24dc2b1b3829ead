"""A review (per-tensor choices and notes) builds the table and survives its file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from quantviz.calib import MethodConfig
from quantviz.collect import collect
from quantviz.data import open_source
from quantviz.errors import QuantvizError
from quantviz.model import load_model
from quantviz.review import Choice, Review, build_table, load_review, review_bytes
from quantviz.stats import CalibrationStats, save_stats
from tests.graphs import conv_bn_relu


@pytest.fixture(scope="module")
def stats() -> CalibrationStats:
    model = load_model(conv_bn_relu().SerializeToString())
    return collect(model, open_source("synthetic:32", model.inputs))


def test_choices_override_method_and_notes_reach_the_table(stats: CalibrationStats) -> None:
    review = Review(default_method="kl")
    review = review.with_choice("relu_out", method="minmax", note="keep full range")
    review = review.with_choice("conv_out", override=1.25)
    review = review.with_choice("x", float_kept=True)
    table = build_table(stats, review)
    relu = stats.tensors["relu_out"]
    assert table.tensors["relu_out"].method == "minmax"
    assert table.tensors["relu_out"].threshold == relu.absmax
    assert table.tensors["relu_out"].note == "keep full range"
    assert table.tensors["conv_out"].method == "override"
    assert table.tensors["conv_out"].threshold == 1.25
    assert table.tensors["conv_out"].scale == float(np.float32(1.25) / np.float32(127))
    assert table.tensors["x"].float_kept
    assert table.tensors["bn_out"].method == "kl"


def test_review_file_round_trip_keeps_stats_choices_and_notes(stats: CalibrationStats) -> None:
    review = Review("minmax", MethodConfig(percentile=99.9)).with_choice("add_out", note="look at this Add", override=3.0)
    stats2, review2 = load_review(review_bytes(stats, review))
    assert review2 == review
    assert set(stats2.tensors) == set(stats.tensors)
    np.testing.assert_array_equal(stats2.tensors["add_out"].abs_hist.counts, stats.tensors["add_out"].abs_hist.counts)


def test_plain_stats_file_opens_with_empty_review(stats: CalibrationStats) -> None:
    buf = io.BytesIO()
    save_stats(stats, buf)
    _, review = load_review(buf.getvalue())
    assert review == Review()


def test_corrupt_review_gives_a_sentence(stats: CalibrationStats, tmp_path: Path) -> None:
    raw = review_bytes(stats, Review())
    with pytest.raises(QuantvizError, match="statistics file"):
        load_review(raw[: len(raw) // 2])
    with pytest.raises(QuantvizError):
        load_review(b"not a zip at all")


def test_bad_override_is_refused(stats: CalibrationStats) -> None:
    review = Review().with_choice("x", override=-1.0)
    with pytest.raises(QuantvizError, match="positive"):
        build_table(stats, review)


def test_resetting_a_choice_removes_it() -> None:
    r = Review().with_choice("a", method="minmax").with_choice("a", method=None)
    assert r.choices == {} and r.choice("a") == Choice()


def test_weight_scales_round_trip_and_bad_ones_are_named() -> None:
    from quantviz.review import Review, review_from_dict, review_to_dict

    r = Review(weight_scales={"conv.weight": (0.01, 0.02), "fc.weight": (0.5,)})
    r = r.with_choice("t", note="n")  # a choice keeps the weight scales
    back = review_from_dict(review_to_dict(r))
    assert back.weight_scales == {"conv.weight": (0.01, 0.02), "fc.weight": (0.5,)} and back.choice("t").note == "n"
    doc = review_to_dict(r)
    doc["weight_scales"]["conv.weight"] = [0.01, -1.0]
    with pytest.raises(QuantvizError, match="weight scales for 'conv.weight'"):
        review_from_dict(doc)
    del doc["weight_scales"]  # reviews written before weight scales existed still open
    assert review_from_dict(doc).weight_scales == {}
