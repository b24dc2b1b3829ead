"""Habits the suite enforces: ruff and mypy over every Python folder (strict, mypy.ini), and layering.

The linters run as the user would run them (`make lint`); a failure shows the tool's own output.
The layering rule: quantviz/calib/ holds pure functions of statistics, so it never imports the table,
the QDQ model builder or the collector (those import calib, not the other way round). EasyQuant,
which drives the model, is its own package above both (quantviz/easyquant/).
"""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PYTHON_FOLDERS = ["quantviz", "ui", "pages", "tests", "bench", "app.py"]
CALIB = ROOT / "quantviz" / "calib"
CALIB_MUST_NOT_IMPORT = ("quantviz.table", "quantviz.qdq", "quantviz.collect")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_passes_over_every_python_folder() -> None:
    r = _run("ruff", "check", *PYTHON_FOLDERS)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict_on_the_engine() -> None:
    r = _run("mypy", "quantviz")  # mypy.ini turns strict on for quantviz.*
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Success" in r.stdout


def test_mypy_on_the_app() -> None:
    r = _run("mypy", "ui", "pages", "app.py")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Success" in r.stdout


def test_mypy_on_the_tests_and_the_benches() -> None:
    r = _run("mypy", "tests", "bench")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Success" in r.stdout


def test_make_lint_types_every_python_folder() -> None:
    """`make lint` runs mypy over the same folders as ruff (CI runs it; this suite runs mypy itself above)."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    lint = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    typed = {word for line in lint.splitlines() if "-m mypy" in line for word in line.split("-m mypy", 1)[1].split()}
    assert typed == set(PYTHON_FOLDERS), lint


def test_mypy_config_is_strict_on_the_engine() -> None:
    text = (ROOT / "mypy.ini").read_text(encoding="utf-8")
    section = text.split("[mypy-quantviz.*]", 1)[1].split("[", 1)[0]
    assert "strict = True" in section
    assert "ignore_errors" not in text  # no module is excused wholesale
    main = text.split("[mypy]", 1)[1].split("[", 1)[0]
    assert "strict = True" in main  # every folder is held to the engine's flags
    assert "ignore-without-code" in main  # an ignore names the error it silences


def _imports(path_text: str, package: str) -> list[str]:
    """Absolute names of the modules a file imports (relative imports resolved against `package`)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path_text)):
        if isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.append(mod)
            names.extend(f"{mod}.{a.name}" for a in node.names)
    return names


def _forbidden(names: list[str]) -> list[str]:
    return sorted({f for n in names for f in CALIB_MUST_NOT_IMPORT if n == f or n.startswith(f + ".")})


def test_calib_imports_neither_table_nor_qdq_nor_collect() -> None:
    files = sorted(CALIB.glob("*.py"))
    assert len(files) >= 5
    offenders = {
        p.name: bad for p in files if (bad := _forbidden(_imports(p.read_text(encoding="utf-8"), "quantviz.calib")))
    }
    assert offenders == {}


def test_easyquant_sits_above_calib_and_the_table() -> None:
    # EasyQuant drives the model (table, QDQ-prepared model, batches): its own package, which calib and
    # the table never import (it imports them)
    assert not (CALIB / "easyquant.py").exists()
    assert (ROOT / "quantviz" / "easyquant" / "__init__.py").exists()
    for path, package in ((ROOT / "quantviz" / "table.py", "quantviz"), *((p, "quantviz.calib") for p in CALIB.glob("*.py"))):
        names = _imports(path.read_text(encoding="utf-8"), package)
        assert not [n for n in names if n == "quantviz.easyquant" or n.startswith("quantviz.easyquant.")], path.name


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ("from quantviz.table import CalibrationTable\n", ["quantviz.table"]),
        ("import quantviz.qdq as q\n", ["quantviz.qdq"]),
        ("from ..collect import collect_stats\n", ["quantviz.collect"]),
        ("from quantviz import table\n", ["quantviz.table"]),
        ("def f():\n    from quantviz.collect import x\n", ["quantviz.collect"]),
        ("from quantviz.calib.kl import kl_threshold\nfrom . import mse\n", []),
    ],
)
def test_the_layering_check_sees_imports(src: str, expected: list[str]) -> None:
    assert _forbidden(_imports(src, "quantviz.calib")) == expected
