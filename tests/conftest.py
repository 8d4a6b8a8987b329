import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test of 5 s or more (whole runs, several processes); "
                                       "pytest -m 'not slow' is the fast tier")


@pytest.fixture(scope="session")
def fmnist():
    """The Debian Fashion-MNIST files; CI installs them (.ci/setup), so their absence is a failure, not a skip."""
    from data.datasets import FMNIST_DEBIAN
    if not os.path.exists(os.path.join(FMNIST_DEBIAN, "train-images-idx3-ubyte.gz")):
        pytest.fail(f"Fashion-MNIST is missing from {FMNIST_DEBIAN}: apt-get install dataset-fashion-mnist")
    return FMNIST_DEBIAN


HANG = 1800  # seconds: a guard against a hung process, never a speed limit (a slow machine must still pass)


def train_cli(args, timeout=HANG, **kw):
    """train.py in a fresh process, as a user runs it: (return code, stdout, stderr) in a CompletedProcess."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py")] + args, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, **kw)


def start_train(args, **kw):
    """train.py started in a fresh process and left running: a Popen with text stdout and stderr pipes."""
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py")] + args, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def saved(folder, name="checkpoint.pth.tar"):
    """A file a run saved (its checkpoint by default), read as any user reads it."""
    return torch.load(os.path.join(folder, name), weights_only=True)


def only_run(root):
    """The one run folder under an exman root."""
    (folder,) = (root / "runs").iterdir()
    return folder


# scored on 1,000 of the test images: the 10,000 made three quarters of the suite's time feature extraction
TINY = ["--test_subset", "1000", "--data", "fmnist", "--subset", "512", "--batch_size", "64", "--arch", "resnet18",
        "--width", "0.125", "--opt", "adamw", "--lr", "1e-3", "--workers", "0"]


@pytest.fixture(scope="session")
def runs(tmp_path_factory, fmnist):
    """One tiny SimCLR pretraining and its linear evaluation, shared by the tests that only read them."""
    import train
    root = str(tmp_path_factory.mktemp("logs"))
    pre, pre_metrics = train.main(["--problem", "simclr", "--root", root, "--iters", "6", "--log_freq", "2",
                                   "--eval_freq", "4", "--knn_k", "20", "--name", "tiny"] + TINY)
    lin, lin_metrics = train.main(["--problem", "eval", "--root", root, "--encoder_ckpt", pre, "--subset", "512",
                                   "--test_subset", "1000",
                                   "--epochs", "30", "--batch_size", "128", "--opt", "sgd", "--lr", "0.1",
                                   "--linear_bn", "true", "--knn_k", "20"])
    return dict(root=root, pre=pre, lin=lin, pre_metrics=pre_metrics, lin_metrics=lin_metrics)
