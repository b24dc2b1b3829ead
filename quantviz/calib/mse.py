"""MSE calibration: the clip range that minimises the expected squared error of quantize-dequantize.

Symmetric int8 (the default): for every candidate threshold T (every bin edge of the |x| histogram
from ``MethodConfig.mse_min_bin`` bins up to the observed abs-max, abs-max itself the last
candidate), s = T / 127 and Q(x) = s * clip(round(x / s), -127, 127); the error is
    E(T) = sum over values of (x - Q(x))^2   (rounding noise inside [-T, T], (|x| - T)^2 outside),
and the threshold is the argmin of E / N (N values, exact zeros included). The whole curve is
returned for the UI. This is the "MSE" calibrator of NVIDIA's pytorch-quantization and modelopt
(there: a brute-force loop fake-quantizing a histogram per candidate) and of PPQ.

Asymmetric uint8: candidates shrink [min, max] towards zero by one factor a in (0, 1]
(a * max(|min|, |max|) stepping over the signed histogram's bin edges, a = 1 last), each range
widened to hold 0 and nudged so that 0.0 is exact (quantviz.fakequant.asymmetric_params), i.e. the
grid is s * Z clipped to [-zp * s, (255 - zp) * s]. One factor keeps the search one-dimensional
and keeps the zero point where the data puts it; a 2-D search over (min, max) is not done.

How the error is evaluated (a deliberate departure from "values at bin centres"): the values of a
bin are taken as spread uniformly over the bin, and the error is integrated exactly. With bin
centres, a step s equal to the bin width puts every centre on a rounding tie (error s^2/4 instead
of about s^2/12), and any s near a simple ratio of the bin width gives a spurious saw-tooth in the
curve. Exact zeros (ReLU outputs, padding) are taken out of their bin as a point mass at 0, where
every grid here is exact: they add N but no error.

Speed: with e(x) = x - s round(x/s) and G(x) = integral_0^x e^2 = x s^2/12 + s^3 phi(e/s)/3,
phi(f) = f^3 - f/4 (periodic, 0 on the grid), the rounding part over a histogram with edges e_i,
counts c_j, width w is
    sum_j c_j/w (G(b_j) - G(a_j)) = s^2/12 * (mass inside) + s^3/(3w) * sum_i phi_i (c_{i-1} - c_i)
(summation by parts, edges clipped to [lo, hi] so that phi vanishes outside). The clip parts are
closed forms of prefix sums of the counts and their first two moments. Only the phi matrix
(candidates x edges, triangular: edges beyond the candidate's T have phi = 0) is O(K * B); it is
built in float32 blocks that fit the cache.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from quantviz.calib.result import Curve, MethodConfig, Threshold, make_threshold, require_data, require_histogram
from quantviz.config import INT8_MAX, UINT8_MAX
from quantviz.histogram import Histogram
from quantviz.stats import TensorStats

# Candidate rows per block of the phi matrix (64 x 2049 float32, two buffers: about 1 MB, cache-sized).
MSE_BLOCK_ROWS = 64

FloatArray = npt.NDArray[np.float64]


def without_zeros(hist: Histogram, zero_count: int) -> npt.NDArray[np.float64]:
    """Counts with the exact zeros taken out of the bin [0, w) that holds them (a copy)."""
    counts = hist.counts.astype(np.float64)  # astype copies: the stored histogram is never touched
    zero_bin = int(np.searchsorted(hist.edges, 0.0, side="right")) - 1
    if 0 <= zero_bin < counts.size:
        counts[zero_bin] -= min(float(zero_count), counts[zero_bin])
    return counts


def _moment_sums(counts: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Prefix sums (index 0..B) of c_j, c_j (j + 1/2), c_j (j + 1/2)^2 over bins j < index."""
    r = np.arange(counts.size, dtype=np.float64) + 0.5
    zero = np.zeros(1)
    return (
        np.concatenate((zero, np.cumsum(counts))),
        np.concatenate((zero, np.cumsum(counts * r))),
        np.concatenate((zero, np.cumsum(counts * r * r))),
    )


