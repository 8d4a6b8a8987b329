"""NPID and DeepCluster-v2 end to end on a Fashion-MNIST subset: they learn, resume exactly, and refuse bad input."""
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from conftest import ROOT, TINY

NPID = ["--problem", "npid", "--num_negatives", "256", "--knn_k", "20", "--log_freq", "4", "--lr_schedule", "const"] + TINY
DCV2 = ["--problem", "dcv2", "--num_clusters", "20", "30", "--kmeans_iters", "3", "--head_hidden_dims", "64",
        "--knn_k", "20", "--log_freq", "4", "--lr_schedule", "const"] + TINY  # 512 images, batch 64: 8 steps an epoch


def cli(args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py")] + args, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def only_run(root):
    (folder,) = (root / "runs").iterdir()
    return folder


def interrupted_equals_uninterrupted(tmp_path, args, stop, total):
    """Run `total` steps at once, and `stop` steps then a resume to `total`; return both final checkpoints."""
    args = args + ["--eval_freq", "-1"]  # no kNN at the end: only the weights matter here
    whole = cli(args + ["--iters", str(total), "--root", str(tmp_path / "a")])
    assert whole.returncode == 0, whole.stderr
    first = cli(args + ["--iters", str(stop), "--root", str(tmp_path / "b")])
    assert first.returncode == 0, first.stderr
    resumed = cli(["--resume", str(only_run(tmp_path / "b")), "--iters", str(total)])
    assert resumed.returncode == 0, resumed.stderr
    a, b = (torch.load(only_run(tmp_path / r) / "checkpoint.pth.tar", weights_only=True) for r in "ab")
    for key in a["model"]:
        if key != "_extra_state":
            assert torch.equal(a["model"][key], b["model"][key]), key
    return a, b


def test_npid_resumed_mid_epoch_equals_uninterrupted_with_its_bank_and_z(tmp_path):
    a, b = interrupted_equals_uninterrupted(tmp_path, NPID + ["--loss_type", "nce"], stop=12, total=20)
    bank_a, bank_b = a["model"]["_extra_state"], b["model"]["_extra_state"]
    assert torch.equal(bank_a["memory_bank"], bank_b["memory_bank"])
    assert bank_a["z_const"] == bank_b["z_const"] > 0
    torch.testing.assert_close(bank_a["memory_bank"].norm(dim=1), torch.ones(512))


def test_dcv2_resumed_mid_epoch_equals_uninterrupted_with_its_banks_and_clusters(tmp_path):
    a, b = interrupted_equals_uninterrupted(tmp_path, DCV2, stop=12, total=20)
    assign_a, assign_b = a["model"]["_extra_state"]["assignments"], b["model"]["_extra_state"]["assignments"]
    assert a["model"]["_extra_state"]["clustered_epoch"] == b["model"]["_extra_state"]["clustered_epoch"] == 2
    assert torch.equal(assign_a, assign_b)
    assert assign_a.shape == (2, 512) and (assign_a >= 0).all()  # every image was in the bank at the last clustering
    assert assign_a[0].max() < 20 and assign_a[1].max() < 30
    bank_a, bank_b = a["rank_state"][0], b["rank_state"][0]
    assert torch.equal(bank_a["bank"], bank_b["bank"]) and torch.equal(bank_a["bank_index"], bank_b["bank_index"])
    assert (bank_a["bank_index"] >= 0).all() and bank_a["bank_index"].max() < 512  # every slot holds an image
    torch.testing.assert_close(a["model"]["prototypes.0.weight"].norm(dim=1), torch.ones(20))  # centroids


@pytest.mark.parametrize("args,message", [
    (NPID + ["--num_crops", "2"], "NPID takes one crop per image"),
    (DCV2 + ["--num_clusters", "600"], "--num_clusters 600 exceeds the 512 images of a rank's memory bank"),
    (DCV2 + ["--crops_for_mb", "0", "2"], "--crops_for_mb [0, 2] names crops beyond the 2 there are"),
])
def test_bad_npid_and_dcv2_flags_exit_with_one_line_and_no_run(tmp_path, args, message):
    run = cli(args + ["--iters", "2", "--root", str(tmp_path)])
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [f"train.py: error: {message}"]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
