"""Browser steps and independent oracles shared by the end-to-end flows.

The oracles use onnx, onnxruntime and numpy directly, never quantviz, so a test compares what the app
shows or writes with numbers computed another way.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper
from playwright.sync_api import Download, Locator, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.e2e.conftest import settle

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "sample_models" / "digits_cnn.onnx"
DATA = ROOT / "sample_models" / "digits_calib.npz"
FLOAT_NUMPY = (np.float16, np.float32, np.float64)


# --- browser steps ------------------------------------------------------------------------------


def open_home(page: Page, url: str) -> None:
    """Open the app (the bundled sample is collected by itself) and wait for the summary."""
    page.goto(url)
    expect(page.get_by_role("heading", name="Summary")).to_be_visible(timeout=90_000)
    settle(page)
    no_exception(page)


def after_rerun(page: Page) -> None:
    """Wait for the rerun an action starts, then for the page to settle. settle() alone can see the
    state before the rerun has begun (an upload or an Enter reaches the server a moment later)."""
    with contextlib.suppress(PlaywrightTimeout):  # the rerun may be over before we look
        page.wait_for_selector('[data-testid="stApp"][data-test-script-state="running"]', timeout=3_000)
    settle(page)


def no_exception(page: Page) -> None:
    expect(page.get_by_test_id("stException")).to_have_count(0)


def keyed(page: Page, key: str) -> Locator:
    """The element a widget with this key renders (Streamlit puts the class st-key-<key> on it)."""
    return page.locator(f".st-key-{key}")


def go_to(page: Page, link: str, heading: str) -> None:
    page.get_by_test_id("stSidebarNav").get_by_role("link", name=link).click()
    expect(page.get_by_role("heading", name=heading).first).to_be_visible(timeout=60_000)
    settle(page)
    no_exception(page)


def upload(page: Page, key: str, path: Path) -> None:
    keyed(page, key).locator('input[type="file"]').set_input_files(str(path))
    # the uploaded file's name shows in the widget once the server has it
    expect(keyed(page, key).get_by_text(path.name)).to_be_visible(timeout=30_000)
    after_rerun(page)


def _clicked_download(page: Page, key: str) -> Download:
    with page.expect_download(timeout=60_000) as dl:
        keyed(page, key).locator("button").click()
    return dl.value


def download(page: Page, key: str, dest: Path) -> bytes:
    """Click the download button with this key and return the bytes the browser saved."""
    _clicked_download(page, key).save_as(dest)
    after_rerun(page)
    return dest.read_bytes()


def download_named(page: Page, key: str, folder: Path) -> Path:
    """Click the download button with this key; the file saved in folder under the name the app gave
    the browser."""
    dl = _clicked_download(page, key)
    dest = folder / dl.suggested_filename
    dl.save_as(dest)
    after_rerun(page)
    return dest


def metric(page: Page, label: str) -> str:
    m = page.get_by_test_id("stMetric").filter(has=page.get_by_test_id("stMetricLabel").get_by_text(label, exact=True))
    expect(m).to_have_count(1)
    return m.get_by_test_id("stMetricValue").inner_text().strip()


def error_texts(page: Page) -> list[str]:
    return [t.strip() for t in page.get_by_test_id("stAlertContentError").all_inner_texts()]


def assert_one_sentence(text: str) -> None:
    """A person-facing error: one sentence, no traceback or exception class name."""
    assert text, "empty error"
    assert "Traceback" not in text and "Error:" not in text and "Exception" not in text, text
    assert text.endswith((".", ")")), text
    # one sentence: no sentence end before the last character (". " followed by an upper-case letter)
    assert not re.search(r"[.!?] [A-Z]", text[:-1]), text


def upload_rejected(page: Page, key: str, path: Path) -> str:
    """Upload a bad file: exactly one error, one sentence, no exception; the error's text."""
    upload(page, key, path)
    expect(page.get_by_test_id("stAlertContentError")).to_have_count(1, timeout=30_000)
    settle(page)
    no_exception(page)
    errors = error_texts(page)
    assert len(errors) == 1, errors
    assert_one_sentence(errors[0])
    return errors[0]


# --- independent oracles ------------------------------------------------------------------------


def float_tensors(model_path: Path = MODEL) -> list[str]:
    """Every calibratable float tensor, the way quantviz counts them but computed another way: the
    graph inputs that are not initializers, plus every node output whose value onnxruntime returns
    as a float array when the tensor is made a graph output (the model has no Constant nodes)."""
    m = onnx.load(str(model_path))
    assert not any(n.op_type == "Constant" for n in m.graph.node), "rule below assumes no Constant nodes"
    inits = {i.name for i in m.graph.initializer}
    inputs = [i.name for i in m.graph.input if i.name not in inits and i.type.tensor_type.elem_type == TensorProto.FLOAT]
    outs = run_all(model_path, np.load(DATA)[inputs[0]][:2])
    return inputs + [n for n, v in outs.items() if v.dtype.type in FLOAT_NUMPY]


def run_all(model_path: Path, data: np.ndarray) -> dict[str, np.ndarray]:
    """Every node output of the float model, from a plain onnxruntime session."""
    m = onnx.load(str(model_path))
    names = [o for n in m.graph.node for o in n.output if o]
    del m.graph.output[:]
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)  # no declared type: onnxruntime says
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: data}), strict=True))


def conv_gemm_inputs(model_path: Path = MODEL) -> dict[str, str]:
    """Conv / Gemm node name -> its data input (the first input that is not an initializer)."""
    m = onnx.load(str(model_path))
    inits = {i.name for i in m.graph.initializer}
    return {n.name: next(i for i in n.input if i and i not in inits) for n in m.graph.node if n.op_type in ("Conv", "Gemm")}


def folded_weight_absmax(model_path: Path = MODEL) -> dict[str, tuple[str, np.ndarray]]:
    """Weight initializer -> (its Conv/Gemm node, abs-max per output channel after folding the
    BatchNormalization that follows the Conv: w_c * gamma_c / sqrt(var_c + eps))."""
    m = onnx.load(str(model_path))
    inits = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in m.graph.initializer}
    bn_after = {n.input[0]: n for n in m.graph.node if n.op_type == "BatchNormalization"}
    out: dict[str, tuple[str, np.ndarray]] = {}
    for n in m.graph.node:
        if n.op_type not in ("Conv", "Gemm"):
            continue
        w = inits[n.input[1]]
        if n.op_type == "Gemm":
            trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
            w = w if trans_b else w.T  # output channels first
        bn = bn_after.get(n.output[0])
        if bn is not None:
            eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
            gamma, var = inits[bn.input[1]], inits[bn.input[4]]
            w = w * (gamma / np.sqrt(var + eps)).reshape((-1,) + (1,) * (w.ndim - 1))
        out[n.input[1]] = (n.name, np.abs(w.reshape(w.shape[0], -1)).max(axis=1))
    return out


def analyse_samples(page: Page, samples: int) -> None:
    """On Layer sensitivity: set the number of samples, press Analyse, wait for the end-to-end figures."""
    box = page.get_by_label("Samples", exact=True)
    box.fill(str(samples))
    box.press("Enter")
    after_rerun(page)
    page.get_by_role("button", name="Analyse").click()
    expect(page.get_by_text("End to end")).to_be_visible(timeout=300_000)
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=300_000)
