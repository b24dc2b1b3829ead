"""One benchmark step in a fresh process: its exit, its peak RSS (os.wait4: that child's ru_maxrss
alone), its wall time and output, killed after a timeout. Shared by the scripts that compare runs
side by side (bench_collect.py, bench_analyze_memory.py)."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ChildRun:
    exit_code: int
    peak_rss_kb: int  # ru_maxrss is in KiB on Linux
    elapsed: float
    output: str  # stdout and stderr together
    timed_out: bool

    def last_line(self, width: int = 100) -> str:
        lines = [line for line in self.output.strip().splitlines() if line.strip()]
        return lines[-1][:width] if lines else "no output"


def run_child(cmd: Sequence[str], cwd: str, timeout: float, env: Mapping[str, str] | None = None, poll: float = 0.05) -> ChildRun:
    """Run cmd in cwd, polling os.wait4 so that the peak RSS read is this child's own."""
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(list(cmd), cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=dict(env) if env is not None else None)
        start = time.monotonic()
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - start > timeout:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                timed_out = True
                break
            time.sleep(poll)
        elapsed = time.monotonic() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        return ChildRun(proc.returncode, int(usage.ru_maxrss), elapsed, log.read(), timed_out)
