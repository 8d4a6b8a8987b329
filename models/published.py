"""Backbones from other code bases' files, for `--encoder_ckpt`: the swav and DeepCluster-v2 releases, VISSL's model
zoo, simclr-pytorch's and solo-learn's checkpoints, and plain torchvision or timm ResNet state dicts.

Each layout is one function from the loaded file to (the backbone's tensors under torchvision's ResNet names, the
names of models/backbones.py's ResNet; the flags the source's files imply: its pixel normalisation, its data, and
`stem_padding` where its stem pads otherwise), or None when the file is not of that layout; what else the file holds
(projection heads, prototypes, a classifier, a momentum encoder) is left out. The backbone's shape (depth, width, stem) is read from the tensors, and the flags
that name it are checked against it."""
import re
import types

import torch

from models.backbones import RESNETS

# a ResNet's depth from its blocks per stage and its block (Bottleneck blocks have a conv3), and its groups of the 3x3
# convs (a ResNeXt's) from the first block's conv2
DEPTHS = {(tuple(layers), block.__name__ == "Bottleneck", groups): arch
          for arch, (block, layers, groups, _) in RESNETS.items()}
BACKBONE_KEY = re.compile(r"(conv1|bn1|layer[1-4]\.\d+\.(conv[1-3]|bn[1-3]|downsample\.[01]))\.(weight|bias|running_mean|"
                          r"running_var|num_batches_tracked)$")


def strip(state, prefix):
    """The tensors of `state` whose names start with `prefix`, without it."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def backbone_part(state):
    """The tensors that belong to a torchvision ResNet's backbone (a classifier `fc.*` and any head left out); a
    BatchNorm saved without its step count (PyTorch before 0.4.1) gets a zero one, which only momentum=None reads."""
    weights = {k: v for k, v in state.items() if BACKBONE_KEY.match(k)}
    for k in [k for k in weights if k.endswith(".running_mean")]:
        weights.setdefault(k.replace("running_mean", "num_batches_tracked"), torch.zeros((), dtype=torch.long))
    return weights


def tensors(state):
    return isinstance(state, dict) and state and all(hasattr(v, "shape") for v in state.values())


def swav_release(ckpt):
    """facebookresearch/swav's releases of SwAV and DeepCluster-v2 (and SeLa-v2) and their training checkpoints
    (checkpoint.pth.tar: "epoch", "state_dict", "optimizer", "amp"): the DDP model's state dict, bare or under
    "state_dict", keys `module.conv1.weight` ... beside `module.projection_head.*` and `module.prototypes*`.
    Its stem is a ConstantPad2d(1) before a conv of padding 2: the same zeros as torchvision's padding 3. Its pixels
    were normalised with std (0.228, 0.224, 0.225) for pretraining and for the linear probe."""
    state = ckpt.get("state_dict", ckpt)
    if tensors(state) and "module.conv1.weight" in state:
        return strip(state, "module."), dict(norm_std=[0.228, 0.224, 0.225])


def vissl(ckpt):
    """VISSL's checkpoints and model zoo: classy_state_dict -> base_model -> model -> trunk, or its converted files'
    model_state_dict, keys `_feature_blocks.conv1.weight` ... (`base_model._feature_blocks.` when saved from a
    feature-extraction model), as VISSL's own extra_scripts/convert_vissl_to_torchvision.py reads them."""
    trunk = ckpt.get("classy_state_dict", ckpt)
    for key in ("base_model", "model", "trunk"):
        trunk = trunk.get(key) if isinstance(trunk, dict) else None
    for state in (trunk, ckpt.get("model_state_dict"), ckpt):
        state = {k.removeprefix("base_model."): v for k, v in state.items()} if tensors(state) else {}
        if "_feature_blocks.conv1.weight" in state:
            return strip(state, "_feature_blocks."), {}


def simclr_pytorch(ckpt):
    """AndrewAtanov/simclr-pytorch: {"state_dict": EncodeProject's, "hparams": Namespace} (its training checkpoints
    add "opt_state_dict" and "iter"), or the state dict alone; keys `convnet.conv1.weight` ... beside
    `projection.*`; a CIFAR ResNet's stem is torchvision's 3x3 conv of stride 1 without the max-pool, as here. It
    trains and probes on raw pixels in [0, 1] (no Normalize)."""
    state, hparams = ckpt.get("state_dict", ckpt), ckpt.get("hparams")
    if tensors(state) and "convnet.conv1.weight" in state:
        data = getattr(hparams, "data", None)
        saved = dict(norm_mean=[0.0, 0.0, 0.0], norm_std=[1.0, 1.0, 1.0])
        if data in ("imagenet", "cifar"):
            saved["data"] = "cifar10" if data == "cifar" else data
        return strip(state, "convnet."), saved


