"""Fine-tuning: the whole backbone and a linear layer train on the labelled images (or a fraction of them); from a
pretraining run or from a random initialisation; resumed runs end as uninterrupted ones; bad input is one line."""
import os

import pytest
import torch

import train
from conftest import saved

TUNE = ["--problem", "finetune", "--data", "fmnist", "--subset", "1000", "--batch_size", "50", "--lr", "0.1",
        "--lr_schedule", "const", "--min_scale", "0.5", "--knn_k", "20", "--workers", "0", "--log_freq", "10",
        "--test_subset", "1000"]
SCRATCH = ["--encoder_ckpt", "none", "--arch", "resnet18", "--width", "0.125"]


@pytest.mark.slow
def test_training_from_scratch_beats_its_random_init(tmp_path, fmnist):
    _, init = train.main(TUNE + SCRATCH + ["--iters", "0", "--root", str(tmp_path / "a")])
    # lr 0.03: at 0.1, 60 steps gave 28.6 on one thread and 47.8 on two, from rounding alone; at 0.03, 100 steps
    # gave 43.6 and 45.1
    _, tuned = train.main(TUNE + SCRATCH + ["--lr", "0.03", "--iters", "100", "--root", str(tmp_path / "b")])
    assert tuned["test_acc1"] > init["test_acc1"] + 20, (init, tuned)  # ten classes: the init is near 10%


def test_a_pretrained_backbone_is_tuned_whole_on_a_fraction_of_the_labels(runs, tmp_path):
    folder, metrics = train.main(TUNE + ["--encoder_ckpt", runs["pre"], "--label_fraction", "0.1", "--iters", "6",
                                         "--root", str(tmp_path)])
    lines = open(os.path.join(folder, "label_subset.txt")).read().split()
    assert abs(len(lines) - 100) <= 5  # 10% of each class of the 1,000 images
    before, after = saved(runs["pre"], "backbone.pth"), saved(folder, "backbone.pth")
    assert before["backbone_spec"] == after["backbone_spec"]
    conv, fc = "conv1.weight", [k for k in saved(folder)["model"] if k.startswith("classifier")]
    assert not torch.equal(before["backbone"][conv], after["backbone"][conv])  # the first layer trains too
    assert fc and {"test_acc1", "test_acc5", "knn_acc1"} <= set(metrics)


def test_a_zero_backbone_lr_trains_the_linear_layer_alone(runs, tmp_path):
    frozen = TUNE + ["--encoder_ckpt", runs["pre"], "--backbone_lr_scale", "0"]
    init, _ = train.main(frozen + ["--iters", "0", "--root", str(tmp_path / "a")])
    tuned, _ = train.main(frozen + ["--iters", "6", "--root", str(tmp_path / "b")])
    before, after = saved(runs["pre"], "backbone.pth")["backbone"], saved(tuned, "backbone.pth")["backbone"]
    weights = [k for k in before if k.endswith("weight")]
    assert weights and all(torch.equal(before[k], after[k]) for k in weights)
    fc = "classifier.weight"
    assert not torch.equal(saved(init)["model"][fc], saved(tuned)["model"][fc])


@pytest.mark.slow
def test_a_resumed_fine_tuning_ends_as_the_uninterrupted_one(tmp_path, fmnist):
    whole, _ = train.main(TUNE + SCRATCH + ["--iters", "12", "--label_fraction", "0.5", "--root", str(tmp_path / "a")])
    part, _ = train.main(TUNE + SCRATCH + ["--iters", "5", "--label_fraction", "0.5", "--root", str(tmp_path / "b")])
    resumed, _ = train.main(["--resume", part, "--iters", "12"])
    assert resumed == part
    a, b = saved(whole)["model"], saved(part)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("extra, message", [
    ([], "--problem finetune needs --encoder_ckpt"),
    (["--encoder_ckpt", "pixels"], "has no weights to fine-tune"),
    (SCRATCH + ["--label_fraction", "0"], "--label_fraction"),
    (SCRATCH + ["--embedding_dim", "64"], "unrecognized arguments: --embedding_dim"),
])
def test_bad_fine_tuning_input_is_one_line(tmp_path, capsys, fmnist, extra, message):
    with pytest.raises(SystemExit) as exit:
        train.main(TUNE + extra + ["--root", str(tmp_path)])
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("train.py: error:") and message in err[-1], err
    assert not (tmp_path / "runs").exists() or not os.listdir(tmp_path / "runs")
