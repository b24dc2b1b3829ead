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
    return json.loads(chart.proto.spec)