def solo_learn(ckpt):
    """vturrisi/solo-learn: a Lightning checkpoint whose "state_dict" holds `backbone.*` (`encoder.*` in old
    releases) beside `projector.*`, `classifier.*` and `momentum_backbone.*`, or that state dict alone. Its CIFAR stem
    is a 3x3 conv of stride 1 and padding 2 (a 34 px map from 32 px images) without the max-pool: kept here, so the
    features are solo-learn's."""
    state = ckpt.get("state_dict", ckpt)
    if not tensors(state):
        return None
    for prefix in ("backbone.", "encoder."):
        if f"{prefix}conv1.weight" in state:
            weights = strip(state, prefix)
            return weights, (dict(stem_padding=2) if weights["conv1.weight"].shape[-1] == 3 else {})


def torchvision_resnet(ckpt):
    """A torchvision or timm ResNet's state dict (its classifier `fc.*` left out), bare or under "state_dict" or
    "model" (timm's and torchvision's training scripts)."""
    for state in (ckpt, ckpt.get("state_dict"), ckpt.get("model")):
        if tensors(state) and "conv1.weight" in state and "layer1.0.conv1.weight" in state:
            return state, {}


LAYOUTS = {"the swav / DeepCluster-v2 release": swav_release, "VISSL": vissl, "simclr-pytorch": simclr_pytorch,
           "solo-learn": solo_learn, "torchvision / timm": torchvision_resnet}


def describe(ckpt):
    """A short account of a file of no known layout: its top-level keys, or the first tensor names."""
    if tensors(ckpt):
        return f"tensors {', '.join(list(ckpt)[:4])}, ..."
    return f"top-level keys {', '.join(map(str, list(ckpt)[:8]))}"


def infer_spec(weights):
    """The backbone spec of models/backbones.py that a torchvision-named ResNet or ResNeXt state dict fits, or the
    reason none does: the depth from the blocks per stage and the block, a ResNeXt from its grouped 3x3 convs, the
    width from the stem's channels, the CIFAR stem from its kernel."""
    conv1 = weights.get("conv1.weight")
    if conv1 is None or conv1.dim() != 4:
        return None, "it has no conv1.weight of a ResNet stem"
    blocks = [len({k.split(".")[1] for k in weights if k.startswith(f"layer{i}.")}) for i in range(1, 5)]
    bottleneck = "layer1.0.conv3.weight" in weights
    conv2 = weights.get("layer1.0.conv2.weight")
    groups = conv2.shape[0] // conv2.shape[1] if conv2 is not None and conv2.dim() == 4 and conv2.shape[1] else 1
    arch = DEPTHS.get((tuple(blocks), bottleneck, groups))
    if arch is None:
        grouped = f", 3x3 convs in {groups} groups," if groups > 1 else ""
        return None, (f"its stages have {blocks} {'Bottleneck' if bottleneck else 'BasicBlock'} blocks{grouped} which no "
                      f"ResNet or ResNeXt this repo builds has ({', '.join(RESNETS)})")
    kernel = conv1.shape[-1]
    if kernel not in (3, 7):
        return None, f"its stem is a {kernel}x{kernel} conv (this repo builds 7x7 or 3x3)"
    return dict(arch=arch, width=conv1.shape[0] / 64, cifar_stem=kernel == 3, stem_stride=1,
                in_channels=conv1.shape[1]), None


def convert(ckpt):
    """A file of another code base as `layout` (its name), `spec` (models/backbones.py's), `weights` (the backbone's
    state dict) and `args` (the flags it implies); None when no layout matches. A matched file whose tensors fit no
    ResNet this repo builds has spec None and the reason in `problem`."""
    if not isinstance(ckpt, dict):
        return None
    for name, layout in LAYOUTS.items():
        found = layout(ckpt)
        if found:
            state, saved = found
            weights = backbone_part(state)
            spec, why = infer_spec(weights)
            if spec is None:
                return types.SimpleNamespace(layout=name, spec=None, weights=None, args={}, problem=why)
            stem = {k: saved.pop(k) for k in ["stem_padding"] if k in saved}  # the backbone's, not a flag
            return types.SimpleNamespace(layout=name, spec=dict(spec, **stem), weights=weights, args=saved,
                                         problem=None)
    return None
