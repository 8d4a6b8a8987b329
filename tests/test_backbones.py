"""RegNet backbones: torchvision's layouts without the classifier, built by name or from the RegNet parameters."""

import pytest
import torch
import torchvision

import train
from models.backbones import RegNetBackbone
from conftest import TINY, saved

Y400 = dict(depth=16, w_0=48, w_a=27.89, w_m=2.09, group_width=8)  # RegNetY-400MF's parameters (Radosavovic et al.)


def shapes(module, skip="fc."):
    return {k: v.shape for k, v in module.state_dict().items() if not k.startswith(skip)}


def test_named_and_custom_regnet_have_torchvisions_layout_without_fc():
    named, custom = RegNetBackbone("regnet_y_400mf"), RegNetBackbone("regnet", regnet=Y400)
    assert shapes(named) == shapes(custom) == shapes(torchvision.models.regnet_y_400mf())
    assert not any(k.startswith("fc.") for k in named.state_dict()) and named.feat_dim == 440
    assert named(torch.randn(2, 3, 64, 64)).shape == (2, 440)


def test_regnet_takes_one_channel_and_a_stride_one_stem():
    tiny = dict(depth=4, w_0=8, w_a=8.0, w_m=2.0, group_width=8)
    net = RegNetBackbone("regnet", in_channels=1, cifar_stem=True, regnet=tiny)
    assert net.stem[0].in_channels == 1 and net.stem[0].stride == (1, 1)
    assert net(torch.randn(3, 1, 28, 28)).shape == (3, net.feat_dim)


@pytest.mark.parametrize("problem", [["--problem", "simclr"],
                                     ["--problem", "swav", "--num_prototypes", "20", "--head_hidden_dims", "32"]])
def test_every_problem_trains_and_probes_a_custom_regnet(tmp_path, problem):
    regnet = ["--arch", "regnet", "--regnet_depth", "4", "--regnet_w_0", "8", "--regnet_w_a", "8", "--regnet_w_m", "2",
              "--regnet_group_width", "8", "--iters", "2", "--knn_k", "20", "--root", str(tmp_path)]
    folder, metrics = train.main(TINY + regnet + problem)
    spec = saved(folder, "backbone.pth")["backbone_spec"]
    assert spec["arch"] == "regnet" and spec["regnet"]["depth"] == 4
    _, probe = train.main(["--problem", "eval", "--encoder_ckpt", folder, "--subset", "512", "--epochs", "1",
                           "--knn_k", "20", "--root", str(tmp_path), "--test_subset", "1000"])
    # the probe rebuilt the backbone from its exported spec and weights: the same features, the same kNN
    assert probe["knn_acc1"] == metrics["knn_acc1"] and probe["knn_acc5"] == metrics["knn_acc5"]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnext50_32x4d"])
def test_resnets_compute_torchvisions_features_from_the_same_weights(arch):
    """The repo's own blocks keep torchvision's names and operations: its weights load and give its features."""
    from models.backbones import ResNet
    theirs = getattr(torchvision.models, arch)().eval()
    ours = ResNet(arch).eval()
    ours.load_state_dict({k: v for k, v in theirs.state_dict().items() if not k.startswith("fc.")})
    theirs.to(memory_format=torch.channels_last)  # as ours runs: the same convolution kernels
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = torch.flatten(theirs.avgpool(theirs.layer4(theirs.layer3(theirs.layer2(theirs.layer1(
            theirs.maxpool(theirs.relu(theirs.bn1(theirs.conv1(x))))))))), 1)
        assert torch.equal(ours(x), expected)


