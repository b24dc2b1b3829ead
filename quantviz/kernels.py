"""Compiled loops (numba) for the two hot spots, each with a numpy reference elsewhere that tests
compare it with: the |x| and signed counts of one float32 tensor during collection (add_counts;
reference quantviz.histogram._counts_chunk) and the KL divergence of every candidate threshold
(kl_curve; reference the numpy path of quantviz.calib.kl.kl_curve).

The collection counts.

Why compiled, not numpy: the counts are a scatter (counts[bin(x)] += 1) over every
activation value of every sample, about 3 G values for 64 samples of a 400-tensor OCR model. numpy
needs one pass per step (scale, floor, compare, cast, bincount, which itself scans its input twice)
over fresh or scratch buffers: about 3.5 ns a value. One loop that scales, bins and counts in
registers takes about 1.2 ns (bench/README.md has the measurements). The numpy path
(quantviz.histogram._counts_chunk) stays the reference and the fallback: float64 input, widths
above 1 (where a tiny negative x can underflow to -0.0 when scaled) and machines without numba;
tests check that both give the same counts, bit for bit.

The layout of one pass (add_counts): with s = x * 2**-e (exact, see quantviz.histogram) and
a = trunc(|s|) = the |x| bin, the value goes to the fine bin bins + a (s >= 0, -0.0 included) or
bins - 1 - a (s < 0): a sign-and-magnitude layout of 2 * bins bins from which
* the |x| counts are fine[bins + a] + fine[bins - 1 - a], exactly, and
* the signed counts (runs of 2**shift fine bins, floor(s) >> shift) are the run sums, except for a
  negative s that is a whole multiple of 2**shift: floor(s) = -a puts it one signed bin right of
  where the layout counts it (-a - 1). Those values are counted in a second, register-only pass
  over the same (cached) values and moved when there are any, which is rare.
Small tensors skip the fine layout (zeroing and folding 2 * bins bins would cost more than their
values) and add to both histograms directly.
"""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt

try:  # numba is a requirement; without it the numpy path computes the same counts, slower
    from numba import njit
except ImportError:  # pragma: no cover - exercised only where numba is missing
    njit = None  # type: ignore[assignment]

# Below this many values a tensor adds to both histograms directly (no fine layout to zero and fold).
DIRECT_BELOW = 1 << 15
# Values a pass over the int32 fine layout may count before it is folded into the int64 histograms.
FINE_MAX_VALUES = 1 << 30


def available() -> bool:
    return njit is not None


