"""A person sets a threshold for one tensor on the KL page and writes a note on a layer on the Layer
sensitivity page, saves the review file from Export, and reopens it in a new browser session (another
day, another person): the threshold and the note are back. A damaged review file gets a sentence and
loses nothing."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from playwright.sync_api import Browser, Page, expect

from tests.e2e.conftest import screenshot, settle
from tests.e2e.flows import (
    DATA,
    MODEL,
    after_rerun,
    download,
    float_tensors,
    go_to,
    keyed,
    metric,
    no_exception,
    open_home,
    run_all,
    upload,
    upload_rejected,
)

TENSOR = "/Relu_2_output_0"  # the ReLU after the residual Add: its scale is its own (no fused producer)
NOTE_LAYER = "/fc/Gemm"  # the classifier: its output is not fused with anything, so the note lands on it
NOTE = "reviewed: logits clip above 12, keep KL (checked with the eval set)"
NOTE_LABEL = "Note for the team's review"


def _node_output(name: str) -> str:
    return str(next(n.output[0] for n in onnx.load(str(MODEL)).graph.node if n.name == name))


def _open_layer(page: Page, layer: str) -> None:
    go_to(page, "Layer sensitivity", "Layer sensitivity")
    expect(page.get_by_role("heading", name="One layer")).to_be_visible(timeout=90_000)  # the analysis ran
    settle(page)
    box = page.get_by_role("combobox", name="Layer (worst first)")
    box.click()
    page.keyboard.type(layer)
    page.get_by_role("option").filter(has_text=layer).first.click()
    after_rerun(page)
    expect(box).to_have_value(re.compile("^" + re.escape(layer) + " "))


def _pick_tensor(page: Page, name: str) -> None:
    keyed(page, "kl_tensor").get_by_test_id("stSelectbox").click()
    page.keyboard.type(name)
    page.get_by_role("option").filter(has_text=name).first.click()
    after_rerun(page)
    expect(keyed(page, "kl_tensor").get_by_role("combobox")).to_have_value(re.compile("^" + re.escape(name) + " "))
    expect(page.get_by_test_id("stPlotlyChart")).to_have_count(1)


def _json_table(page: Page, dest: Path) -> dict[str, Any]:
    go_to(page, "Export", "Export")
    table: dict[str, Any] = json.loads(download(page, "export_json", dest))
    return table


def test_override_survives_the_review_file(
    page: Page, app_url: str, browser: Browser, browser_context_args: dict[str, Any], tmp_path: Path
) -> None:
    assert TENSOR in float_tensors(MODEL)
    noted = _node_output(NOTE_LAYER)
    assert noted in float_tensors(MODEL) and noted != TENSOR
    absmax = float(np.abs(run_all(MODEL, np.load(DATA)["input"])[TENSOR]).max())
    chosen = float(f"{0.8 * absmax:.4g}")  # a threshold inside the data's range, as a person would type it

    # --- session 1: choose, save -----------------------------------------------------------------
    open_home(page, app_url)
    go_to(page, "KL curves", "KL curves")
    _pick_tensor(page, TENSOR)
    typed = keyed(page, "kl_typed").locator("input")
    typed.fill(str(chosen))
    typed.press("Enter")
    after_rerun(page)
    use = keyed(page, "kl_use").locator("button")
    expect(use).to_have_text(f"Use {chosen:.4g} for this tensor")
    use.click()
    expect(page.get_by_test_id("stAlertContentSuccess").filter(has_text=TENSOR)).to_be_visible(timeout=30_000)
    settle(page)
    no_exception(page)
    screenshot(page, "review_01_override_set")

    _open_layer(page, NOTE_LAYER)
    note = page.get_by_label(NOTE_LABEL, exact=False)
    note.fill(NOTE)
    note.press("Control+Enter")  # a text area sends its value on Ctrl+Enter (or on blur)
    after_rerun(page)
    no_exception(page)
    screenshot(page, "review_01b_note_written")

    before = _json_table(page, tmp_path / "before.json")
    assert before["tensors"][TENSOR]["method"] == "override"
    assert before["tensors"][TENSOR]["threshold"] == chosen
    assert before["tensors"][TENSOR]["scale"] == float(np.float32(chosen) / np.float32(127))
    assert before["tensors"][noted]["note"] == NOTE
    assert metric(page, "Per-tensor choices") == "2"
    saved = tmp_path / "review.npz"
    download(page, "export_review", saved)
    with np.load(io.BytesIO(saved.read_bytes()), allow_pickle=False) as z:
        review = json.loads(str(z["review"]))
    assert set(review["choices"]) == {TENSOR, noted}
    assert review["choices"][TENSOR]["override"] == chosen and review["choices"][noted]["note"] == NOTE

    # --- session 2: a fresh browser context opens the file ---------------------------------------
    context = browser.new_context(**browser_context_args)
    try:
        other = context.new_page()
        open_home(other, app_url)
        upload(other, "stats_upload", saved)
        opened = other.get_by_test_id("stAlertContentSuccess").filter(has_text="Opened")
        expect(opened).to_be_visible(timeout=30_000)
        assert f"{len(float_tensors(MODEL))} tensors" in opened.inner_text()
        assert re.search(r"\b1 notes?\b", opened.inner_text()), opened.inner_text()
        assert re.search(r"\b2 choices\b", opened.inner_text()), opened.inner_text()
        no_exception(other)
        screenshot(other, "review_02_reopened")

        after = _json_table(other, tmp_path / "after.json")
        assert metric(other, "Per-tensor choices") == "2"
        assert after["tensors"] == before["tensors"]  # every threshold and note, the override included
        assert after["model"]["sha256"] == before["model"]["sha256"]

        go_to(other, "KL curves", "KL curves")
        _pick_tensor(other, TENSOR)
        expect(keyed(other, "kl_typed").locator("input")).to_have_value(f"{chosen:.6g}")  # the page's %.6g
        expect(keyed(other, "kl_reset").locator("button")).to_be_visible()  # only shown for an override
        screenshot(other, "review_03_kl_after_reopen")
        _open_layer(other, NOTE_LAYER)
        expect(other.get_by_label(NOTE_LABEL, exact=False)).to_have_value(NOTE)

        # --- a damaged review file: a sentence, and nothing lost ---------------------------------
        go_to(other, "Home", "quantviz")
        bad = tmp_path / "review.npz"
        bad.write_bytes(np.random.default_rng(0).bytes(4096))
        upload_rejected(other, "stats_upload", bad)
        expect(other.get_by_role("heading", name="Summary")).to_be_visible()
        screenshot(other, "review_04_damaged_file")
        kept = _json_table(other, tmp_path / "kept.json")
        assert kept["tensors"][TENSOR]["threshold"] == chosen and kept["tensors"][noted]["note"] == NOTE
        assert metric(other, "Per-tensor choices") == "2"
    finally:
        context.close()
