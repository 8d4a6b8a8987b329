"""The flags that express the published recipes: pixel normalisation (inherited by the probe), simclr-pytorch's head
output BatchNorm, the blur's sigma range and border, VISSL's convolution init and averaged memory bank; each default
keeps the earlier behaviour."""
import os

import pytest
import torch
import yaml

import numpy as np
import torch.nn as nn
from PIL import Image, ImageFilter

import train
from conftest import ROOT, TINY, saved
from test_bad_data import refused_line
from data.augment import Augment, gaussian_blur
from models.backbones import MLP, ScaleBatchNorm1d
from models.memory import init_memory_bank
from utils.config import parse_args


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


def test_blur_padding_fills_the_border_as_its_source_does():
    x = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.8, 1.6])
    # simclr-pytorch: two zero-padded Conv2d passes with the normalised Gaussian
    for i in range(2):
        t = torch.arange(-2, 3, dtype=torch.float32)
        k = torch.exp(-t ** 2 / (2 * sigma[i] ** 2))
        k = k / k.sum()
        rows = nn.Conv2d(3, 3, (5, 1), groups=3, padding=(2, 0), bias=False)
        cols = nn.Conv2d(3, 3, (1, 5), groups=3, padding=(0, 2), bias=False)
        rows.weight.data.copy_(k.view(1, 1, 5, 1).expand(3, 1, 5, 1))
        cols.weight.data.copy_(k.view(1, 1, 1, 5).expand(3, 1, 1, 5))
        with torch.no_grad():
            ref = cols(rows(x[i:i + 1]))
        assert torch.allclose(gaussian_blur(x[i:i + 1], sigma[i:i + 1], 5, "zeros"), ref, atol=1e-6)
    # PIL's GaussianBlur (the swav and VISSL loaders) repeats the edge pixel: a bright edge stays bright
    a = np.full((32, 32), 40, np.uint8)
    a[:, :3] = 255
    pil = torch.tensor(np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(2.0))), dtype=torch.float32)
    img = torch.tensor(a, dtype=torch.float32)[None, None]
    edge = {mode: gaussian_blur(img, torch.tensor([2.0]), 17, mode)[0, 0] for mode in ("reflect", "replicate")}
    assert (edge["replicate"][:, 0] - pil[:, 0]).abs().max() < 8 < (edge["reflect"][:, 0] - pil[:, 0]).abs().min()
    aug = Augment([1], [24], [0.5], [1.0], (0.5,) * 3, (0.5,) * 3, 3, blur_prob=1.0, blur_padding="zeros")
    assert aug.blur_padding == "zeros"


def test_default_conv_init_is_vissls_layer_default(tmp_path, fmnist):
    """VISSL rebuilds its ResNet's layers after torchvision's init: a 3x3 64 -> 64 conv has std 1/sqrt(3 * 576)."""
    flags = ["--problem", "simclr", "--data", "fmnist", "--arch", "resnet18", "--width", "1"]
    stds = {}
    for init in ("kaiming_normal", "default"):
        torch.manual_seed(0)
        model = train.PROBLEMS["simclr"](parse_args(flags + ["--conv_init", init], train.PROBLEMS),
                                         types_data(), torch.device("cpu"))
        stds[init] = float(model.backbone.layer1[0].conv1.weight.detach().std())
    assert stds["default"] == pytest.approx(1 / (3 * 576) ** 0.5, rel=0.03)
    assert stds["kaiming_normal"] == pytest.approx((2 / 576) ** 0.5, rel=0.03)


def types_data():
    """A stand-in for the training images: what Pretrain reads of them to build the networks."""
    from types import SimpleNamespace
    return SimpleNamespace(image_size=28, channels=1, mean=(0.5,), std=(0.5,), labels=torch.zeros(4, dtype=torch.long))


def test_a_bank_averaged_over_gpus_has_rows_of_norm_one_over_root_n():
    one = init_memory_bank(4000, 128, torch.Generator().manual_seed(0))
    assert torch.allclose(one.norm(dim=1), torch.ones(4000))
    again = init_memory_bank(4000, 128, torch.Generator().manual_seed(0), mean_of=1)
    assert torch.equal(one, again)
    eight = init_memory_bank(4000, 128, torch.Generator().manual_seed(0), mean_of=8)
    assert eight.norm(dim=1).mean() == pytest.approx(8 ** -0.5, rel=0.02)


def test_an_averaged_bank_is_refused_where_the_network_fills_the_bank(tmp_path, capsys, fmnist):
    line = refused_line(["--problem", "npid", "--root", str(tmp_path), "--memory_init", "network",
                         "--memory_init_mean_of", "8"] + TINY, capsys, tmp_path)
    assert "--memory_init_mean_of averages random banks" in line


@pytest.mark.parametrize("extra, message", [
    (["--norm_mean", "0", "0", "0"], "--norm_mean has 3 values; fmnist has 1 channels"),
    (["--norm_std", "0"], "--norm_std"),
    (["--lars_rule", "tf"], "invalid choice: 'tf'"),
    (["--cosine_time", "local"], "invalid choice: 'local'"),
    (["--blur_padding", "circular"], "invalid choice: 'circular'"),
    (["--conv_init", "xavier"], "invalid choice: 'xavier'"),
])
def test_bad_recipe_flags_are_one_line(tmp_path, capsys, fmnist, extra, message):
    with pytest.raises(SystemExit) as exit:
        train.main(["--problem", "simclr", "--root", str(tmp_path), "--iters", "1"] + TINY + extra)
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1], err
    assert not (tmp_path / "runs").exists() or not os.listdir(tmp_path / "runs")


def test_vissls_eval_mlp_head_trains_its_scale_and_shift_without_weight_decay(fmnist, capsys):
    """imagenet_eval_vissl.yaml with --linear_bn true --linear_bn_affine true: VISSL's eval_mlp, as it trains it."""
    config = os.path.join(ROOT, "configs", "imagenet_eval_vissl.yaml")
    flags = ["--config", config, "--data", "fmnist", "--subset", "256", "--dist", "none", "--encoder_ckpt", "pixels",
             "--linear_bn", "true", "--linear_bn_affine", "true", "--batch_size", "64"]
    args, data, model, optimizer, scaler = train.build(parse_args(flags, train.PROBLEMS), torch.device("cpu"))
    norm, linear = model.classifier
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert norm.affine and decay[id(norm.weight)] == decay[id(norm.bias)] == 0.0
    assert decay[id(linear.weight)] == decay[id(linear.bias)] == 5e-4
    before = norm.weight.detach().clone(), norm.bias.detach().clone()
    for group in optimizer.param_groups:
        group["lr"] = 0.1
    x, y = data.train.images[:64], data.train.labels[:64]
    train.train_step(model.train(), model, optimizer, scaler, ([x.float() / 255], y, torch.arange(64)), 0)
    assert not torch.equal(norm.weight, before[0]) and not torch.equal(norm.bias, before[1])  # γ and β learn
    line = refused_line(flags[:-4] + ["--linear_bn", "false", "--linear_bn_affine", "true", "--dry_run", "true"], capsys)
    assert "--linear_bn_affine gives --linear_bn's BatchNorm a scale and a shift: it needs --linear_bn true" in line
