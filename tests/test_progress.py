"""Long work says what runs, how far in which unit, and stops on a CancelToken before returning
anything: the best-method search (samples over every method's analysis) and EQ (layer groups)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from quantviz.calib import METHOD_LABELS
from quantviz.collect import collect
from quantviz.config import CollectConfig
from quantviz.data import open_source
from quantviz.easyquant import EQConfig, calibrate_eq
from quantviz.errors import CancelledError
from quantviz.model import load_model
from quantviz.progress import CancelToken, Eta, Step, duration_text, phased, text
from quantviz.sensitivity import analyze, best_method_picks
from quantviz.table import calibrate_model

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def test_eta_from_the_pace_so_far() -> None:
    now = [100.0]
    eta = Eta(clock=lambda: now[0])
    assert eta.left(Step("a", 0, 100, "samples")) is None  # the first report only starts the clock
    now[0] = 110.0
    assert eta.left(Step("a", 20, 100, "samples")) == pytest.approx(40.0)  # 20 in 10 s, 80 to go
    now[0] = 130.0
    assert eta.left(Step("a", 100, 100, "samples")) == 0.0
    assert text(Step("EQ", 3, 7, "layer groups"), 75.0) == "EQ: 3 / 7 layer groups · about 1 min 15 s left"
    assert text(Step("EQ", 7, 7, "layer groups"), 0.0) == "EQ: 7 / 7 layer groups"
    assert duration_text(3725) == "1 h 02 min" and duration_text(9.4) == "9 s"


def test_phased_counts_one_stretch_of_a_longer_run() -> None:
    got: list[Step] = []
    cb = phased(got.append, "Analysis with KL (2 of 3)", "samples", offset=32, grand_total=96)
    assert cb is not None and phased(None, "x") is None
    cb(8, 32)
    assert got == [Step("Analysis with KL (2 of 3)", 40, 96, "samples")]


@pytest.fixture(scope="module")
def digits():
    model = load_model(SAMPLES / "digits_cnn.onnx")
    source = open_source(SAMPLES / "digits_calib.npz", model.inputs)
    stats = collect(model, source, CollectConfig(samples=64))
    return model, source, stats


def test_best_method_search_names_each_method_and_cancels_within_the_run(digits) -> None:
    model, source, stats = digits
    steps: list[Step] = []
    token = CancelToken()

    def report(step: Step) -> None:
        steps.append(step)
        if "(2 of 3)" in step.phase and step.done > 32:
            token.cancel()  # asked from "outside" while the second analysis runs

    with pytest.raises(CancelledError, match="cancelled after"):
        best_method_picks(model, stats, source, ["kl", "minmax", "mse"], samples=32, steps=report, cancel=token)
    assert token.cancelled
    phases = list(dict.fromkeys(s.phase for s in steps))
    assert phases == [f"Analysis with {METHOD_LABELS[m]} ({i} of 3)" for i, m in ((1, "kl"), (2, "minmax"))]  # not MSE
    assert {s.unit for s in steps} == {"samples"} and {s.total for s in steps} == {96}
    assert steps[-1].done < 64  # stopped inside the second analysis, before its last batch
    # without a cancel the same search runs to the end
    picks, n = best_method_picks(model, stats, source, ["kl", "minmax"], samples=16)
    assert n == 16 and picks


def test_a_cancelled_analysis_leaves_what_was_there(digits) -> None:
    model, source, stats = digits
    table = calibrate_model(model, stats, "kl")
    before = analyze(model, table, source, samples=16)
    kept = {"analysis": before}
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        kept["analysis"] = analyze(model, calibrate_model(model, stats, "minmax"), source, samples=16, cancel=token)
    assert kept["analysis"] is before and before.layers[0].isolated.samples == 16


def test_eq_counts_layer_groups_and_cancels_between_them(digits) -> None:
    model, source, stats = digits
    seen: list[tuple[int, int]] = []
    token = CancelToken()

    def progress(done: int, total: int) -> None:
        seen.append((done, total))
        if done == 1:
            token.cancel()

    with pytest.raises(CancelledError, match=r"after 1 of \d+ layer groups"):
        calibrate_eq(model, stats, source, EQConfig(n=4, max_samples=8), progress=progress, cancel=token)
    total = seen[0][1]
    assert seen == [(0, total), (1, total)] and total > 1
    np.testing.assert_equal(total, seen[-1][1])
