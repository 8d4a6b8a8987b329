"""Published checkpoints through --encoder_ckpt: a file of each layout, written here at real key names and shapes,
gives the features of the same weights in this repo's backbone and in the source's own architecture; files that do
not fit are one line."""
import argparse
import copy
import os
import pathlib
import pickle
import zipfile

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

import train
from models.backbones import ResNet
from models.eval import encoder_arch_args, encoder_backbone, load_encoder
from test_bad_data import refused_line
from utils.config import parse_args


def randomised(model, seed):
    """`model` in eval mode with random BatchNorm statistics and affine parameters, so that every tensor matters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def torchvision_resnet(arch="resnet50", width_per_group=64, seed=0):
    torch.manual_seed(seed)
    return randomised(getattr(torchvision.models, arch)(width_per_group=width_per_group), seed)


class SwavStem(nn.Module):
    """The swav repository's ResNet forward: ConstantPad2d(1), then its conv1 of padding 2, then torchvision's."""

    def __init__(self, net):
        super().__init__()
        self.net, self.pad = net, nn.ConstantPad2d(1, 0.0)
        conv = net.conv1
        self.conv1 = nn.Conv2d(3, conv.out_channels, 7, 2, 2, bias=False)
        self.conv1.weight.data.copy_(conv.weight.data)

    def forward(self, x):
        n = self.net
        x = n.maxpool(n.relu(n.bn1(self.conv1(self.pad(x)))))
        return n.avgpool(n.layer4(n.layer3(n.layer2(n.layer1(x))))).flatten(1)


def solo_cifar_resnet18(seed=0):
    """solo-learn's CIFAR backbone: torchvision's ResNet-18, a 3x3 conv of stride 1 and padding 2, no max-pool."""
    net = torchvision_resnet("resnet18", seed=seed)
    net.conv1 = nn.Conv2d(3, 64, 3, 1, 2, bias=False)
    net.maxpool, net.fc = nn.Identity(), nn.Identity()
    return randomised(net, seed)


def prefixed(state, prefix, drop_fc=True):
    return {prefix + k: v for k, v in state.items() if not (drop_fc and k.startswith("fc."))}


def swav_release(net):
    state = prefixed(net.state_dict(), "module.")
    state.update({"module.projection_head.0.weight": torch.randn(2048, 2048), "module.projection_head.1.running_mean":
                  torch.zeros(2048), "module.projection_head.3.weight": torch.randn(128, 2048),
                  "module.prototypes.weight": torch.randn(3000, 128)})
    return state


def dcv2_release(net):  # DeepCluster-v2: three prototype heads, the state dict under "state_dict"
    state = prefixed(net.state_dict(), "module.")
    state.update({f"module.prototypes.prototypes{i}.weight": torch.randn(3000, 128) for i in range(3)})
    return {"state_dict": state, "epoch": 800}


def vissl_zoo(net):
    trunk = prefixed(net.state_dict(), "_feature_blocks.")
    heads = {"0.clf.0.weight": torch.randn(2048, 2048), "0.clf.0.bias": torch.zeros(2048)}
    return {"classy_state_dict": {"base_model": {"model": {"trunk": trunk, "heads": heads}, "meta": {}},
                                  "loss": {}}, "phase_idx": 199, "iteration": 500400, "type": "consolidated"}


def vissl_converted(net):  # VISSL's converted model-zoo files (converted_vissl_*.torch)
    return {"model_state_dict": prefixed(net.state_dict(), "_feature_blocks.")}


def simclr_pytorch(net, data="imagenet"):
    state = prefixed(net.state_dict(), "convnet.", drop_fc=False)  # its encoder keeps torchvision's unused fc
    state.update({"projection.fc1.weight": torch.randn(2048, 2048), "projection.bn2.weight": torch.ones(128)})
    return {"state_dict": state, "hparams": argparse.Namespace(arch="ResNet50", data=data, problem="sim-clr")}


def solo_learn(net):
    state = prefixed(net.state_dict(), "backbone.")
    state.update({"projector.0.weight": torch.randn(2048, 2048), "classifier.weight": torch.randn(1000, 2048),
                  "momentum_backbone.conv1.weight": torch.randn(64, 3, 7, 7)})
    return {"state_dict": state, "epoch": 99, "global_step": 500, "pytorch-lightning_version": "2.1.0",
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1}]}], "lr_schedulers": []}


def timm_checkpoint(net):  # timm's train.py: the model under "state_dict", its flags a Namespace under "args"
    return {"epoch": 300, "arch": "resnet50", "state_dict": net.state_dict(), "args": argparse.Namespace(lr=0.1),
            "version": 2}


def features(backbone, x):
    with torch.no_grad():
        return backbone.eval()(x)


def our_backbone(path, flags=()):
    """The backbone --problem eval builds from `path` and the backbone flags `flags`, as the run builds it."""
    source = load_encoder(str(path))
    args = encoder_arch_args(parse_args(["--problem", "eval", "--encoder_ckpt", str(path)] + list(flags), train.PROBLEMS),
                             source)
    data = argparse.Namespace(channels=source.spec["in_channels"])
    spec = dict(source.spec, arch=args.arch, width=args.width, cifar_stem=args.cifar_stem)
    return source, encoder_backbone(spec, source.weights, data, "imagenet")


LAYOUTS = [  # (layout name it is read as, writer, source architecture, its input side)
    ("the swav / DeepCluster-v2 release", swav_release, lambda: SwavStem(torchvision_resnet()), 64),
    ("the swav / DeepCluster-v2 release", dcv2_release, lambda: SwavStem(torchvision_resnet()), 64),
    ("VISSL", vissl_zoo, torchvision_resnet, 64),
    ("VISSL", vissl_converted, torchvision_resnet, 64),
    ("simclr-pytorch", simclr_pytorch, torchvision_resnet, 64),
    ("solo-learn", solo_learn, torchvision_resnet, 64),
    ("torchvision / timm", lambda net: net.state_dict(), torchvision_resnet, 64),
    ("torchvision / timm", timm_checkpoint, torchvision_resnet, 64),
    ("solo-learn", solo_learn, solo_cifar_resnet18, 32),
]
IDS = ["swav", "dcv2", "vissl", "vissl_converted", "simclr_pytorch", "solo_learn", "torchvision", "timm", "solo_learn_cifar"]


@pytest.mark.parametrize("layout, write, source_model, side", LAYOUTS, ids=IDS)
def test_a_published_file_gives_the_features_of_its_weights(tmp_path, layout, write, source_model, side):
    source = source_model()
    net = source.net if isinstance(source, SwavStem) else source
    path = tmp_path / "published.pth.tar"
    torch.save(write(net), path)
    loaded, ours = our_backbone(path)
    assert loaded.layout == layout
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    # the same weights loaded natively into this repo's backbone: the same numbers, bit for bit
    native = ResNet(loaded.spec["arch"], loaded.spec["width"], loaded.spec["cifar_stem"],
                    stem_padding=loaded.spec.get("stem_padding"))
    native.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("fc.")})
    assert torch.equal(features(ours, x), features(native, x))
    # and the features of the source's own architecture (its padding, its stem), to float rounding
    net.fc = nn.Identity()
    theirs = features(source, x)
    torch.testing.assert_close(features(ours, x), theirs, rtol=1e-3, atol=1e-3 * float(theirs.abs().max()))


def test_the_layout_sets_the_pixel_normalisation_and_data_the_source_used(tmp_path):
    torch.save(swav_release(torchvision_resnet()), tmp_path / "swav.pth.tar")
    assert load_encoder(str(tmp_path / "swav.pth.tar")).args == dict(norm_std=[0.228, 0.224, 0.225])
    torch.save(simclr_pytorch(torchvision_resnet(), data="cifar"), tmp_path / "simclr.pth.tar")
    assert load_encoder(str(tmp_path / "simclr.pth.tar")).args == dict(norm_mean=[0.0] * 3, norm_std=[1.0] * 3,
                                                                        data="cifar10")


def test_a_wide_resnet_is_read_as_rn50_w2(tmp_path):
    """The swav release of RN50-w2 doubles every width (torchvision's width_per_group doubles the inner ones only)."""
    wide = ResNet("resnet50", 2.0, False)
    torch.save(prefixed(randomised(wide, 0).state_dict(), "module."), tmp_path / "w2.pth.tar")
    loaded, ours = our_backbone(tmp_path / "w2.pth.tar")
    assert (loaded.spec["arch"], loaded.spec["width"], ours.feat_dim) == ("resnet50", 2.0, 4096)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(features(ours, x), features(wide, x))


def cifar_files(root, n=20):
    """CIFAR-10's python pickles, n random images per batch file."""
    folder = root / "cifar-10-batches-py"
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n)),
                 b"filenames": [b"a.png"] * n}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    return str(root)


