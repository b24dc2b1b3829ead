"""AppTest: Home's optional Ray collection (off by default) gives the statistics one process gives, and
says how many shards and workers ran. Uses the session's real local Ray (tests/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from quantviz.collect import collect
from quantviz.config import CollectConfig
from quantviz.data import open_source
from quantviz.model import load_model
from quantviz.stats import stats_arrays
from tests.app.figs import session_of, stats_of
from tests.app.test_home import APP, SAMPLE_DATA, SAMPLE_MODEL

pytestmark = [pytest.mark.usefixtures("ray_cluster"), pytest.mark.ray, pytest.mark.slow]


def test_ray_is_off_by_default_then_collects_the_same_statistics() -> None:
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception
    assert at.checkbox(key="collect_ray").value is False
    assert not session_of(at).cluster_notes  # the first screen's collection ran in this process
    at.checkbox(key="collect_ray").check().run()
    at.number_input(key="collect_batch").set_value(16).run()  # other settings: a collection of its own
    at.button(key="run").click().run()
    assert not at.exception and not at.error
    notes = [c.value for c in at.caption if c.value.startswith("Collected on Ray")]
    assert len(notes) == 1 and " shards on " in notes[0] and " workers" in notes[0], notes
    model = load_model(SAMPLE_MODEL)
    single = collect(model, open_source(SAMPLE_DATA, model.inputs), CollectConfig(batch_size=16))
    x, y = stats_arrays(stats_of(at)), stats_arrays(single)
    assert sorted(x) == sorted(y)
    for k in x:
        np.testing.assert_array_equal(x[k], y[k], err_msg=k)
