"""The flags that express the published recipes: pixel normalisation (inherited by the probe), simclr-pytorch's head
output BatchNorm, the blur's sigma range; each default keeps the earlier behaviour."""
import os

import pytest
import torch
import yaml

import train
from conftest import TINY, saved
from data.augment import Augment
from models.heads import MLP, ScaleBatchNorm1d


def test_raw_pixels_and_the_head_output_batchnorm_reach_the_run_and_its_probe(tmp_path, fmnist):
    pre, _ = train.main(["--problem", "simclr", "--root", str(tmp_path), "--iters", "2", "--eval_freq", "-1",
                         "--norm_mean", "0", "--norm_std", "1", "--head_out_bn", "true"] + TINY)
    state = saved(pre)["model"]
    last = max(k for k in state if k.startswith("head.") and k.endswith(".weight") and state[k].ndim == 2)
    assert last.replace("weight", "bias") not in state  # the last Linear has no bias
    out_bn = [k for k in state if k.startswith("head.") and k.endswith("running_mean")][-1]
    assert torch.equal(state[out_bn.replace("running_mean", "bias")], torch.zeros(128))  # its shift stays at 0
    probe, _ = train.main(["--problem", "eval", "--root", str(tmp_path), "--encoder_ckpt", pre, "--subset", "256",
                           "--iters", "2", "--batch_size", "64", "--opt", "sgd", "--knn_k", "10", "--workers", "0",
                           "--test_subset", "1000"])
    params = yaml.safe_load(open(os.path.join(probe, "params.yaml")))
    assert params["norm_mean"] == [0.0] and params["norm_std"] == [1.0]  # the encoder's inputs


def test_the_output_batchnorm_scales_without_shifting():
    head = MLP([8, 8, 4], out_bn=True)
    assert isinstance(head[-1], ScaleBatchNorm1d) and head[-2].bias is None and not head[-1].bias.requires_grad
    assert head[-1].weight.requires_grad and MLP([8, 8, 4])[-1].bias is not None


def test_blur_sigma_is_drawn_in_the_given_range():
    aug = Augment([2], [20], [0.2], [1.0], (0.5,), (0.5,), 1, blur_prob=1.0, blur_sigma=(0.7, 0.9))
    sigma = aug.sample(1000, 20)["sigma"]
    assert sigma.min() >= 0.7 and sigma.max() <= 0.9 and sigma.std() > 0.03
    default = Augment([2], [20], [0.2], [1.0], (0.5,), (0.5,), 1, blur_prob=1.0).sample(1000, 20)["sigma"]
    assert default.min() >= 0.1 and default.max() <= 2.0 and default.max() > 1.9


@pytest.mark.parametrize("extra, message", [
    (["--norm_mean", "0", "0", "0"], "--norm_mean has 3 values; fmnist has 1 channels"),
    (["--norm_std", "0"], "--norm_std"),
    (["--lars_rule", "tf"], "invalid choice: 'tf'"),
    (["--cosine_time", "local"], "invalid choice: 'local'"),
])
def test_bad_recipe_flags_are_one_line(tmp_path, capsys, fmnist, extra, message):
    with pytest.raises(SystemExit) as exit:
        train.main(["--problem", "simclr", "--root", str(tmp_path), "--iters", "1"] + TINY + extra)
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1], err
    assert not (tmp_path / "runs").exists() or not os.listdir(tmp_path / "runs")
