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


@pytest.mark.slow
def test_the_notebooks_show_the_runs_they_can_and_name_in_one_line_those_they_cannot(pretrained_only, tmp_path,
                                                                                     monkeypatch):
    """A real root: a run folder deleted by hand (its index link dangles), one run's logs.csv garbled, another's
    params.yaml that the YAML loader rejects, and the newest run trained on an image folder."""
    import shutil
    root = tmp_path / "root"
    shutil.copytree(pretrained_only, root, symlinks=True)
    (good,) = (root / "runs").iterdir()
    for num, damage in ((2, "gone"), (3, "logs"), (4, "params"), (5, "folder")):
        copy = root / "runs" / good.name.replace("000001", f"00000{num}")
        shutil.copytree(good, copy)
        params = (copy / "params.yaml").read_text().replace("id: 1", f"id: {num}")
        (copy / "params.yaml").write_text(params)
        (root / "index" / f"{copy.name}.yaml").symlink_to(os.path.join("..", "runs", copy.name, "params.yaml"))
        if damage == "gone":
            shutil.rmtree(copy)
        elif damage == "logs":
            (copy / "logs.csv").write_text('iter,"train_loss\n1,')
        elif damage == "params":
            (copy / "params.yaml").write_text("name: [unclosed\n")
        else:
            (copy / "params.yaml").write_text(params.replace("data: fmnist", "data: folder"))
    outputs, images = execute("read_logs", root, monkeypatch)
    assert images == 2 and "no linear-evaluation run yet" in outputs
    assert "left out 000002" in outputs and "dangling" in outputs and "left out 000004" in outputs
    assert "left out the logs of run 3" in outputs
    outputs, images = execute("model_apply", root, monkeypatch)
    assert "run 3 (simclr" in outputs and images == 1  # the image-folder run 5 is passed over, not a traceback