def test_a_resnext_state_dict_is_read_as_its_arch_and_a_misfit_is_one_reason():
    """torchvision's and timm's ResNeXt files (their names are the ResNet's): the groups come from the 3x3 convs."""
    from models import published
    from models.backbones import build_backbone
    state = torchvision.models.resnext50_32x4d().state_dict()
    found = published.convert(state)
    assert found.layout == "torchvision / timm" and found.problem is None
    assert found.spec["arch"] == "resnext50_32x4d" and found.spec["width"] == 1
    build_backbone(found.spec).load_state_dict(found.weights)  # every tensor fits
    odd = dict(state, **{"layer1.0.conv2.weight": torch.zeros(128, 8, 3, 3)})  # 16 groups: no ResNeXt of this repo
    assert "3x3 convs in 16 groups" in published.convert(odd).problem


def test_a_small_width_keeps_a_channel_in_every_group():
    from models.backbones import ResNet
    net = ResNet("resnext50_32x4d", width=0.125, cifar_stem=True, in_channels=1)
    assert net.layer1[0].conv2.groups == 32 and net.layer1[0].conv2.in_channels == 32
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, net.feat_dim) == (2, 256)


@pytest.mark.slow
def test_a_resnext_pretrains_probes_fine_tunes_and_exports(tmp_path):
    arch = ["--arch", "resnext50_32x4d", "--iters", "2", "--knn_k", "20", "--root", str(tmp_path)]
    folder, metrics = train.main(TINY + arch + ["--problem", "simclr"])
    spec = saved(folder, "backbone.pth")["backbone_spec"]
    assert spec["arch"] == "resnext50_32x4d" and spec["width"] == 0.125
    probe = ["--encoder_ckpt", folder, "--subset", "512", "--knn_k", "20", "--root", str(tmp_path), "--test_subset", "1000"]
    _, probed = train.main(["--problem", "eval", "--epochs", "1"] + probe)
    assert probed["knn_acc1"] == metrics["knn_acc1"]  # the backbone rebuilt from backbone.pth's spec and weights
    tuned, _ = train.main(["--problem", "finetune", "--iters", "2", "--batch_size", "64"] + probe)
    assert saved(tuned)["backbone_spec"]["arch"] == "resnext50_32x4d"


def test_alexnet_has_the_krizhevsky_layers_with_batchnorm_and_fc7_features():
    from models.backbones import AlexNet
    net = AlexNet().eval()
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [
        (96, 11, 4), (256, 5, 1), (384, 3, 1), (384, 3, 1), (256, 3, 1)]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.features) == 5
    assert net.features[:-1](torch.randn(1, 3, 224, 224)).shape == (1, 256, 6, 6)  # pool5 at 224 px, as AlexNet's
    assert net(torch.randn(2, 3, 224, 224)).shape == (2, 4096) == (2, net.feat_dim)
    small = AlexNet(width=0.125, cifar_stem=True, in_channels=1)
    assert small(torch.randn(2, 1, 28, 28)).shape == (2, 512)


@pytest.mark.slow
def test_npid_trains_an_alexnet_probed_and_fine_tuned_from_its_export(tmp_path):
    arch = ["--arch", "alexnet", "--iters", "2", "--knn_k", "20", "--root", str(tmp_path), "--num_negatives", "64"]
    folder, metrics = train.main(TINY + arch + ["--problem", "npid"])
    spec = saved(folder, "backbone.pth")["backbone_spec"]
    assert spec["arch"] == "alexnet" and spec["width"] == 0.125 and spec["cifar_stem"]
    assert saved(folder)["model"]["head.0.weight"].shape == (128, 512)  # NPID's fc8 on the fc7 features
    probe = ["--encoder_ckpt", folder, "--subset", "512", "--knn_k", "20", "--root", str(tmp_path), "--test_subset", "1000"]
    _, probed = train.main(["--problem", "eval", "--epochs", "1"] + probe)
    assert probed["knn_acc1"] == metrics["knn_acc1"]
    tuned, _ = train.main(["--problem", "finetune", "--iters", "2", "--batch_size", "64"] + probe)
    assert saved(tuned)["backbone_spec"]["arch"] == "alexnet"
