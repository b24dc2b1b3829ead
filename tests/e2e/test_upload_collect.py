"""A person uploads their own model and calibration arrays, runs the collection and reads the summary;
then uploads a file that is not a model and gets a sentence, with the statistics still there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from playwright.sync_api import Page, expect

from tests.e2e.conftest import screenshot, settle
from tests.e2e.flows import (
    DATA,
    MODEL,
    after_rerun,
    error_texts,
    float_tensors,
    keyed,
    metric,
    no_exception,
    open_home,
    upload,
    upload_rejected,
)

SAMPLES = 128  # fewer than the file holds, so the summary shows this collection and not the sample's


def test_upload_model_and_npz_collect_then_bad_model(page: Page, app_url: str, tmp_path: Path) -> None:
    expected_tensors = len(float_tensors(MODEL))
    with np.load(DATA) as z:
        expected_samples = min(SAMPLES, min(len(z[k]) for k in z.files))

    open_home(page, app_url)
    page.get_by_test_id("stRadio").first.get_by_text("Upload a model", exact=True).click()
    after_rerun(page)
    upload(page, "model_upload", MODEL)
    # the model line under the uploader counts the tensors before any collection
    expect(page.get_by_text(f"{expected_tensors} float tensors")).to_be_visible()
    data_radio = keyed(page, "data_source")
    expect(data_radio.get_by_text("Sample calibration set")).to_have_count(0)  # only the bundled sample has one
    data_radio.get_by_text("Upload .npz / .npy", exact=True).click()
    after_rerun(page)
    upload(page, "data_upload", DATA)
    no_exception(page)

    samples = keyed(page, "collect_samples").locator("input")
    page.get_by_text("Collection settings").click()
    expect(samples).to_be_visible()
    samples.fill(str(SAMPLES))
    samples.press("Enter")
    after_rerun(page)
    keyed(page, "run").locator("button").click()
    expect(page.get_by_test_id("stMetricValue").filter(has_text=str(expected_samples)).first).to_be_visible(timeout=60_000)
    settle(page)
    no_exception(page)
    assert not error_texts(page)
    assert metric(page, "Tensors") == str(expected_tensors)
    assert metric(page, "Samples") == str(expected_samples)
    expect(page.get_by_text("Current model:", exact=False).filter(has_text=DATA.name)).to_be_visible()
    screenshot(page, "upload_01_collected")

    # a file that is not ONNX, named .onnx so the uploader accepts it
    bad = tmp_path / "notes.onnx"
    bad.write_bytes(b"these are my notes, not a model\n" * 40)
    assert "ONNX" in upload_rejected(page, "model_upload", bad)
    # nothing lost: the statistics collected before are still on the page
    expect(page.get_by_role("heading", name="Summary")).to_be_visible()
    assert metric(page, "Tensors") == str(expected_tensors)
    assert metric(page, "Samples") == str(expected_samples)
    expect(keyed(page, "run").locator("button")).to_be_disabled()
    screenshot(page, "upload_02_bad_model")
