"""SwAV end to end on a Fashion-MNIST subset: the loss falls, the queue switches on and survives a resume, NaN stops cleanly."""
import pandas as pd
import pytest
import torch

import train
from conftest import TINY, only_run, saved, train_cli as cli

SWAV = ["--problem", "swav", "--num_prototypes", "30", "--queue_length", "128", "--epoch_queue_starts", "1",
        "--freeze_prototypes_niters", "4", "--head_hidden_dims", "64", "--eval_freq", "-1", "--log_freq", "4",
        "--lr_schedule", "const"] + TINY  # 512 images, batch 64: 8 steps an epoch, the queue fills in 2


@pytest.mark.slow
def test_swav_trains_with_its_queue_and_resumes_it_exactly(tmp_path):
    whole = cli(SWAV + ["--iters", "24", "--root", str(tmp_path / "a")])
    assert whole.returncode == 0, whole.stderr
    logs = pd.read_csv(only_run(tmp_path / "a") / "logs.csv")
    assert logs["queue_used"].tolist() == [0, 0, 1, 1, 1, 1]  # epoch 1 fills it (steps 8, 9), then it is used
    assert logs["train_loss"].iloc[-1] < logs["train_loss"].iloc[0] - 0.05
    first = cli(SWAV + ["--iters", "12", "--root", str(tmp_path / "b")])  # stops after the queue started
    assert first.returncode == 0, first.stderr
    folder = only_run(tmp_path / "b")
    resumed = cli(["--resume", str(folder), "--iters", "24"])
    assert resumed.returncode == 0, resumed.stderr
    a = saved(only_run(tmp_path / "a"))
    b = saved(folder)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key, value in a["online_probe"]["layer"].items():  # the online probe resumes too, momentum included
        assert torch.equal(value, b["online_probe"]["layer"][key]), key
    assert b["rank_state"][0]["queue_filled"] == 128
    assert torch.equal(a["rank_state"][0]["queue"], b["rank_state"][0]["queue"])


@pytest.mark.slow
def test_prototypes_stay_frozen_for_their_first_steps_with_multi_crop(tmp_path):
    multi_crop = ["--num_crops", "2", "2", "--size_crops", "20", "12", "--min_scale_crops", "0.3", "0.1",
                  "--max_scale_crops", "1", "0.3"]
    run = cli(SWAV + multi_crop + ["--iters", "3", "--freeze_prototypes_niters", "3", "--opt", "sgd", "--root", str(tmp_path)])
    assert run.returncode == 0, run.stderr
    ckpt = saved(only_run(tmp_path))
    momentum_buffers = len(ckpt["optimizer"]["state"])  # SGD keeps one for every parameter it has stepped
    trainable = sum(1 for k in ckpt["model"] if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert momentum_buffers == trainable - 1  # every parameter but the one prototype layer


@pytest.mark.slow
def test_non_finite_loss_dumps_the_step_and_keeps_the_checkpoint(tmp_path):
    train.main(SWAV + ["--iters", "4", "--root", str(tmp_path)])
    folder = only_run(tmp_path)
    before = (folder / "checkpoint.pth.tar").read_bytes()
    broken = cli(["--resume", str(folder), "--iters", "8", "--temperature", "1e-40"])  # scores / T overflow float32
    assert broken.returncode == 1
    assert "train.py: error: swav loss is nan at step 4" in broken.stderr
    dump = saved(folder, "nonfinite_step4_rank0.pt")
    assert set(dump) == {"scores", "embeddings", "features", "codes"} and dump["embeddings"].shape == (2 * 64, 128)
    assert (folder / "checkpoint.pth.tar").read_bytes() == before


def test_prototypes_learn_at_their_own_rate(tmp_path):
    """--prototypes_lr_scale: the prototypes' group steps at that factor of the schedule's lr, the rest at 1x."""
    import train
    folder, _ = train.main(SWAV + ["--iters", "2", "--freeze_prototypes_niters", "0", "--prototypes_lr_scale", "0.1",
                                   "--root", str(tmp_path)])
    ckpt = saved(folder)
    groups = ckpt["optimizer"]["param_groups"]
    assert sorted(g["lr_scale"] for g in groups) == [0.1, 1.0, 1.0]
    (scaled,) = [g for g in groups if g["lr_scale"] == 0.1]
    (base,) = [g for g in groups if g["lr_scale"] == 1.0 and g["weight_decay"] > 0]
    assert len(scaled["params"]) == 1 and scaled["lr"] == 0.1 * base["lr"] > 0
