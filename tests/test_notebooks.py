"""The colabs/ notebooks run top to bottom against runs the tests made."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT


@pytest.mark.parametrize("name", ["read_logs", "model_apply"])
def test_notebook_executes(runs, monkeypatch, name):
    monkeypatch.setenv("EXMAN_PATH", runs["root"])  # the kernel inherits it
    nb = nbformat.read(os.path.join(ROOT, "colabs", f"{name}.ipynb"), as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": os.path.join(ROOT, "colabs")}}).execute()
    outputs = "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", []))
    assert runs["root"] in outputs  # it read the tests' runs, not some other logs folder
    images = [o for cell in nb.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "no plot was drawn"
    if name == "model_apply":
        assert "neighbours sharing the query's label:" in outputs
