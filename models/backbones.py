"""Backbones without a classifier (an image batch in, pooled features (n, feat_dim) out), and the heads on them."""
import torch
import torch.nn as nn


class BasicBlock(nn.Module):
    """ResNet-18/34's block, as torchvision builds it (its parameter names, its layers created in its order):
    two 3x3 convs, the first of stride `stride`, and the shortcut `downsample` (or the identity)."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class Bottleneck(nn.Module):
    """ResNet-50/101/152's and ResNeXt's block, as torchvision builds it: 1x1 down to `groups` x `width_per_group`
    x planes / 64 channels (planes for a ResNet), a 3x3 of stride `stride` in `groups` groups, 1x1 up to 4 x planes,
    and the shortcut. Each group keeps at least one channel when a small --width scales planes down."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, width_per_group=64):
        super().__init__()
        width = max(1, int(planes * width_per_group / 64)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(self.relu(self.bn2(self.conv2(out)))))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


# (block, blocks per stage, groups of the 3x3 convs, channels per group at width 1)
RESNETS = {"resnet18": (BasicBlock, [2, 2, 2, 2], 1, 64), "resnet34": (BasicBlock, [3, 4, 6, 3], 1, 64),
           "resnet50": (Bottleneck, [3, 4, 6, 3], 1, 64), "resnet101": (Bottleneck, [3, 4, 23, 3], 1, 64),
           "resnet152": (Bottleneck, [3, 8, 36, 3], 1, 64), "resnext50_32x4d": (Bottleneck, [3, 4, 6, 3], 32, 4),
           "resnext101_32x8d": (Bottleneck, [3, 4, 23, 3], 32, 8), "resnext101_64x4d": (Bottleneck, [3, 4, 23, 3], 64, 4)}


class ResNet(nn.Module):
    """torchvision's ResNet and ResNeXt blocks and parameter names, every width times `width` (2 = RN50-w2).

    `cifar_stem`: a 3x3 first conv of stride `stem_stride` (1 in the CIFAR recipes) and no max-pool,
    for images of 32 px or so. `stem_padding`: the first conv's zero padding, 1 for the 3x3 stem and 3 for the 7x7
    one unless given (solo-learn's CIFAR stem pads by 2).
    """

    def __init__(self, arch="resnet50", width=1.0, cifar_stem=False, in_channels=3, stem_stride=1, stem_padding=None):
        super().__init__()
        block, layers, self.groups, self.width_per_group = RESNETS[arch]
        planes = [max(1, int(round(64 * width * 2 ** i))) for i in range(4)]
        self.inplanes = planes[0]
        if cifar_stem:
            self.conv1 = nn.Conv2d(in_channels, planes[0], 3, stem_stride, 1 if stem_padding is None else stem_padding,
                                   bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, planes[0], 7, 2, 3 if stem_padding is None else stem_padding, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._layer(block, planes[0], layers[0], 1)
        self.layer2 = self._layer(block, planes[1], layers[1], 2)
        self.layer3 = self._layer(block, planes[2], layers[2], 2)
        self.layer4 = self._layer(block, planes[3], layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feat_dim = planes[3] * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.to(memory_format=torch.channels_last)  # NHWC convolutions: faster on CPU and on tensor cores

    def _layer(self, block, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * block.expansion))
        grouped = dict(groups=self.groups, width_per_group=self.width_per_group) if block is Bottleneck else {}
        layers = [block(self.inplanes, planes, stride, downsample, **grouped)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, **grouped) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = x.contiguous(memory_format=torch.channels_last)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)