def _clip_errors(counts: FloatArray, lo_pos: FloatArray, hi_pos: FloatArray) -> FloatArray:
    """sum_j c_j/w * integral over bin j of (x - lo)^2 below lo and (x - hi)^2 above hi, in units of w^2.

    Positions are in bin units (x - e_0) / w. Bins wholly outside: c ((centre - bound)^2 + 1/12);
    the bin holding the bound: c * (distance to its far edge)^3 / 3.
    """
    b = counts.size
    p0, p1, p2 = _moment_sums(counts)
    padded = np.concatenate((counts, [0.0]))  # padded[b] = 0: "no bin holds the bound"

    jh = np.minimum(np.maximum(np.floor(hi_pos), -1.0), float(b)).astype(np.int64)  # bin holding hi, -1..b
    start = jh + 1
    start[start > b] = b
    s0, s1, s2 = p0[b] - p0[start], p1[b] - p1[start], p2[b] - p2[start]
    far = jh + 1 - hi_pos
    upper = s2 - 2 * hi_pos * s1 + hi_pos * hi_pos * s0 + s0 / 12 + padded[np.maximum(jh, 0)] * (jh >= 0) * far * far * far / 3

    jl = np.minimum(np.maximum(np.floor(lo_pos), -1.0), float(b)).astype(np.int64)  # bin holding lo, -1..b
    stop = np.maximum(jl, 0)
    q0, q1, q2 = p0[stop], p1[stop], p2[stop]
    near = lo_pos - jl
    lower = q2 - 2 * lo_pos * q1 + lo_pos * lo_pos * q0 + q0 / 12 + padded[stop] * (jl >= 0) * near * near * near / 3
    out: npt.NDArray[np.float64] = np.maximum(upper, 0.0) + np.maximum(lower, 0.0)
    return out


def _phi_sums(counts: FloatArray, offset: float, ratio: FloatArray, qmin: FloatArray, qmax: FloatArray) -> FloatArray:
    """sum_i phi(f_i) (c_{i-1} - c_i) per candidate, f_i = frac of clip(e_i / s, qmin, qmax).

    e_i / s = (i + offset) * ratio with ratio = w / s (bin units keep float32 in range whatever w is).
    Only edges strictly inside some candidate's (qmin, qmax) contribute; columns every row of a block
    keeps inside need no clip.
    """
    b = counts.size
    d = (np.concatenate(([0.0], counts)) - np.concatenate((counts, [0.0]))).astype(np.float32)
    pos = (np.arange(b + 1, dtype=np.float64) + offset).astype(np.float32)
    lo_pos, hi_pos = qmin / ratio - offset, qmax / ratio - offset  # the clip bounds as column positions
    starts = np.arange(0, ratio.size, MSE_BLOCK_ROWS)
    # per block: columns any row keeps inside [c0, c1), columns every row keeps inside [s0, s1)
    c0 = np.clip(np.ceil(np.minimum.reduceat(lo_pos, starts)), 0, b + 1).astype(np.int64).tolist()
    c1 = np.clip(np.floor(np.maximum.reduceat(hi_pos, starts)) + 1, 0, b + 1).astype(np.int64).tolist()
    s0 = np.ceil(np.maximum.reduceat(lo_pos, starts)).astype(np.int64).tolist()
    s1 = (np.floor(np.minimum.reduceat(hi_pos, starts)) + 1).astype(np.int64).tolist()
    rat32, lo32, hi32 = ratio.astype(np.float32), qmin.astype(np.float32)[:, None], qmax.astype(np.float32)[:, None]
    out = np.zeros(ratio.size)
    buf_t = np.empty(MSE_BLOCK_ROWS * (b + 1), dtype=np.float32)
    buf_r = np.empty_like(buf_t)
    for k, r0 in enumerate(starts.tolist()):
        r1 = min(ratio.size, r0 + MSE_BLOCK_ROWS)
        a, z = c0[k], c1[k]
        if z <= a:
            continue
        t = buf_t[: (r1 - r0) * (z - a)].reshape(r1 - r0, z - a)
        r = buf_r[: t.size].reshape(t.shape)
        np.multiply.outer(rat32[r0:r1], pos[a:z], out=t)
        # every bound has qmin <= 0 <= qmax: columns left of the common part can only fall below
        # some row's qmin, columns right of it only above some row's qmax
        left = min(max(s0[k], a), z) - a
        right = min(max(s1[k], a + left), z) - a
        if left > 0:
            np.maximum(t[:, :left], lo32[r0:r1], out=t[:, :left])
        if right < z - a:
            np.minimum(t[:, right:], hi32[r0:r1], out=t[:, right:])
        np.rint(t, out=r)
        t -= r
        np.multiply(t, t, out=r)
        r -= np.float32(0.25)
        t *= r
        out[r0:r1] = t @ d[a:z]
    return out


