"""Hostile files are refused within a memory bound: each runs in a subprocess whose address space is
capped with resource.setrlimit(RLIMIT_AS), so an attempt to allocate what the file declares would end
in a MemoryError (or the process being killed) instead of the refusal sentence the test expects.

- a 3 MB .npz whose member really decompresses to 3 GiB of zeros (a zip bomb), as calibration data;
- a 308-byte-class .npz declaring a 256 TiB array;
- the tampered statistics file: a tensor's max a million times past its histogram (MSE would build one
  candidate per bin edge up to the abs-max: gigabytes), loaded and calibrated with every method.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import bad_files as bf
from tests.conftest import ROOT

PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
CAP_BYTES = 1536 << 20  # the interpreter with numpy and onnx needs about 0.6 GiB of address space

SCRIPT = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
from quantviz.errors import QuantvizError
kind, path = sys.argv[1], sys.argv[2]
try:
    if kind == "data":
        from quantviz.data import open_source
        from quantviz.model import InputSpec
        open_source(path, [InputSpec("x", (None, 3, 8, 8), "float32")])
    else:
        from quantviz.stats import load_stats
        from quantviz.table import calibrate
        stats = load_stats(path)
        for m in ("mse", "kl", "percentile", "minmax", "aciq"):
            calibrate(stats, m)
except QuantvizError as exc:
    print("REFUSED", exc)
    sys.exit(0)
print("ACCEPTED")
sys.exit(3)
"""


def _run(kind: str, path: Path) -> subprocess.CompletedProcess[str]:
    code = SCRIPT.format(cap=CAP_BYTES)
    return subprocess.run([PYTHON, "-c", code, kind, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> bf.Valid:
    return bf.build(tmp_path_factory.mktemp("valid"))


def test_the_cap_is_real(tmp_path: Path) -> None:
    """Under the cap, allocating 3 GiB fails: so a refusal below is not luck."""
    code = f"import resource\nresource.setrlimit(resource.RLIMIT_AS, ({CAP_BYTES}, {CAP_BYTES}))\nimport numpy as np\nnp.ones(3 << 30, np.uint8)"
    r = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "MemoryError" in r.stderr


def test_zip_bomb_is_refused_under_the_cap(tmp_path: Path) -> None:
    p = tmp_path / "bomb.npz"
    p.write_bytes(bf.zip_bomb("x", 3.0))
    assert p.stat().st_size < 4 << 20
    r = _run("data", p)
    assert r.returncode == 0 and "REFUSED" in r.stdout and "zip bomb" in r.stdout, r.stdout + r.stderr


def test_declared_256_tib_is_refused_under_the_cap(tmp_path: Path) -> None:
    p = tmp_path / "huge.npz"
    p.write_bytes(bf.huge_declared("x"))
    assert p.stat().st_size < 400
    r = _run("data", p)
    assert r.returncode == 0 and "REFUSED" in r.stdout and "limit" in r.stdout, r.stdout + r.stderr


def test_tampered_statistics_are_refused_under_the_cap(tmp_path: Path, valid: bf.Valid) -> None:
    def tamper(a: dict[str, np.ndarray]) -> None:
        a["scalars"] = a["scalars"].copy()
        a["scalars"][:, 6] *= 1e6  # max of every tensor, a million times past its histograms

    p = tmp_path / "tampered.npz"
    p.write_bytes(bf.with_arrays(valid.files["stats"], tamper))
    r = _run("stats", p)
    assert r.returncode == 0 and "REFUSED" in r.stdout and "disagrees" in r.stdout, r.stdout + r.stderr


def test_the_valid_statistics_calibrate_under_the_cap(valid: bf.Valid) -> None:
    r = _run("stats", valid.stats)
    assert r.returncode == 3 and "ACCEPTED" in r.stdout, r.stdout + r.stderr
