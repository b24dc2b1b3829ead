"""quantviz.calib.kl_at: the divergence at any threshold equals the curve on its candidates and, below the
first candidate, the TensorRT / ncnn divergence computed from the data itself (np.histogram)."""

from __future__ import annotations

import numpy as np
import pytest

from quantviz.calib import METHODS, MethodConfig
from quantviz.calib.kl_at import kl_at
from quantviz.errors import QuantvizError
from quantviz.stats import TensorAccumulator, TensorStats
from tests.test_kl import slow_kl
from tests.test_kl_ncnn import literal

RNG = np.random.default_rng(4)
X = (RNG.standard_t(3, 200_000) * 0.5).astype(np.float32)


def _stats() -> TensorStats:
    acc = TensorAccumulator("t", bins=2048, fine_bins=16384)
    for part in np.array_split(X, 4):
        acc.update(part)
    return acc.result()


@pytest.mark.parametrize("method", ["kl", "kl_ncnn"])
def test_equals_the_curve_on_its_candidates(method: str) -> None:
    stats = _stats()
    c = METHODS[method](stats, MethodConfig()).curve
    assert c is not None
    for k in (0, 1, 200, c.x.size // 2, c.x.size - 1):
        want = c.y[k]
        got = kl_at(stats, float(c.x[k]), MethodConfig(), method)
        assert (got == want) if np.isinf(want) else got == pytest.approx(want, rel=1e-9), k


@pytest.mark.parametrize("method", ["kl", "kl_ncnn"])
@pytest.mark.parametrize("fraction", [0.8, 0.3, 0.05])
def test_below_the_first_candidate_from_the_data(method: str, fraction: float) -> None:
    """128 bins over [0, T] of the data itself plus one bin beyond T: the method's divergence of keeping 128."""
    stats = _stats()
    curve = METHODS[method](stats, MethodConfig()).curve
    assert curve is not None
    first = float(curve.x[0])
    t = fraction * first
    a = np.abs(X[X != 0]).astype(np.float64)
    h = np.append(np.histogram(a[a <= t], bins=128, range=(0.0, t))[0], (a > t).sum())
    want = slow_kl(h.tolist())[1][0] if method == "kl" else literal(h.astype(np.float64), 128)
    got = kl_at(stats, t, MethodConfig(), method)
    # re-binned from the 2**14-bin histogram, not exact: close where it has >= 128 bins below t, looser
    # where fewer (at 0.05 of the first candidate, about 50: values spread evenly inside each)
    assert stats.fine_hist is not None
    rel = 0.03 if t / stats.fine_hist.width >= 128 else 0.10
    assert got == pytest.approx(want, rel=rel)
    # the typed value is not the first candidate's (the page once showed that one)
    assert got > 1.2 * kl_at(stats, first, MethodConfig(), method)


def test_rejects_other_methods_and_bad_thresholds() -> None:
    with pytest.raises(QuantvizError, match="KL methods only"):
        kl_at(_stats(), 1.0, MethodConfig(), "mse")
    with pytest.raises(QuantvizError, match="positive number"):
        kl_at(_stats(), -1.0, MethodConfig())
