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


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
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
