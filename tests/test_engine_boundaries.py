"""The engine (quantviz/) never imports streamlit: checked in the source and in a fresh interpreter."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

from tests.conftest import ROOT

PACKAGE = ROOT / "quantviz"
FORBIDDEN = "streamlit"


def _imported_modules(tree: ast.AST) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            names.extend(a.value for a in node.args[:1] if isinstance(a, ast.Constant) and isinstance(a.value, str))
    return names


def test_no_streamlit_import_in_source() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 10
    offenders = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for mod in _imported_modules(tree):
            if mod == FORBIDDEN or mod.startswith(FORBIDDEN + "."):
                offenders.append(f"{path.relative_to(ROOT)}: {mod}")
    assert offenders == []


def test_the_check_itself_sees_imports() -> None:
    src = "import streamlit as st\nfrom streamlit.runtime import x\nimportlib.import_module('streamlit')\n"
    assert _imported_modules(ast.parse(src)) == ["streamlit", "streamlit.runtime", "streamlit"]


def test_importing_every_module_loads_no_streamlit() -> None:
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in PACKAGE.rglob("*.py")
        if p.name != "__main__.py"
    )
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "print(json.dumps(sorted(k for k in sys.modules if k == 'streamlit' or k.startswith('streamlit.'))))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []
    assert "quantviz.cli" in modules and "quantviz.calib.kl" in modules
