"""Read plotly figures that AppTest exposes (arrays may be base64 'bdata' blobs)."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np


def array(value: Any) -> np.ndarray:
    if isinstance(value, dict) and "bdata" in value:
        out = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        return out.reshape(value["shape"]) if "shape" in value else out
    return np.asarray(value)


def figure(chart: Any) -> dict[str, Any]:
    fig: dict[str, Any] = json.loads(chart.proto.spec)
    return fig


# --- the session's typed state (ui/state.py), read the way the pages read it ------------------------


def session_of(at: Any) -> Any:
    """The ui.state.Session of an AppTest run."""
    from ui.state import SESSION

    return at.session_state[SESSION]


def work_of(at: Any) -> Any:
    """The current model's ModelWork (its review, open tensor and layer, last analysis)."""
    w = session_of(at).work()
    assert w is not None, "no current model"
    return w


def review_of(at: Any) -> Any:
    return work_of(at).review


def set_review_of(at: Any, new: Any) -> None:
    work_of(at).review = new


def stats_of(at: Any) -> Any:
    s = session_of(at)
    return s.store.get(work_of(at).stats_key)


def stored_in(at: Any, key: Any) -> Any:
    return session_of(at).store.get(key)