@pytest.mark.slow
def test_eval_and_finetune_run_on_a_published_file(tmp_path):
    data = cifar_files(tmp_path / "data")
    path = tmp_path / "swav_800ep_pretrain.pth.tar"
    torch.save(swav_release(torchvision_resnet()), path)
    common = ["--data", "cifar10", "--data_root", data, "--root", str(tmp_path / "logs"), "--workers", "0",
              "--batch_size", "20", "--knn_k", "5"]
    folder, metrics = train.main(["--problem", "eval", "--encoder_ckpt", str(path), "--iters", "2"] + common)
    params = open(os.path.join(folder, "params.yaml")).read()
    assert "norm_std:\n- 0.228" in params and "arch: resnet50" in params and "cifar_stem: false" in params
    assert 0 <= metrics["test_acc1"] <= 100
    _, tuned = train.main(["--problem", "finetune", "--encoder_ckpt", str(path), "--iters", "1"] + common)
    assert 0 <= tuned["test_acc1"] <= 100


def optimiser_state(net, lr):
    """The state dict of an SGD over a copy of `net` after a step, its learning rate `lr` set as a schedule sets it
    (a numpy float from a numpy array: simclr-pytorch's cosine of np.cos, swav's lr_schedule[iteration])."""
    net = copy.deepcopy(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(2, 3, 32, 32)).sum().backward()
    for group in opt.param_groups:
        group["lr"] = lr
    opt.step()
    return opt.state_dict()


