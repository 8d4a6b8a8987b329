"""The colabs/ notebooks run top to bottom against runs the tests made, and say in one line what is missing on a
root with no runs yet or with pretraining runs only."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

import train
from conftest import ROOT, TINY


def execute(name, root, monkeypatch):
    """The notebook run on exman root `root`: (text it printed, number of pictures it drew)."""
    monkeypatch.setenv("EXMAN_PATH", str(root))  # the kernel inherits it
    nb = nbformat.read(os.path.join(ROOT, "colabs", f"{name}.ipynb"), as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": os.path.join(ROOT, "colabs")}}).execute()
    outputs = "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", []))
    images = [o for cell in nb.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert str(root) in outputs  # it read the root it was given, not some other logs folder
    return outputs, len(images)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["read_logs", "model_apply"])
def test_notebook_executes(runs, monkeypatch, name):
    outputs, images = execute(name, runs["root"], monkeypatch)
    assert images, "no plot was drawn"
    if name == "model_apply":
        assert "neighbours sharing the query's label:" in outputs
    assert " yet" not in outputs  # nothing reported missing


@pytest.fixture(scope="module")
def pretrained_only(tmp_path_factory, fmnist):
    root = tmp_path_factory.mktemp("pretrained_only")
    train.main(TINY + ["--problem", "simclr", "--iters", "2", "--log_freq", "1", "--eval_freq", "-1", "--root", str(root)])
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name, missing", [("read_logs", "no runs under"), ("model_apply", "no pretraining run with")])
def test_notebook_on_a_root_without_runs_says_so_in_one_line(tmp_path, monkeypatch, name, missing):
    outputs, images = execute(name, tmp_path, monkeypatch)
    assert sum(missing in line for line in outputs.splitlines()) == 1 and not images


def test_read_logs_on_pretraining_runs_only_plots_them_and_says_no_probe_yet(pretrained_only, monkeypatch):
    outputs, images = execute("read_logs", pretrained_only, monkeypatch)
    assert images == 2 and "no linear-evaluation run yet" in outputs  # losses and kNN, monitors