class AlexNet(nn.Module):
    """AlexNet with a BatchNorm after every convolution and hidden fully connected layer, the form the instance-
    discrimination papers train (NPID reports it beside ResNet-50; its authors' released code holds ResNets only, so
    the layers are Krizhevsky et al.'s, one tower): conv1 96 11x11 stride 4, max-pool; conv2 256 5x5, max-pool; conv3
    384, conv4 384, conv5 256 3x3, max-pool (6 x 6 at 224 px; an adaptive average pool gives 6 x 6 at any size);
    fc6 4096, fc7 4096. The features are fc7's: NPID's head, Linear(4096, 128), is its fc8. Every width times `width`.
    `cifar_stem`: conv1 a 3x3 of stride 1 for images of 32 px or so. Convolutions start as the ResNets' do."""

    def __init__(self, width=1.0, cifar_stem=False, in_channels=3):
        super().__init__()
        c = [max(1, int(round(n * width))) for n in (96, 256, 384, 384, 256, 4096)]

        def conv(c_in, c_out, kernel, stride=1):
            return [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2 if kernel != 11 else 2, bias=False),
                    nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        pool = nn.MaxPool2d(3, 2)
        stem = conv(in_channels, c[0], 3) if cifar_stem else conv(in_channels, c[0], 11, 4)
        self.features = nn.Sequential(*stem, pool, *conv(c[0], c[1], 5), nn.MaxPool2d(3, 2),
                                      *conv(c[1], c[2], 3), *conv(c[2], c[3], 3), *conv(c[3], c[4], 3),
                                      nn.MaxPool2d(3, 2), nn.AdaptiveAvgPool2d(6))
        self.fc = nn.Sequential(nn.Linear(c[4] * 36, c[5], bias=False), nn.BatchNorm1d(c[5]), nn.ReLU(inplace=True),
                                nn.Linear(c[5], c[5], bias=False), nn.BatchNorm1d(c[5]), nn.ReLU(inplace=True))
        self.feat_dim = c[5]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


REGNETS = ["regnet_y_400mf", "regnet_y_800mf", "regnet_y_1_6gf", "regnet_y_3_2gf", "regnet_y_8gf", "regnet_y_16gf",
           "regnet_y_32gf", "regnet_y_128gf"]


class RegNetBackbone(nn.Module):
    """torchvision's RegNet without its classifier: a named RegNetY, or `regnet` from depth / w_0 / w_a / w_m /
    group_width (with RegNetY's squeeze-excitation, ratio 0.25). `cifar_stem`: the stem conv has stride 1."""

    def __init__(self, arch, in_channels=3, cifar_stem=False, regnet=None):
        super().__init__()
        import torchvision  # here, not at the top: importing it costs every run a second
        from torchvision.models.regnet import BlockParams, RegNet
        if arch == "regnet":
            net = RegNet(BlockParams.from_init_params(se_ratio=0.25, **regnet))
        else:
            net = getattr(torchvision.models, arch)()
        conv = net.stem[0]
        net.stem[0] = nn.Conv2d(in_channels, conv.out_channels, 3, 1 if cifar_stem else 2, 1, bias=False)
        nn.init.kaiming_normal_(net.stem[0].weight, mode="fan_out", nonlinearity="relu")
        self.stem, self.trunk_output, self.avgpool = net.stem, net.trunk_output, net.avgpool
        self.feat_dim = net.fc.in_features
        self.to(memory_format=torch.channels_last)

    def forward(self, x):
        x = self.trunk_output(self.stem(x.contiguous(memory_format=torch.channels_last)))
        return self.avgpool(x).flatten(1)


class Pixels(nn.Module):
    """The raw-pixel baseline: the normalized image, flattened."""

    def __init__(self, channels, image_size):
        super().__init__()
        self.feat_dim = channels * image_size * image_size

    def forward(self, x):
        return x.flatten(1)


def backbone_spec(args, data):
    """The plain dict that rebuilds a backbone (saved with every checkpoint and exported backbone)."""
    cifar_stem = args.cifar_stem if args.cifar_stem is not None else data.image_size <= 64
    spec = dict(arch=args.arch, width=args.width, cifar_stem=cifar_stem, stem_stride=args.stem_stride,
                in_channels=data.channels)
    if args.arch == "alexnet":
        spec.pop("stem_stride")
    if args.arch == "regnet":
        spec["regnet"] = dict(depth=args.regnet_depth, w_0=args.regnet_w_0, w_a=args.regnet_w_a, w_m=args.regnet_w_m,
                              group_width=args.regnet_group_width)
    return spec