def simclr_pytorch_checkpoint(net):
    """simclr-pytorch's train.py save_checkpoint: model.get_ckpt() (state_dict, hparams: its parsed flags, the run
    folder `root` a pathlib.PosixPath as its exman parser sets it) updated with opt_state_dict and iter."""
    ckpt = simclr_pytorch(net, data="cifar")
    ckpt["hparams"] = argparse.Namespace(arch="ResNet50", data="cifar", problem="sim-clr", batch_size=1024, lr=4.8,
                                         temperature=0.5, tmp=False, root=pathlib.PosixPath("/logs/exman-train.py/runs/000001"))
    ckpt.update(opt_state_dict=optimiser_state(net, np.cos(np.float64(0.3)) * 4.8), iter=None)
    return ckpt


def swav_checkpoint(net):
    """swav's main_swav.py and main_deepclusterv2.py: checkpoint.pth.tar, the optimiser's lr from a numpy array."""
    schedule = np.linspace(4.8, 0.0048, 10)
    return {"epoch": 3, "state_dict": prefixed(net.state_dict(), "module."), "optimizer": optimiser_state(net, schedule[3]),
            "amp": {"loss_scaler0": {"loss_scale": 65536.0, "unskipped": 12}}}


def numpy1_names(path):
    """The file as numpy 1 writes it: its scalars pickled under numpy.core.multiarray (numpy 2: numpy._core)."""
    with zipfile.ZipFile(path) as z:
        entries = {name: z.read(name) for name in z.namelist()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in entries.items():
            z.writestr(name, data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray") if name.endswith(".pkl")
                       else data)


@pytest.mark.parametrize("numpy1", [False, True])
@pytest.mark.parametrize("write, layout", [(simclr_pytorch_checkpoint, "simclr-pytorch"),
                                          (swav_checkpoint, "the swav / DeepCluster-v2 release")], ids=["simclr", "swav"])
def test_the_sources_own_training_checkpoints_load_with_their_paths_and_numpy_scalars(tmp_path, write, layout, numpy1):
    net = torchvision_resnet()
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(write(net), path)
    if numpy1:
        numpy1_names(path)
    found = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    assert {"numpy.dtype", "numpy.core.multiarray.scalar" if numpy1 else "numpy._core.multiarray.scalar"} <= found
    loaded, ours = our_backbone(path)
    assert loaded.layout == layout
    source = SwavStem(net) if layout.startswith("the swav") else net  # the source's own forward of those weights
    net.fc = nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    theirs = features(source, x)
    torch.testing.assert_close(features(ours, x), theirs, rtol=1e-3, atol=1e-3 * float(theirs.abs().max()))


def test_a_refused_file_says_how_to_make_one_this_repo_reads(tmp_path, capsys):
    """A file that pickles another class: the advice in the line, followed, gives a file that loads."""
    net = torchvision_resnet()
    base = ["--problem", "eval", "--data", "cifar10", "--data_root", str(tmp_path), "--root", str(tmp_path / "logs")]
    for write in (solo_learn, simclr_pytorch):
        ckpt = dict(write(net), hyper_parameters=Unlisted())
        torch.save(ckpt, tmp_path / "lightning.ckpt")
        line = refused_line(base + ["--encoder_ckpt", str(tmp_path / "lightning.ckpt")], capsys)
        assert "test_published.Unlisted" in line and "torch.save(ckpt['state_dict'], 'weights.pth')" in line
        torch.save(ckpt["state_dict"], tmp_path / "weights.pth")  # as the line says, from code one trusts
        loaded, _ = our_backbone(tmp_path / "weights.pth")
        assert loaded.layout == {solo_learn: "solo-learn", simclr_pytorch: "simclr-pytorch"}[write]


def test_files_that_do_not_fit_are_one_line(tmp_path, capsys):
    net = torchvision_resnet()
    torch.save(swav_release(net), tmp_path / "swav.pth.tar")
    base = ["--problem", "eval", "--data", "cifar10", "--data_root", str(tmp_path), "--root", str(tmp_path / "logs")]
    line = refused_line(base + ["--encoder_ckpt", str(tmp_path / "swav.pth.tar"), "--width", "2"], capsys)
    assert "--width 2.0 contradicts" in line and "(the swav / DeepCluster-v2 release layout)" in line and "width 1.0" in line
    line = refused_line(base + ["--encoder_ckpt", str(tmp_path / "swav.pth.tar"), "--arch", "resnet101"], capsys)
    assert "arch resnet50" in line
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("layer3.5.")}  # a block gone
    torch.save(state, tmp_path / "odd.pth")
    line = refused_line(base + ["--encoder_ckpt", str(tmp_path / "odd.pth")], capsys)
    assert "torchvision / timm layout" in line and "[3, 4, 5, 3] Bottleneck blocks" in line
    torch.save({"encoder_q": {"conv1.weight": torch.zeros(1)}, "epoch": 3}, tmp_path / "moco.pth")
    line = refused_line(base + ["--encoder_ckpt", str(tmp_path / "moco.pth")], capsys)
    assert "of no checkpoint layout this repo reads (top-level keys encoder_q, epoch)" in line
    torch.save({"state_dict": net.state_dict(), "cfg": Unlisted()}, tmp_path / "pickled.pth")
    line = refused_line(base + ["--encoder_ckpt", str(tmp_path / "pickled.pth")], capsys)
    assert "pickles Python objects that a weights-only load does not run (test_published.Unlisted)" in line


class Unlisted:
    """A class a checkpoint may pickle (an OmegaConf config, say), which a weights-only load refuses to build."""
