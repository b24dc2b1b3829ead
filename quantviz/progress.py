"""What long work reports while it runs, and how it is stopped (the app's bars, the CLI's stderr).

A Step is (phase, done, total, unit): which work is running ("Analysis with KL (2 of 6)"), how far,
and in what it counts ("samples", or "layer groups" for EQ, which walks the network group by group).
phased() turns the engine's plain (done, total) callbacks (quantviz.data.Progress) into Steps.
A CancelToken is the engine's quantviz.data.Cancel: the batch loops ask it before each batch (EQ
before each layer group) and raise CancelledError once it is set, before anything is returned, so what
the caller held before stays as it was. Eta estimates the time left from the pace so far; text()
words a Step for a progress bar.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from quantviz.data import Progress


@dataclass(frozen=True)
class Step:
    phase: str
    done: int
    total: int
    unit: str


Report = Callable[[Step], object]


def phased(report: Report | None, phase: str, unit: str = "samples", offset: int = 0, grand_total: int | None = None) -> Progress | None:
    """A (done, total) callback that reports Steps of `phase`; offset and grand_total count this phase
    as one stretch of a longer run (the fourth of six analyses: offset 3 * total, grand_total 6 * total)."""
    if report is None:
        return None

    def cb(done: int, total: int) -> None:
        report(Step(phase, offset + done, grand_total if grand_total is not None else total, unit))

    return cb


class CancelToken:
    """Set once by whoever wants the work to stop (any thread); the work asks it before each batch."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def __call__(self) -> bool:
        return self._event.is_set()


class Eta:
    """Seconds left at the pace so far: elapsed * (total - done) / done since the first report.

    clock: the time source (time.monotonic; tests give their own)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.start: float | None = None
        self.first_done = 0

    def left(self, step: Step) -> float | None:
        now = self.clock()
        if self.start is None:
            self.start, self.first_done = now, step.done
            return None
        done = step.done - self.first_done
        if done <= 0 or step.total <= 0:
            return None
        return (now - self.start) * max(step.total - step.done, 0) / done


def duration_text(seconds: float) -> str:
    if not math.isfinite(seconds):
        return ""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def text(step: Step, left: float | None) -> str:
    """'Analysis with KL (2 of 6): 300 / 1536 samples · about 40 s left'."""
    out = f"{step.phase}: {step.done} / {step.total} {step.unit}"
    if left is not None and step.done < step.total:
        out += f" · about {duration_text(left)} left"
    return out