def quantization_errors(hist: Histogram, counts: FloatArray, scale: FloatArray, qmin: FloatArray, qmax: FloatArray) -> FloatArray:
    """Expected sum of (x - Q(x))^2 over the histogram's values, one per candidate grid.

    Q(x) = s * clip(round(x / s), qmin, qmax) with integer levels qmin <= 0 <= qmax; values spread
    uniformly inside each bin (see module doc). counts: the histogram's counts, possibly with the
    exact zeros removed (they add no error).
    """
    scale = np.asarray(scale, dtype=np.float64)
    qmin = np.asarray(qmin, dtype=np.float64)
    qmax = np.asarray(qmax, dtype=np.float64)
    w = hist.width
    offset = float(hist.edges[0] / w)
    ratio = w / scale
    lo_pos, hi_pos = qmin / ratio - offset, qmax / ratio - offset
    cum = np.concatenate(([0.0], np.cumsum(counts)))
    grid = np.arange(counts.size + 1, dtype=np.float64)
    inside_mass = np.interp(hi_pos, grid, cum) - np.interp(lo_pos, grid, cum)
    rounding = scale**2 / 12 * inside_mass + scale**3 / (3 * w) * _phi_sums(counts, offset, ratio, qmin, qmax)
    return np.maximum(rounding, 0.0) + w**2 * _clip_errors(counts, lo_pos, hi_pos)


def _symmetric_candidates(absmax: float, width: float, min_bin: int) -> FloatArray:
    """Bin edges k * w from min_bin up to (not reaching) abs-max, then abs-max itself."""
    last = int(np.ceil(absmax / width))
    ks = np.arange(min(min_bin, last), last, dtype=np.float64)
    edges = ks * width
    return np.concatenate((edges[(edges > 0) & (edges < absmax)], [absmax]))


def mse_curve_symmetric(stats: TensorStats, min_bin: int) -> tuple[FloatArray, FloatArray]:
    """Candidate thresholds and the mean squared error of symmetric int8 at each."""
    hist = stats.abs_hist.used()
    counts = without_zeros(hist, stats.zero_count)
    ts = _symmetric_candidates(stats.absmax, hist.width, min_bin)
    scale = (ts.astype(np.float32) / np.float32(INT8_MAX)).astype(np.float64)  # float32 scales, as stored
    levels = np.full(ts.size, float(INT8_MAX))
    err = quantization_errors(hist, counts, scale, -levels, levels)
    return ts, err / max(hist.total, 1)


def asymmetric_grid(lo: FloatArray, hi: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Vectorised quantviz.fakequant.asymmetric_params: float32 scale, levels -zp and 255 - zp."""
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    scale = ((hi - lo) / UINT8_MAX).astype(np.float32).astype(np.float64)
    zp = np.clip(np.round(-lo / scale), 0, UINT8_MAX)
    return scale, -zp, UINT8_MAX - zp


def mse_curve_asymmetric(stats: TensorStats, min_bin: int) -> tuple[FloatArray, FloatArray]:
    """Shrink factors a (as clip magnitudes a * abs-max) and the mean squared error of uint8 on [a min, a max]."""
    hist = stats.signed_hist
    nz = np.flatnonzero(hist.counts)
    first, last = int(nz[0]), int(nz[-1]) + 1
    hist = Histogram(hist.counts[first:last].copy(), hist.edges[first : last + 1].copy())
    counts = without_zeros(hist, stats.zero_count)
    mags = _symmetric_candidates(stats.absmax, hist.width, min_bin)
    factor = mags / stats.absmax
    scale, qmin, qmax = asymmetric_grid(factor * stats.min, factor * stats.max)
    err = quantization_errors(hist, counts, scale, qmin, qmax)
    return mags, err / max(hist.total, 1)


def threshold_mse(stats: TensorStats, config: MethodConfig) -> Threshold:
    """The clip range minimising the expected squared quantization error, with the whole curve (module doc)."""
    require_data(stats, "MSE")
    require_histogram(stats, "MSE", signed=not config.symmetric)
    if stats.absmax == 0:
        return make_threshold("mse", 0.0, 0.0, config, note="all values are exactly zero")
    if stats.constant:  # a single value: clipping at it is exact (error 0)
        return make_threshold("mse", stats.min, stats.max, config, note="constant tensor")
    if config.symmetric:
        xs, ys = mse_curve_symmetric(stats, config.mse_min_bin)
    else:
        xs, ys = mse_curve_asymmetric(stats, config.mse_min_bin)
    best = int(np.argmin(ys))
    t = float(xs[best])
    label = "threshold" if config.symmetric else "clip magnitude (range shrunk towards 0)"
    curve = Curve(xs, ys, label, "mean squared error", t)
    if config.symmetric:
        lo, hi = -t, t
    else:
        factor = t / stats.absmax
        lo, hi = factor * stats.min, factor * stats.max
    return make_threshold("mse", lo, hi, config, curve, mse=float(ys[best]), candidates=int(xs.size))
