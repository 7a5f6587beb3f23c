"""The example notebook runs in smoke mode and its stored outputs stay small (issue 12)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
NOTEBOOK = os.path.join(ROOT, "analyses", "example.ipynb")


def test_shipped_notebook_is_executed_and_small():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code) and os.path.getsize(NOTEBOOK) < 30_000
    html = [o for c in code for o in c.get("outputs", []) if "text/html" in o.get("data", {})]
    assert html and "<table>" in html[0]["data"]["text/html"]


@pytest.mark.slow
def test_notebook_runs_in_smoke_mode(tmp_path):
    pytest.importorskip("nbclient")
    copy = tmp_path / "example.ipynb"
    shutil.copy(NOTEBOOK, copy)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "run_notebook.py"), str(copy)],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "LAYERPROBE_SMOKE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    import nbformat

    nb = nbformat.read(copy, as_version=4)
    last = [c for c in nb.cells if c.cell_type == "code"][-1]["outputs"][0]["data"]["text/plain"]
    assert "embeddings" in last and os.path.getsize(copy) < 30_000
