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

The same pass also finds the values' min and max (three integer reductions of their bits, see
add_counts), so that once a tensor's range is known (every batch after its first) the caller need
not run numpy's two reductions before it: values are counted on the current grid until a block holds
one beyond it (quantviz.histogram.update_pair_within). Measured on one thread over the 403
activations of 4 samples of a real OCR recogniser (200 M values, every tensor's range seen before):
a whole TensorAccumulator.update 2.79 ns a value before this pass (numpy min and max, then the count
with int64-widened, wrapped indexing), 1.58 after.
"""

from __future__ import annotations

import math
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

    @njit(nogil=True, cache=True, inline="always")
    def _abs_bits(top_s, top_u):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
        """The largest |x| bits of values whose bits' largest int32 is top_s and largest uint32 top_u:
        of the positives (top_s >= 0) and of the negatives (top_u has its sign bit), NaN above Inf."""
        sign = np.uint32(0x80000000)
        positive = np.uint32(top_s) if top_s >= 0 else np.uint32(0)
        negative = (top_u & ~sign) if top_u >= sign else np.uint32(0)
        return max(positive, negative)

    @njit(nogil=True, cache=True, boundscheck=False)
    def _fine_pass(values, bits, scale, limit, bins, shift, fine, blocks, ranges):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
        """fine[bins + a] (s >= 0) or fine[bins - 1 - a] (s < 0) += 1 for every value, block by block,
        stopping before the first block holding a value whose |x| bits (bits: the same values seen as
        uint32) reach `limit` (beyond the grid, Inf or NaN). Returns the values counted, the exact zeros
        and the edges (negative s, whole multiples of 2**shift, other than 0): their number and the
        number of blocks of BLOCK values holding any, the first blocks.size of which are noted. ranges
        (3 uint32, updated): the largest bits as int32 and as uint32 and the smallest as uint32 of the
        values counted, from which _float_range reads their min and max.

        BLOCK bin numbers are computed first, in a loop without stores to fine that runs in vector
        registers (the zero and edge counts and the three bit reductions ride along), then counted:
        1.3 -> 0.7 ns a value on normal data against one loop doing both. Every integer here is cast
        back to 32 bits: numba widens int32 arithmetic to int64, and AVX2 has no vector int64 -> float
        conversion, so one widened operand keeps the whole loop scalar (1.75 against 1.2 ns a value,
        measured). The bin numbers are unsigned so that indexing fine skips numba's negative-index
        wrap (scatter 1.6 -> 1.0 ns).

        The edge test is one comparison: float(a with its low `shift` bits cleared) == -s holds exactly
        for the edges and for s == 0 (then both sides are 0), never otherwise (a negative s that is not
        a whole number has |s| > a; a whole one that is not a multiple of 2**shift has the cleared a
        below a; a positive s has -s < 0). So a block's edges are that count minus its zeros."""
        idx = np.empty(BLOCK, np.uint32)
        half = np.int32(bins)
        cleared = np.int32(-(1 << shift))
        top_s = np.int32(ranges[0])
        top_u = np.uint32(ranges[1])
        low_u = np.uint32(ranges[2])
        zeros = np.int64(0)
        edges = np.int64(0)
        kept = 0
        counted = 0
        for b in range(0, values.size, BLOCK):
            block = values[b : b + BLOCK]  # a slice, not an index range: the loop then vectorises
            ub = bits[b : b + BLOCK]
            m = block.size
            here = np.int32(0)
            z = np.int32(0)
            bs = np.int32(-0x80000000)
            bu = np.uint32(0)
            lu = np.uint32(0xFFFFFFFF)
            for i in range(m):
                s = block[i] * scale
                a = np.int32(abs(s))
                idx[i] = np.uint32(half + (a ^ -np.int32(s < 0)))
                z += np.int32(s == 0)
                here += np.int32(np.float32(np.int32(a & cleared)) == -s)
                u = ub[i]
                bs = max(bs, np.int32(u))
                bu = max(bu, u)
                lu = min(lu, u)
            if _abs_bits(bs, bu) >= limit:
                break
            for i in range(m):
                fine[np.uint64(idx[i])] += np.int32(1)
            counted += m
            top_s = max(top_s, bs)
            top_u = max(top_u, bu)
            low_u = min(low_u, lu)
            zeros += z
            here -= z
            if here:
                if kept < blocks.size:
                    blocks[kept] = b
                kept += 1
                edges += here
        ranges[0] = np.uint32(top_s)
        ranges[1] = top_u
        ranges[2] = low_u
        return counted, zeros, edges, kept

    @njit(nogil=True, cache=True, boundscheck=False)
    def _fold(fine, bins, shift, abs_out, signed_out):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
        """The fine layout into the two histograms, and zeroed for the next pass (while in the caches):
        31 -> 13 us a call for 16384 bins against indexing fine directly and a separate memset."""
        pos = fine[bins:]
        neg = fine[:bins]
        for a in range(bins):
            abs_out[a] += np.int64(pos[a]) + np.int64(neg[np.uint64(bins - 1 - a)])
        group = 1 << shift
        for j in range(signed_out.size):
            run = fine[j * group : j * group + group]
            t = np.int64(0)
            for q in range(run.size):
                t += run[q]
            signed_out[j] += t
        fine[:] = 0

    @njit(nogil=True, cache=True, boundscheck=False)
    def _count(values, bits, scale, limit, bins, shift, fine, blocks, abs_out, signed_out, ranges, part):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
        """add_counts' passes in one call (a call from Python costs microseconds, paid per tensor and
        run under the lock that serialises the update threads): `part` values at a time (int32 counts),
        each pass counted, folded and its edges moved. Returns the values counted and their zeros."""
        zeros = 0
        counted = 0
        for start in range(0, values.size, part):
            piece = values[start : start + part]
            c, z, edges, kept = _fine_pass(piece, bits[start : start + part], scale, limit, bins, shift, fine, blocks, ranges)
            _fold(fine, bins, shift, abs_out, signed_out)
            if edges:
                _move_edges(piece[:c], scale, bins, shift, signed_out, blocks, kept)
            zeros += z
            counted += c
            if c < piece.size:
                break
        return counted, zeros

    @njit(nogil=True, cache=True, boundscheck=False)
    def _direct_within(values, bits, scale, limit, bins, shift, abs_out, signed_out, ranges):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
        """A small tensor with a limit: its bit reductions first (a pass over a few KB), then, when
        every |x| lies below the limit, _direct. Returns the values counted (all or none) and zeros."""
        top_s = np.int32(-0x80000000)
        top_u = np.uint32(0)
        low_u = np.uint32(0xFFFFFFFF)
        for i in range(bits.size):
            u = bits[i]
            top_s = max(top_s, np.int32(u))
            top_u = max(top_u, u)
            low_u = min(low_u, u)
        if _abs_bits(top_s, top_u) >= limit:
            return 0, 0
        ranges[0] = np.uint32(top_s)
        ranges[1] = top_u
        ranges[2] = low_u
        return values.size, _direct(values, scale, bins, shift, abs_out, signed_out)

    @njit(nogil=True, cache=True)
    def _float_range(ranges):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
        """(min, max) of the values counted from _fine_pass' bit reductions: positive floats order like
        their bits as int32, negative ones like theirs as uint32 (the largest is the most negative);
        the smallest uint32 is the least negative when all are negative, the smallest positive when
        none is. -0.0 reads as 0.0."""
        as_float = ranges.view(np.float32)
        hi = as_float[0] if ranges.view(np.int32)[0] >= 0 else as_float[2]
        lo = as_float[1] if ranges[1] >= np.uint32(0x80000000) else as_float[2]
        return np.float64(lo) + 0.0, np.float64(hi) + 0.0

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


if njit is not None:

    @njit(nogil=True, cache=True, boundscheck=False, fastmath={"reassoc"})
    def _pair_sums(x, y, out):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
        """Per row: sum a*a, b*b, a*b, (a-b)*(a-b), the products in float64 (a - b in float32, as numpy
        computes it). Reassociation only (no assumption about NaN or Inf): the sums vectorise and a
        NaN still propagates."""
        for i in range(x.shape[0]):
            xr = x[i]
            yr = y[i]
            xx = 0.0
            yy = 0.0
            xy = 0.0
            dd = 0.0
            for j in range(xr.size):
                a = xr[j]
                b = yr[j]
                d = np.float64(a - b)
                a64 = np.float64(a)
                b64 = np.float64(b)
                xx += a64 * a64
                yy += b64 * b64
                xy += a64 * b64
                dd += d * d
            out[i, 0] = xx
            out[i, 1] = yy
            out[i, 2] = xy
            out[i, 3] = dd


def pair_sums(x: npt.NDArray[np.float32], y: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """quantviz.metrics' four per-sample sums of two float32 [samples, elements] arrays in one pass over
    both (the analysis's hot spot after onnxruntime: four einsum passes took 5.6 of 20 s of a 16-sample
    analysis of a 404-tensor OCR recogniser; one compiled pass is 7-14x faster). Same sums as the
    einsum path to rounding (another order of additions): the tests compare both."""
    out = np.empty((x.shape[0], 4))
    _pair_sums(np.ascontiguousarray(x), np.ascontiguousarray(y), out)
    return out


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


# add_counts' limit when every value is known to lie on the grid: no |x| has these bits.
NO_LIMIT = 0xFFFFFFFF


def add_counts(
    values: npt.NDArray[np.float32],
    scale: np.float32,
    bins: int,
    shift: int,
    abs_out: npt.NDArray[np.int64],
    signed_out: npt.NDArray[np.int64],
    fine: npt.NDArray[np.int32],
    limit: int = NO_LIMIT,
) -> tuple[int, int, float, float]:
    """Add the counts of float32 values (1-D, contiguous, scale = 2**-e with e <= 0) to abs_out (bins
    bins of width 2**e) and signed_out (bins >> (shift - 1) bins of width 2**(e + shift)).

    With the default limit every value must be finite with |x| * scale < bins. With a limit (the bits
    of bins * 2**e as float32) the values are counted up to the first block of BLOCK values holding one
    beyond the grid (or Inf or NaN): the caller, which then did not need their min and max first, takes
    the rest its own way. Returns the number of values counted, of exact zeros among them, and their
    min and max (NaN without a limit, or when nothing was counted), read off three reductions of their
    bits: positive floats order like their bits as int32, negative ones like theirs as uint32 (the
    largest is the most negative); -0.0 reads as 0.0. fine: 2 * bins int32 of scratch, all zero
    (each fold leaves it so; int32: 15 % faster than int64, the counts stay in the caches). Tensors of fewer than DIRECT_BELOW values are
    counted directly, with a limit all of them or none (a first look at their bits decides)."""
    if values.size < DIRECT_BELOW and limit == NO_LIMIT:
        return values.size, int(_direct(values, scale, bins, shift, abs_out, signed_out)), math.nan, math.nan
    ranges = _ranges()
    if values.size < DIRECT_BELOW:
        counted, zeros = _direct_within(values, values.view(np.uint32), scale, np.uint32(limit), bins, shift, abs_out, signed_out, ranges)
    else:
        ranges[0], ranges[1], ranges[2] = 0x80000000, 0, 0xFFFFFFFF
        counted, zeros = _count(values, values.view(np.uint32), scale, np.uint32(limit), bins, shift, fine, _blocks(), abs_out, signed_out, ranges, FINE_MAX_VALUES)
    if limit == NO_LIMIT or not counted:
        return int(counted), int(zeros), math.nan, math.nan
    lo, hi = _float_range(ranges)
    return int(counted), int(zeros), float(lo), float(hi)


_LOCAL = threading.local()
# Edges (see _check_pass) are rare: 1470 of 50 M values of one sample of a real OCR recogniser, in a
# quarter of its tensors. The check pass notes which blocks of BLOCK values hold any (up to
# BLOCKS_KEPT blocks; beyond, every value is looked at again) and only those are moved.
BLOCK = 2048
BLOCKS_KEPT = 256


def _ranges() -> npt.NDArray[np.uint32]:
    have = getattr(_LOCAL, "ranges", None)
    if have is None:
        have = _LOCAL.ranges = np.empty(3, np.uint32)
    return have


def _blocks() -> npt.NDArray[np.int64]:
    have = getattr(_LOCAL, "blocks", None)
    if have is None:
        have = _LOCAL.blocks = np.empty(BLOCKS_KEPT, np.int64)
    return have