if njit is not None:

    @njit(nogil=True, cache=True, boundscheck=False)
    def _fine_pass(values, scale, bins, shift, fine, blocks):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
        """fine[bins + a] (s >= 0) or fine[bins - 1 - a] (s < 0) += 1 for every value. Returns the exact
        zeros and the edges (negative s, whole multiples of 2**shift, other than 0): their number and
        the number of blocks of BLOCK values holding any, the first blocks.size of which are noted.

        BLOCK bin numbers are computed first, in a loop without stores to fine that runs in vector
        registers (the zero and edge counts ride along), then counted: 1.3 -> 0.7 ns a value on normal
        data against one loop doing both."""
        idx = np.empty(BLOCK, np.int32)
        half = np.int32(bins)
        mask = np.int32((1 << shift) - 1)
        zeros = 0
        edges = 0
        kept = 0
        for b in range(0, values.size, BLOCK):
            block = values[b : b + BLOCK]  # a slice, not an index range: the loop then vectorises
            m = block.size
            here = 0
            for i in range(m):
                s = block[i] * scale
                a = np.int32(abs(s))
                idx[i] = half + (a ^ -np.int32(s < 0))
                zeros += s == 0
                here += (s == -a) & ((a & mask) == 0) & (a > 0)
            for i in range(m):
                fine[idx[i]] += 1
            if here:
                if kept < blocks.size:
                    blocks[kept] = b
                kept += 1
                edges += here
        return zeros, edges, kept

    @njit(nogil=True, cache=True, boundscheck=False)
    def _fold(fine, bins, shift, abs_out, signed_out):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
        for a in range(bins):
            abs_out[a] += fine[bins + a] + fine[bins - 1 - a]
        group = 1 << shift
        for j in range(signed_out.size):
            t = 0
            for q in range(j * group, j * group + group):
                t += fine[q]
            signed_out[j] += t

    @njit(nogil=True, cache=True, boundscheck=False)
    def _move_edges(values, scale, bins, shift, signed_out, blocks, kept):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
        """Each edge one signed bin right (its floor(s) is -a, the layout counted -a - 1). blocks: the
        blocks holding them when all were kept (kept <= blocks.size), else every block is looked at."""
        mask = (1 << shift) - 1
        every = kept > blocks.size
        for p in range(values.size // BLOCK + 1 if every else kept):
            b = p * BLOCK if every else blocks[p]
            for i in range(b, min(b + BLOCK, values.size)):
                s = values[i] * scale
                a = int(abs(s))
                if s == -a and (a & mask) == 0 and a > 0:
                    j = (bins - a) >> shift
                    signed_out[j - 1] -= 1
                    signed_out[j] += 1

    @njit(nogil=True, cache=True, boundscheck=False)
    def _direct(values, scale, bins, shift, abs_out, signed_out):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
        zeros = 0
        for i in range(values.size):
            s = values[i] * scale
            a = int(abs(s))
            abs_out[a] += 1
            if s >= 0:
                k = a
            elif s == -a:
                k = -a
            else:
                k = -a - 1
            signed_out[(k + bins) >> shift] += 1
            zeros += s == 0
        return zeros


if njit is not None:

    @njit(nogil=True, cache=True, boundscheck=False)
    def _kl_groups(h, width, cum, cum_nz, mass, ratio):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
        n = h.size
        cum[0] = 0.0
        cum_nz[0] = 0.0
        for j in range(n):
            cum[j + 1] = cum[j] + h[j]
            cum_nz[j + 1] = cum_nz[j] + (1.0 if h[j] > 0 else 0.0)
        for lo in range(n):
            for w in range(1, width + 1):
                hi = min(lo + w, n)
                m = (cum[hi] - cum[lo]) + TINY
                mass[lo * width + w - 1] = m
                ratio[lo * width + w - 1] = m / ((cum_nz[hi] - cum_nz[lo]) + TINY)

    @njit(nogil=True, cache=True, boundscheck=False)
    def _kl_candidates(h, first, target, width, cum, cum_nz, cum_hlogh, term, out):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
        n = h.size
        total = cum[n]
        for i in range(first, n + 1):
            q, r = divmod(i, target)
            a = 0
            rem = target - 1  # a_g = ceil(g i / target) = (g i + target - 1) // target, stepped g by g
            acc = 0.0
            w = 1
            for _ in range(target):
                rem += r
                c = rem >= target
                rem -= c * target
                w = q + c
                acc += term[a * width + w - 1]
                a += w
            last = h[i - 1]
            outliers = total - cum[i]
            p_last = last + outliers
            plogp = cum_hlogh[i - 1] + (p_last * np.log(p_last) if p_last > 0 else 0.0)
            if outliers > 0:
                if last == 0:  # P > 0 where Q = 0: infinite, this candidate cannot win
                    out[i - first] = np.inf
                    continue
                lo = i - w  # the last group [i - w, i): Q's value on the candidate's last bin
                acc += outliers * np.log((cum[i] - cum[lo]) / max(cum_nz[i] - cum_nz[lo], 1.0))
            kl = (plogp - acc) / total + np.log(cum[i] / total)
            out[i - first] = kl if kl > 0.0 else 0.0  # rounding can leave -1e-16 where P == Q


TINY = 1e-300  # see quantviz.calib.kl: an empty group's term is TINY * log(1) = 0


def kl_curve(h: npt.NDArray[np.float64], first: int, target: int) -> npt.NDArray[np.float64]:
    """KL(P_i || Q_i) of TensorRT's entropy search for every candidate i in [first, h.size] of the
    float64 histogram h: the formulas of quantviz.calib.kl, whose numpy path is the reference and the
    fallback. Two compiled loops that hold no lock (so calibrate's threads share the cores) around
    numpy's vectorised logarithm (about 7x faster than a compiled scalar log): the prefix sums and
    every group's mass S and S / z in a (bins, W) table, W = ceil(bins / target); then S log(S / z);
    then each candidate's sum over its groups, stepping a_g = ceil(g i / target) incrementally.
    Every buffer is this thread's and reused from tensor to tensor: fresh 256 KB arrays per tensor
    are mapped and zeroed by the kernel, which costs more than the sums and serialises threads.
    Requires first >= target (every group non-empty)."""
    n = h.size
    width = -(-n // target)
    cum, cum_nz, cum_hlogh, mass, term = _kl_buffers(n, width)
    _kl_groups(h, width, cum, cum_nz, mass, term)
    np.log(term, out=term)
    np.multiply(term, mass, out=term)
    np.log(h, out=cum_hlogh[1:], where=h > 0)
    cum_hlogh[1:][h <= 0] = 0.0
    np.multiply(cum_hlogh[1:], h, out=cum_hlogh[1:])
    cum_hlogh[0] = 0.0
    np.cumsum(cum_hlogh, out=cum_hlogh)
    out = np.empty(n - first + 1)
    _kl_candidates(h, first, target, width, cum, cum_nz, cum_hlogh, term, out)
    return out


def _kl_buffers(n: int, width: int) -> tuple[npt.NDArray[np.float64], ...]:
    """This thread's prefix-sum arrays (n + 1) and (n, width) tables, reused from tensor to tensor."""
    have = getattr(_LOCAL, "kl", None)
    if have is None or have[0] != (n, width):
        have = _LOCAL.kl = ((n, width), tuple(np.empty(k) for k in (n + 1, n + 1, n + 1, n * width, n * width)))
    return have[1]


def add_counts(
    values: npt.NDArray[np.float32],
    scale: np.float32,
    bins: int,
    shift: int,
    abs_out: npt.NDArray[np.int64],
    signed_out: npt.NDArray[np.int64],
    fine: npt.NDArray[np.int32],
) -> int:
    """Add the counts of float32 values (1-D, contiguous, finite, |x| * scale < bins, scale =
    2**-e with e <= 0) to abs_out (bins bins of width 2**e) and signed_out (bins >> (shift - 1) bins
    of width 2**(e + shift)); return the number of exact zeros. fine: 2 * bins int32 of scratch (int32: 15 % faster than int64,
    the counts stay in the caches)."""
    if values.size < DIRECT_BELOW:
        return int(_direct(values, scale, bins, shift, abs_out, signed_out))
    blocks = _blocks()
    zeros = 0
    for start in range(0, values.size, FINE_MAX_VALUES):  # int32 counts: at most 2**31 - 1 a pass
        part = values[start : start + FINE_MAX_VALUES]
        fine[:] = 0
        z, edges, kept = _fine_pass(part, scale, bins, shift, fine, blocks)
        _fold(fine, bins, shift, abs_out, signed_out)
        if edges:
            _move_edges(part, scale, bins, shift, signed_out, blocks, kept)
        zeros += int(z)
    return zeros


_LOCAL = threading.local()
# Edges (see _check_pass) are rare: 1470 of 50 M values of one sample of a real OCR recogniser, in a
# quarter of its tensors. The check pass notes which blocks of BLOCK values hold any (up to
# BLOCKS_KEPT blocks; beyond, every value is looked at again) and only those are moved.
BLOCK = 2048
BLOCKS_KEPT = 256


def _blocks() -> npt.NDArray[np.int64]:
    have = getattr(_LOCAL, "blocks", None)
    if have is None:
        have = _LOCAL.blocks = np.empty(BLOCKS_KEPT, np.int64)
    return have