def spec_problem(spec):
    """Why `spec` (read from a file) rebuilds no backbone of this repo, or None when it does."""
    arch = spec.get("arch") if isinstance(spec, dict) else None
    if arch not in list(RESNETS) + REGNETS + ["regnet", "alexnet", "pixels"]:
        return (f"its backbone is {arch!r}, which this repo cannot build (it builds {', '.join(RESNETS)}, alexnet, the "
                f"RegNetYs and regnet)")
    if arch == "pixels":
        need = ("in_channels", "image_size")
    elif arch in RESNETS:
        need = ("in_channels", "cifar_stem", "width", "stem_stride")
    elif arch == "alexnet":
        need = ("in_channels", "cifar_stem", "width")
    else:
        need = ("in_channels", "cifar_stem") + (("regnet",) if arch == "regnet" else ())
    missing = [k for k in need if k not in spec]
    return f"its {arch} backbone's description lacks {', '.join(missing)}" if missing else None


def build_backbone(spec):
    if spec["arch"] == "pixels":
        return Pixels(spec["in_channels"], spec["image_size"])
    if spec["arch"] == "alexnet":
        return AlexNet(spec["width"], spec["cifar_stem"], spec["in_channels"])
    if spec["arch"].startswith("regnet"):
        return RegNetBackbone(spec["arch"], spec["in_channels"], spec["cifar_stem"], spec.get("regnet"))
    return ResNet(spec["arch"], spec["width"], spec["cifar_stem"], spec["in_channels"], spec["stem_stride"],
                  spec.get("stem_padding"))


def multicrop_forward(backbone, crops):
    """Features of a list of crop batches, crop-major (sum n_c, feat_dim); one backbone call per run of equal sizes."""
    feats, start = [], 0
    while start < len(crops):
        end = start
        while end < len(crops) and crops[end].shape[-1] == crops[start].shape[-1]:
            end += 1
        feats.append(backbone(torch.cat(crops[start:end])))
        start = end
    return torch.cat(feats)


class ScaleBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm with a learned scale and its shift held at 0 (simclr-pytorch's BatchNorm1dNoBias)."""

    def __init__(self, dim):
        super().__init__(dim)
        self.bias.requires_grad_(False)


class MLP(nn.Sequential):
    """Linear layers through `dims`; after every layer but the last, BatchNorm (use_bn) and ReLU (use_relu);
    with out_bn, the last Linear has no bias and a ScaleBatchNorm1d follows it.

    dims [2048, 2048, 128] with both flags is SimCLR's head: Linear -> BN -> ReLU -> Linear.
    """

    def __init__(self, dims, use_bn=True, use_relu=True, out_bn=False):
        layers = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == len(dims) - 2
            layers.append(nn.Linear(d_in, d_out, bias=(last and not out_bn) or (not last and not use_bn)))
            if not last and use_bn:
                layers.append(nn.BatchNorm1d(d_out))
            if not last and use_relu:
                layers.append(nn.ReLU(inplace=True))
        if out_bn:
            layers.append(ScaleBatchNorm1d(dims[-1]))
        super().__init__(*layers)


def prototype_layers(dim, counts):
    """One bias-free Linear(dim, k) per head: its k rows are the prototypes (SwAV) or the centroids
    (DeepCluster-v2), and layer(z) the scores of embeddings z against them."""
    return nn.ModuleList(nn.Linear(dim, k, bias=False) for k in counts)


def head_from_args(args, feat_dim):
    """The MLP of the head flags on features of width `feat_dim`: hidden widths (-1 = feat_dim), then embedding_dim."""
    hidden = [feat_dim if d == -1 else d for d in args.head_hidden_dims]
    return MLP([feat_dim] + hidden + [args.embedding_dim], args.head_use_bn, args.head_use_relu,
               getattr(args, "head_out_bn", False))  # getattr: runs saved before the flag existed
