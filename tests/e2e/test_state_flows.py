"""The session's state in a real browser (issues 9 and 10).

- sample -> second model -> every page -> Home -> back: each page shows the current model only, Home
  resets nothing, and the sample comes back with its own figures;
- two browser sessions at once: a statistics file one session opens is never seen by the other, even
  when it describes the same model.

Expected names and counts come from onnx / onnxruntime / numpy (tests/e2e/flows.py's oracles and the
generated model's graph), never from quantviz.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import onnx
from playwright.sync_api import Browser, Page, expect

from quantviz.stats import load_stats, save_stats
from tests.e2e.conftest import screenshot, settle
from tests.e2e.flows import DATA, MODEL, after_rerun, float_tensors, go_to, keyed, metric, no_exception, open_home, upload
from tests.graphs import conv_bn_relu

ROOT = Path(__file__).resolve().parents[2]


def _node_outputs(proto: onnx.ModelProto) -> list[str]:
    inits = {i.name for i in proto.graph.initializer}
    return [i.name for i in proto.graph.input if i.name not in inits] + [o for n in proto.graph.node for o in n.output]


def _main_text(page: Page) -> str:
    return page.get_by_test_id("stMain").inner_text()


def _pick(page: Page, key: str, option: str) -> None:
    keyed(page, key).get_by_text(option, exact=True).click()
    after_rerun(page)


def test_sample_then_second_model_then_home_then_back(page: Page, app_url: str, tmp_path: Path) -> None:
    open_home(page, app_url)
    sample_tensors = len(float_tensors(MODEL))
    assert metric(page, "Tensors") == str(sample_tensors)

    proto = conv_bn_relu(seed=3)
    second = tmp_path / "second.onnx"
    onnx.save_model(proto, str(second))
    names = _node_outputs(proto)
    assert len(names) != sample_tensors

    _pick(page, "model_source", "Upload a model")
    upload(page, "model_upload", second)
    _pick(page, "data_source", "Synthetic (random)")
    n = keyed(page, "synthetic_n").locator("input")
    n.fill("16")
    n.press("Enter")
    after_rerun(page)
    keyed(page, "run").locator("button").click()
    expect(page.get_by_text("Current model:", exact=False).filter(has_text="second")).to_be_visible(timeout=90_000)
    settle(page)
    no_exception(page)
    assert metric(page, "Tensors") == str(len(names))
    screenshot(page, "state_01_second_model")

    # every page shows the second model only: no file name of the sample anywhere in the main area
    for link, heading in (("Distributions", "Distributions"), ("Layer sensitivity", "Layer sensitivity"), ("Export", "Export")):
        go_to(page, link, heading)
        text = _main_text(page)
        for stale in (MODEL.name, DATA.name, "digits_eval.npz"):
            assert stale not in text, (link, stale)
        if link == "Layer sensitivity":
            screenshot(page, "state_02_second_sensitivity")

    # Home again: the choices made there are kept and nothing is collected again
    go_to(page, "Home", "Summary")
    expect(keyed(page, "model_source").get_by_role("radio", name="Upload a model")).to_be_checked()
    expect(keyed(page, "data_source").get_by_role("radio", name="Synthetic (random)")).to_be_checked()
    assert metric(page, "Tensors") == str(len(names))

    # back to the sample: its own figures come back
    _pick(page, "model_source", "Bundled sample")
    _pick(page, "data_source", "Sample calibration set")
    expect(page.get_by_text("Current model:", exact=False).filter(has_text=DATA.name)).to_be_visible(timeout=90_000)
    settle(page)
    no_exception(page)
    assert metric(page, "Tensors") == str(sample_tensors)
    screenshot(page, "state_03_sample_back")


def _three_tensor_stats(tmp_path: Path) -> tuple[Path, int]:
    """Statistics of the bundled sample (same model, same data) cut down to three tensors."""
    full = tmp_path / "full.npz"
    r = subprocess.run(
        [sys.executable, "-m", "quantviz", "collect", str(MODEL), "--data", str(DATA), "-o", str(full)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    stats = load_stats(full)
    keep = list(stats.tensors)[:3]
    cut = dataclasses.replace(stats, tensors={k: stats.tensors[k] for k in keep})
    out = tmp_path / "three.npz"
    save_stats(cut, out)
    return out, len(keep)


def test_two_sessions_never_see_each_others_opened_files(browser: Browser, app_url: str, tmp_path: Path) -> None:
    three, kept = _three_tensor_stats(tmp_path)
    sample_tensors = len(float_tensors(MODEL))
    a = browser.new_context(viewport={"width": 1400, "height": 1000})
    b = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        pa, pb = a.new_page(), b.new_page()
        open_home(pa, app_url)
        open_home(pb, app_url)
        assert metric(pa, "Tensors") == metric(pb, "Tensors") == str(sample_tensors)

        upload(pb, "stats_upload", three)
        expect(pb.get_by_text(f"{kept} tensors", exact=False).first).to_be_visible(timeout=30_000)
        no_exception(pb)
        assert metric(pb, "Tensors") == str(kept)

        # the other session, after a rerun and a page switch, still shows what it collected
        go_to(pa, "Distributions", "Distributions")
        go_to(pa, "Home", "Summary")
        assert metric(pa, "Tensors") == str(sample_tensors)
        screenshot(pa, "state_04_session_a_untouched")
        # and the session that opened the file keeps it across a page switch
        go_to(pb, "Distributions", "Distributions")
        go_to(pb, "Home", "Summary")
        assert metric(pb, "Tensors") == str(kept)
    finally:
        a.close()
        b.close()
