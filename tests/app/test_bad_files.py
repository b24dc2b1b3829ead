"""AppTest: hostile or damaged files opened in the app give one st.error sentence and keep what the
person had (statistics, review); none of them reaches the pages that compute every method."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from quantviz.review import Review, review_bytes
from tests import bad_files as bf
from tests.app.figs import review_of, set_review_of, stats_of

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")


def _tampered(raw: bytes) -> bytes:
    def change(a: dict[str, np.ndarray]) -> None:
        a["scalars"] = a["scalars"].copy()
        a["scalars"][:, 6] *= 1e6  # max a million times past the histograms: MSE would take gigabytes

    return bf.with_arrays(raw, change)


def _nan_override(raw: bytes) -> bytes:
    doc = bf.header_of(bf.npz_arrays(raw), "review")
    name = next(iter(doc["choices"]))
    doc["choices"][name]["override"] = float("nan")
    return bf.with_header_text(raw, json.dumps(doc), key="review")


def _tensors_text(raw: bytes) -> bytes:
    return bf.with_header(raw, lambda h: h.update(tensors="abc"))


CASES = {
    "tampered-statistics": (_tampered, "disagrees"),
    "nan-override": (_nan_override, "override"),
    "tensors-text": (_tensors_text, "list of tensor names"),
    "zip-bomb": (lambda raw: bf.zip_bomb("scalars", 0.25), "zip bomb"),
    "declares-256TiB": (lambda raw: bf.huge_declared("header"), "refused"),
    "truncated": (lambda raw: raw[: len(raw) // 2], "not a readable"),
}


@pytest.fixture(scope="module")
def app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception
    return at


@pytest.mark.parametrize("case", list(CASES))
def test_bad_review_file_shows_one_sentence_and_keeps_the_session(app: AppTest, case: str) -> None:
    at = app
    set_review_of(at, Review().with_choice("/Relu_output_0", note="mine"))
    tensors_before = {m.label: m.value for m in at.metric}["Tensors"]
    stats = stats_of(at)
    good = review_bytes(stats, Review().with_choice("/Relu_output_0", override=1.25))
    make, words = CASES[case]
    at.file_uploader(key="stats_upload").upload(f"{case}.npz", make(good), "application/octet-stream").run()
    assert not at.exception
    assert len(at.error) == 1, [e.value for e in at.error]
    msg = at.error[0].value
    assert words in msg and "Traceback" not in msg and msg.count("\n") == 0
    assert {m.label: m.value for m in at.metric}["Tensors"] == tensors_before
    assert review_of(at).choice("/Relu_output_0").note == "mine"
    # the pages that compute every method still work on the kept statistics
    at.switch_page("pages/1_Distributions.py").run()
    assert not at.exception and not at.error
    at.switch_page("pages/0_Home.py").run()
    assert not at.exception


def test_imported_cache_with_scale_zero_reads_as_kept_float_and_never_poisons_the_session(app: AppTest) -> None:
    """A scale of 0 in a TensorRT cache is the all-zero treatment (quantviz.table: threshold 0, kept in
    float); adopting it keeps those tensors in float and every page still works."""
    at = app
    at.switch_page("pages/4_Export.py").run()
    assert not at.exception
    names = list(stats_of(at).tensors)
    cache = "TRT-8601-EntropyCalibration2\n" + "".join(f"{n}: 0\n" for n in names[:3])
    at.file_uploader(key="import_table").upload("calibration.cache", cache.encode(), "text/plain").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    adopt = [b for b in at.button if b.key == "adopt_import"]
    assert len(adopt) == 1
    adopt[0].click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    review = review_of(at)
    for n in names[:3]:  # each one is kept in float or left out, never quantized with a threshold of 0
        c = review.choices.get(n)
        assert c is None or c.float_kept or (c.override is not None and c.override > 0), (n, c)
    for page in ("pages/1_Distributions.py", "pages/4_Export.py", "pages/3_Layer_sensitivity.py"):
        at.switch_page(page).run()
        assert not at.exception and not at.error, (page, [e.value for e in at.error])
