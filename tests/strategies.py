"""Hypothesis strategies shared by the table tests: entries quantviz's schema accepts (quantviz.schema)."""

from __future__ import annotations

import math

from hypothesis import strategies as st

from quantviz.schema import SCALE_MAX, SCALE_MIN

FINITE = st.floats(-1e30, 1e30, allow_nan=False)
EntryValues = tuple[float, float, float, float, float | None, bool]  # min, max, threshold, scale, cosine, float_kept


@st.composite
def entry_values(draw: st.DrawFn) -> EntryValues:
    """(min, max, threshold, scale, cosine, float_kept) of a valid entry: a quantized tensor has a finite
    range min <= max, a threshold >= 0 and a positive finite scale; a tensor kept in float may carry
    NaN (no range) in its numbers."""
    kept = draw(st.booleans())
    cos = draw(st.none() | st.floats(allow_infinity=False))
    if kept:  # any number may be missing; those given are in range
        nan = st.just(math.nan)
        return draw(nan | FINITE), draw(nan | FINITE), math.nan, draw(nan | st.floats(SCALE_MIN, SCALE_MAX)), cos, True
    lo, hi = sorted((draw(FINITE), draw(FINITE)))
    t = draw(st.floats(0, 1e30))
    s = draw(st.floats(SCALE_MIN, SCALE_MAX))
    return lo, hi, t, s, cos, False
