"""Command line and YAML configs: every config key is a flag, and the command line wins.

Two steps, with the side effects between them in the caller's sight: `run_flags(argv)` reads the flags that say
which run this is (`--problem`, `--resume`, `--root`, `--name`, ...), from the config and the command line alike;
the caller finds and locks the run that `--resume` names (`runlog.resumed_run`); then `parse_args(argv, problems,
resumed)` builds the parser of the problem (common flags + the problem class's `add_args`) and parses the command
line over, from the lowest, the defaults, the resumed run's flags and the config's values, into frozen `Flags`.
A config value goes through its flag's own type and range; a repeated key, a YAML boolean where a number is
expected, a null where the flag has no 'unset' value, or an unknown key is refused. Any mistake raises `UserError`,
which `train.py` turns into one line on stderr and exit code 2, before a run folder exists.
"""
import argparse
import math
import operator
import os
import reprlib
import sys

import yaml

from utils import checkpoint
from utils.errors import UserError


def str2bool(s):
    if isinstance(s, bool):
        return s
    value = str(s).lower()
    if value in ("true", "t", "yes", "y", "1", "on"):
        return True
    if value in ("false", "f", "no", "n", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {shown(s)}")


class Range:
    """The type of a numeric flag: converts with `cast` and refuses a value outside its range, so a bad value
    is one line naming the flag and the range, from the command line or a config alike.

    Range(float, gt=0) is > 0; Range(int, ge=1, also=(-1,)) is >= 1 or the sentinel -1. Floats must be finite.
    """

    def __init__(self, cast, gt=None, ge=None, lt=None, le=None, also=()):
        self.cast, self.also = cast, also
        self.__name__ = cast.__name__  # argparse names it in "invalid int value"
        self.limits = [(sign, test, limit) for sign, test, limit in
                       ((">", operator.gt, gt), (">=", operator.ge, ge), ("<", operator.lt, lt), ("<=", operator.le, le))
                       if limit is not None]
        self.text = " and ".join(f"{sign} {limit}" for sign, _, limit in self.limits) + "".join(f", or {a}" for a in also)

    def __call__(self, s):
        x = self.cast(s)
        inside = math.isfinite(x) and all(test(x, limit) for _, test, limit in self.limits)
        if not inside and x not in self.also:
            raise argparse.ArgumentTypeError(f"{shown(s)[1:-1] if isinstance(s, str) else s} is out of range: must be "
                                             f"{self.text}")
        return x


INT0, INT1 = Range(int, ge=0), Range(int, ge=1)  # counts that may be zero, counts of at least one
POSITIVE, NONNEGATIVE, PROBABILITY = Range(float, gt=0), Range(float, ge=0), Range(float, ge=0, le=1)


def none_or(cast):
    def convert(s):
        return None if s is None or str(s).lower() in ("none", "null") else cast(s)
    convert.__name__ = cast.__name__
    convert.inner = cast
    return convert


class Parser(argparse.ArgumentParser):
    """argparse that raises UserError instead of printing usage and exiting."""

    def error(self, message):
        raise UserError(message)


COMPAT = "recipe compatibility (each a published source's convention; the defaults suit a new recipe)"


def compat_group(p):
    """The help group of the flags that reproduce one source's quirk, apart from the flags most runs touch."""
    return next((g for g in p._action_groups if g.title == COMPAT), None) or p.add_argument_group(COMPAT)


def add_run_args(p):
    """The flags that say which run this is and where it lives: read first, to find the run --resume names."""
    g = p.add_argument_group("run")
    g.add_argument("--problem", default=None,
                   help="what to train: the method, or `eval` for the linear probe and kNN (default: a resumed "
                        "run's, else simclr)")
    g.add_argument("--config", help="YAML file of flag values; flags given on the command line win")
    g.add_argument("--root", default=None, help="exman root for run folders (default: $EXMAN_PATH, else ./logs)")
    g.add_argument("--name", default="", help="suffix of the run folder's name")
    g.add_argument("--tmp", type=str2bool, default=False, help="put the run folder in <root>/tmp, outside the index")
    g.add_argument("--resume", default=None, help="run folder or checkpoint to continue, in its own folder; `auto`: "
                   "the newest run named --name in --root if unfinished, else a new run (for preemptible jobs)")
    g.add_argument("--dry_run", type=str2bool, default=False,
                   help="print the effective recipe (every flag and where it came from, steps, learning rates, "
                        "parameter groups, crops) and exit, making no run folder")
    g.add_argument("--lock_wait", type=NONNEGATIVE, default=0,
                   help="seconds to wait for another process that is training the run folder to --resume (0: refuse at once)")
    g.add_argument("--node_rank", type=INT0, default=0, help="this node's index, 0 .. --world_size - 1")
    return g


def add_common_args(p):
    g = add_run_args(p)
    g.add_argument("--seed", type=Range(int, ge=0, lt=2 ** 31), default=0,
                   help="seed of weights, data order and augmentation")
    g.add_argument("--device", default=None, help="cuda, cpu, cuda:1... (default: cuda when available, else cpu)")
    g.add_argument("--log_freq", type=INT1, default=50, help="steps between rows of logs.csv")
    g.add_argument("--save_freq", type=INT1, default=1000,
                   help="steps between checkpoints (one is always written at the end)")
    g.add_argument("--eval_freq", type=Range(int, ge=-1), default=0,
                   help="steps between evaluations (kNN while pretraining, test accuracy in eval); 0: only at the end; -1: never")

    g = p.add_argument_group("data")
    g.add_argument("--data", default="fmnist", choices=["fmnist", "cifar10", "cifar100", "stl10", "imagenet", "folder"],
                   help="dataset; `imagenet` reads $IMAGENET_PATH/{train,val}, `folder` reads --data_root/{train,val}")
    g.add_argument("--data_root", default=None,
                   help="where the dataset's files are (default: the dataset's usual place)")
    g.add_argument("--subset", type=INT0, default=0, help="train on a fixed random subset of this many images (0: all)")
    g.add_argument("--test_subset", type=INT0, default=0,
                   help="score on a fixed random subset of this many test images, the same for every --seed (0: all): "
                        "quick looks and tests, not figures to report")
    g.add_argument("--decode", default="workers", choices=["workers", "device"],
                   help="folder datasets: workers decode and crop, or workers only read the JPEG bytes and the "
                        "training device decodes (TorchCodec: nvJPEG on CUDA) and crops (roi_align, an area average)")
    compat_group(p).add_argument("--interpolation", default="bilinear", choices=["bilinear", "bicubic"],
                   help="image folders: the filter of the training crops and of the evaluation resize, antialiased; "
                        "bilinear is torchvision's default, the SwAV and VISSL recipes'; simclr-pytorch's is bicubic")
    compat_group(p).add_argument("--draft_decode", type=str2bool, default=True,
                   help="image folders: decode a JPEG at a reduced DCT scale (1/2 to 1/8, PIL's draft mode) when every "
                        "crop box is at least twice its crop's side, in a fraction of the time; its low-pass differs "
                        "from a full decode's antialiased resize: false decodes every image in full, as every source does")
    g.add_argument("--skip_images", default=None,
                   help="image folders: a file naming images to leave out, one a line, relative to the data root (as "
                        "tools.check_data and a run's unreadable.txt write them)")
    g.add_argument("--max_unreadable", type=PROBABILITY, default=0.01,
                   help="image folders: an image that cannot be decoded is replaced by another and listed in the run's "
                        "unreadable.txt; the run stops when more than this fraction of the images is unreadable")
    g.add_argument("--workers", type=INT0, default=4,
                   help="data loader processes for folder datasets (in-memory data needs none)")
    g.add_argument("--norm_mean", type=Range(float, ge=0, le=1), nargs="+", default=None,
                   help="per-channel mean subtracted from the [0, 1] pixels (default: the dataset's; 0 0 0 with "
                        "--norm_std 1 1 1 feeds raw pixels, as simclr-pytorch does)")
    g.add_argument("--norm_std", type=POSITIVE, nargs="+", default=None,
                   help="per-channel std the pixels are divided by (default: the dataset's; the swav repository "
                        "uses 0.228 0.224 0.225)")

    g = p.add_argument_group("distributed and mixed precision")
    g.add_argument("--dist", default="none", choices=["none", "ddp"],
                   help="ddp: spawn --num_proc_per_node processes on this node (under torchrun this flag is not needed)")
    g.add_argument("--dist_address", default="127.0.0.1:29500", help="host:port of node 0, the same on every node")
    g.add_argument("--world_size", type=INT1, default=1, help="number of nodes")
    g.add_argument("--num_proc_per_node", type=Range(int, ge=1, also=(-1,)), default=-1,
                   help="processes on this node; -1: one per GPU (1 without GPUs)")
    g.add_argument("--dist_timeout", type=Range(float, gt=0, le=1e7), default=1800,
                   help="seconds a collective may wait for another rank before this one gives up and exits")
    g.add_argument("--sync_bn", type=str2bool, default=False,
                   help="convert every BatchNorm to SyncBatchNorm (needs GPUs)")
    g.add_argument("--sync_bn_group_size", type=Range(int, ge=-1), default=-1,
                   help="SyncBatchNorm group: -1 the processes of one node, 0 all processes, G groups of G consecutive ranks")
    g.add_argument("--amp", type=str2bool, default=False,
                   help="mixed precision: torch.autocast for the backbone and head")
    g.add_argument("--amp_dtype", default="bf16", choices=["bf16", "fp16"],
                   help="autocast dtype; fp16 adds a GradScaler")

    g = p.add_argument_group("optimisation")
    g.add_argument("--batch_size", type=INT1, default=256, help="global batch size in images, over all processes")
    g.add_argument("--epochs", type=Range(float, ge=0, le=1e6), default=100, help="length of training in epochs")
    g.add_argument("--iters", type=Range(int, ge=-1), default=-1,
                   help="total optimiser steps; overrides --epochs when >= 0")
    compat_group(p).add_argument("--step_count", default="epochs", choices=["epochs", "simclr"],
                   help="the steps of --epochs: epochs x floor(N / batch) full batches, or floor(N x epochs / batch) + 1 "
                        "(SimCLR's get_train_steps, whose input stream repeats the images across epochs)")
    g.add_argument("--opt", default="lars", choices=["lars", "sgd", "adamw"],
                   help="optimiser (--problem eval adds lbfgs)")
    g.add_argument("--lr", type=POSITIVE, default=0.3,
                   help="base learning rate for a batch of 256, scaled by --lr_scaling")
    g.add_argument("--lr_scaling", default="linear", choices=["linear", "sqrt", "none"],
                   help="lr = base * batch/256 (linear), * sqrt(batch/256) (sqrt), or as given (none)")
    g.add_argument("--lr_schedule", default="cosine", choices=["cosine", "multistep", "linear", "const"],
                   help="shape after the warmup (linear: straight down to --final_lr)")
    compat_group(p).add_argument("--lr_interval", default="step", choices=["step", "epoch"],
                   help="how often the lr changes: every step, or at each epoch's start (VISSL's update_interval)")
    g.add_argument("--warmup", type=PROBABILITY, default=0.0, help="fraction of the steps spent in linear warmup")
    compat_group(p).add_argument("--warmup_start_lr", type=NONNEGATIVE, default=0.0,
                   help="base lr at step 0 of the warmup (scaled like --lr)")
    g.add_argument("--final_lr", type=NONNEGATIVE, default=0.0,
                   help="base lr at the end of the cosine (scaled like --lr)")
    compat_group(p).add_argument("--cosine_time", default="after_warmup", choices=["after_warmup", "global"],
                   help="after_warmup: the cosine runs from the peak at the warm-up's end to --final_lr; global: it "
                        "is taken at the run's overall progress (VISSL's interval_scaling [rescaled, fixed]), so the "
                        "lr just after the warm-up is already below the peak")
    g.add_argument("--lr_steps", type=NONNEGATIVE, nargs="*", default=[],
                   help="multistep: epochs at which lr is multiplied by --lr_gamma")
    g.add_argument("--lr_gamma", type=POSITIVE, default=0.1, help="multistep factor")
    g.add_argument("--weight_decay", type=NONNEGATIVE, default=1e-6, help="weight decay")
    g.add_argument("--momentum", type=Range(float, ge=0, lt=1), default=0.9, help="SGD/LARS momentum (AdamW: beta1)")
    g.add_argument("--nesterov", type=str2bool, default=False, help="Nesterov momentum for SGD")
    g.add_argument("--exclude_bias_and_norm", type=str2bool, default=True,
                   help="parameters with ndim <= 1 get no weight decay and no LARS adaptation")
    compat_group(p).add_argument("--decay_bias", type=str2bool, default=False,
                   help="with --exclude_bias_and_norm: the biases of conv and linear layers are decayed (and adapted) "
                        "all the same, only normalisation layers' parameters are left out (VISSL's regularize_bias "
                        "true with regularize_bn false)")
    g.add_argument("--larc_trust_coefficient", type=POSITIVE, default=0.001, help="LARS trust coefficient eta")
    g.add_argument("--larc_clip", type=str2bool, default=False, help="LARC clipping: adaptive rate min(a/lr, 1)")
    g.add_argument("--larc_eps", type=NONNEGATIVE, default=1e-8, help="LARS epsilon in the trust ratio")
    compat_group(p).add_argument("--lars_rule", default="larc", choices=["larc", "simclr"],
                   help="LARS trust ratio: larc = eta |p| / (|g| + wd |p| + eps) (Apex LARC: VISSL, swav); simclr = "
                        "eta |p| / |g + wd p| (SimCLR's LARS, simclr-pytorch; --larc_eps and --larc_clip unused)")
    g.add_argument("--knn_k", type=INT1, default=200, help="neighbours of the kNN classifier")
    g.add_argument("--knn_t", type=POSITIVE, default=0.07, help="temperature of the kNN vote weights exp(sim/t)")


def add_backbone_args(p, head=True):
    g = p.add_argument_group("backbone and head" if head else "backbone")
    g.add_argument("--arch", default="resnet50", choices=["resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                                                          "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d",
                                                          "alexnet",
                                                          "regnet_y_400mf", "regnet_y_800mf", "regnet_y_1_6gf",
                                                          "regnet_y_3_2gf", "regnet_y_8gf", "regnet_y_16gf",
                                                          "regnet_y_32gf", "regnet_y_128gf", "regnet"],
                   help="backbone: a ResNet, a ResNeXt (grouped 3x3 convs: 32 groups of 4 channels, ...), AlexNet with "
                        "BatchNorm (NPID's), a torchvision RegNetY, or `regnet` from the --regnet_* flags")
    g.add_argument("--width", type=POSITIVE, default=1.0,
                   help="ResNet, ResNeXt and AlexNet width multiplier of every layer (2 = RN50-w2; 0.25 for CPU runs)")
    g.add_argument("--cifar_stem", type=none_or(str2bool), default=None,
                   help="3x3 stem without max-pool (default: true for images of 64 px or less)")
    compat_group(p).add_argument("--stem_stride", type=int, default=1, choices=[1, 2], help="stride of the CIFAR stem's conv")
    g.add_argument("--regnet_depth", type=INT1, default=16, help="--arch regnet: number of blocks")
    g.add_argument("--regnet_w_0", type=Range(int, ge=8), default=48, help="--arch regnet: initial width")
    g.add_argument("--regnet_w_a", type=NONNEGATIVE, default=27.89, help="--arch regnet: width slope")
    g.add_argument("--regnet_w_m", type=Range(float, gt=1), default=2.09,
                   help="--arch regnet: width multiplier between stages")
    g.add_argument("--regnet_group_width", type=INT1, default=8, help="--arch regnet: group width of the 3x3 convs")
    if not head:
        return
    compat_group(p).add_argument("--conv_init", default="kaiming_normal", choices=["kaiming_normal", "default"],
                                 help="the backbone's convolutions at the start: kaiming_normal (fan_out, torchvision's "
                                      "ResNet init) or default (each layer's own PyTorch init, uniform with bound "
                                      "1/sqrt(fan_in): VISSL's trunk, whose layers are rebuilt after torchvision's init)")
    g.add_argument("--head_hidden_dims", type=Range(int, ge=1, also=(-1,)), nargs="*", default=[-1],
                   help="hidden widths of the MLP head; -1 = backbone feature width")
    g.add_argument("--embedding_dim", type=INT1, default=128, help="output width of the head")
    g.add_argument("--head_use_bn", type=str2bool, default=True, help="BatchNorm after each hidden layer of the head")
    g.add_argument("--head_use_relu", type=str2bool, default=True, help="ReLU after each hidden layer of the head")
    compat_group(p).add_argument("--head_out_bn", type=str2bool, default=False,
                   help="no bias in the head's last Linear, then BatchNorm with a learned scale and no shift "
                        "(simclr-pytorch's head)")


def add_monitor_args(p):
    g = p.add_argument_group("collapse monitors (logs.csv columns, models/monitors.py)")
    g.add_argument("--monitors", type=str2bool, default=True,
                   help="effective rank of features and embeddings, prototype usage and the distance of the loss from "
                        "ln K at every --log_freq step, and a warning once they show collapse")
    g.add_argument("--online_probe", type=str2bool, default=True,
                   help="train a linear classifier on the detached backbone features beside pretraining (labelled "
                        "data only) and log its training accuracy, online_acc; the encoder's steps are unchanged")
    g.add_argument("--online_probe_lr", type=POSITIVE, default=0.1, help="the online probe's SGD learning rate")


def add_augment_args(p):
    g = p.add_argument_group("augmentation (multi-crop and SimCLR colour distortion)")
    g.add_argument("--num_crops", type=INT1, nargs="+", default=[2], help="crops per image for each crop size")
    g.add_argument("--size_crops", type=Range(int, ge=1, also=(-1,)), nargs="+", default=[-1],
                   help="side of each crop size; -1 = dataset's image size")
    g.add_argument("--min_scale_crops", type=Range(float, gt=0, le=1), nargs="+", default=[0.08],
                   help="smallest area fraction of each crop size")
    g.add_argument("--max_scale_crops", type=Range(float, gt=0, le=1), nargs="+", default=[1.0],
                   help="largest area fraction of each crop size")
    g.add_argument("--color_jitter_strength", type=none_or(NONNEGATIVE), default=None,
                   help="s in ColorJitter(0.8s, 0.8s, 0.8s, 0.2s) (default: 1.0, or 0.5 for images of 32 px or less)")
    g.add_argument("--color_jitter", type=NONNEGATIVE, nargs=4, default=None, metavar=("B", "C", "S", "H"),
                   help="brightness, contrast, saturation and hue of the colour jitter; overrides --color_jitter_strength")
    g.add_argument("--jitter_prob", type=PROBABILITY, default=0.8, help="probability of colour jitter")
    g.add_argument("--grayscale_prob", type=PROBABILITY, default=0.2, help="probability of grayscale")
    g.add_argument("--blur_prob", type=none_or(PROBABILITY), default=None,
                   help="probability of Gaussian blur (default: 0.5, or 0 for images of 32 px or less)")
    g.add_argument("--blur_sigma", type=POSITIVE, nargs=2, default=[0.1, 2.0], metavar=("LO", "HI"),
                   help="the blur's sigma in px, uniform in [LO, HI] (a kernel of 10%% of the crop's side)")
    compat_group(p).add_argument("--blur_padding", default="reflect", choices=["reflect", "replicate", "zeros"],
                                 help="how the blur fills the border: reflect (torchvision's), replicate (PIL's, in the "
                                      "swav and VISSL loaders) or zeros (simclr-pytorch's)")
    g.add_argument("--solarize_prob", type=PROBABILITY, default=0.0, help="probability of solarization")


def find_action(parser, key):
    """The flag whose value lands in args.<key>, or None."""
    for action in parser._actions:
        if action.dest == key and action.option_strings:
            return action
    return None


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 4, 4, 60, 60


def shown(value):
    """A value as an error line shows it: a short repr, never built whole (a YAML alias bomb expands to megabytes)."""
    return _SHORT.repr(value)


def _convert(action, key, value):
    """One YAML value through the flag's own converter, type and range, so a config means what the same value on
    the command line means. YAML's own types are not guessed at: a boolean where a number or a name is expected
    is refused, and null is the flag's default where that default is 'unset' (None, '' or []), else refused."""
    def one(v):
        if isinstance(v, bool) and not (action.type is str2bool or getattr(action.type, "inner", None) is str2bool):
            raise UserError(f"config key '{key}': {str(v).lower()} is a YAML boolean, not a value of --{key}")
        if v is None or isinstance(v, (list, dict)):
            raise UserError(f"config key '{key}': {'null' if v is None else shown(v)} is not a value of --{key}")
        if action.type is None:
            if not isinstance(v, (str, int)):
                raise UserError(f"config key '{key}': {shown(v)} is not a name or text (quote it in the YAML)")
            out = str(v)
        else:
            try:
                out = action.type(v if isinstance(v, bool) else str(v))
            except argparse.ArgumentTypeError as e:
                raise UserError(f"config key '{key}': {e}")
            except (ValueError, TypeError, OverflowError):
                raise UserError(f"config key '{key}': {shown(v)} is not a valid {getattr(action.type, '__name__', 'value')}")
        if action.choices is not None and out not in action.choices:
            raise UserError(f"config key '{key}': {shown(v)} is not one of {list(action.choices)}")
        return out
    if value is None:
        if action.default in (None, "", []):
            return action.default
        raise UserError(f"config key '{key}': null is not a value of --{key}; leave the key out for its default "
                        f"{action.default!r}")
    if action.nargs in ("+", "*"):
        values = value if isinstance(value, list) else [value]
        if action.nargs == "+" and not values:
            raise UserError(f"config key '{key}' needs at least one value")
        return [one(v) for v in values]
    if isinstance(action.nargs, int):
        if not isinstance(value, list) or len(value) != action.nargs:
            raise UserError(f"config key '{key}' takes a list of {action.nargs} values, got {shown(value)}")
        return [one(v) for v in value]
    return one(value)


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice in one mapping is an error instead of the last one winning."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise UserError(f"key '{key}' is given twice (lines {seen[key]} and {line})")
                seen[key] = line
            except TypeError:  # an unhashable key: the base class reports it
                pass
        return super().construct_mapping(node, deep)


def read_config(path):
    if not os.path.exists(path):
        raise UserError(f"config file not found: {path}")
    if not os.path.isfile(path):
        what = "a folder" if os.path.isdir(path) else "not a regular file (a pipe or a device)"
        raise UserError(f"--config {path} is {what}: give a YAML file")
    try:
        with open(path, encoding="utf-8") as f:
            cfg = yaml.load(f, Loader=_StrictLoader) or {}
    except UserError as e:
        raise UserError(f"config {path}: {e}")
    except yaml.YAMLError as e:
        raise UserError(f"config {path} is not valid YAML: {str(e).splitlines()[0]}")
    except (OSError, UnicodeDecodeError, ValueError) as e:  # ValueError: a NUL or surrogate PyYAML cannot read
        raise UserError(f"config {path} cannot be read as text ({type(e).__name__}: {str(e)[:120]})")
    except RecursionError:
        raise UserError(f"config {path} is nested too deeply to be a mapping of flag names to values")
    if not isinstance(cfg, dict):
        raise UserError(f"config {path} must be a mapping of flag names to values")
    return cfg


def build_parser(problem, problems):
    if not isinstance(problem, str) or problem not in problems:
        raise UserError(f"unknown problem {problem!r}; choose from {', '.join(problems)}")
    p = Parser(prog="train.py", description=f"Train `{problem}`. Every flag can also be a key of the --config YAML.",
               formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    add_common_args(p)
    problems[problem].add_args(p)
    return p


def _layered(parser, argv, layers, sources):
    """Parse `argv` over `layers`, a list of (name, {flag: value}) from the lowest to the highest; each layer's
    values are already converted. `sources` (a dict or None) receives each flag's winning layer."""
    defaults = {}
    for _, values in layers:
        defaults.update(values)
    parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    if sources is not None:
        unset = object()  # argparse fills in defaults only for what the namespace lacks: what changes was typed
        typed = parser.parse_args(argv, argparse.Namespace(**{k: unset for k in vars(args)}))
        for key in vars(args):
            sources[key] = "command line" if getattr(typed, key) is not unset else next(
                (name for name, values in reversed(layers) if key in values), "default")
    return args


def _config_values(parser, cfg, path, problem, strict=True):
    """The config's values converted by `parser`'s flags; an unknown key is an error when `strict`."""
    out = {}
    for key, value in cfg.items():
        action = find_action(parser, key) if isinstance(key, str) else None
        if action is None or key in ("config", "help"):
            if strict:
                raise UserError(f"unknown config key '{key}' in {path} for problem '{problem}'")
            continue
        out[key] = _convert(action, key, value)
    return out


def _read(argv):
    """(argv, config path, config values, run flags): the run flags (`add_run_args`) from the config and the command
    line alike, the others left for the problem's parser."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = Parser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    cfg_path = pre.parse_known_args(argv)[0].config
    cfg = read_config(cfg_path) if cfg_path else {}
    run_parser = Parser(add_help=False, allow_abbrev=False)
    add_run_args(run_parser)
    run_parser.set_defaults(**_config_values(run_parser, cfg, cfg_path, None, strict=False))
    run = run_parser.parse_known_args(argv)[0]
    return argv, cfg_path, cfg, argparse.Namespace(**dict(vars(run), root=run.root or default_root()))


def run_flags(argv):
    """The flags that say which run this is: what `runlog.resumed_run` needs to find the run `--resume` names."""
    return _read(argv)[3]


def parse_args(argv, problems, resumed=None, sources=None):
    """The flags of a run (see the module's docstring), a function of argv, the config file and `resumed`: the
    checkpoint that `--resume` names and its saved flags, as `runlog.resumed_run` found them (None: a new run).
    `sources`, a dict, receives where each flag's value came from: 'command line', 'config', 'resumed run' or
    'default'."""
    argv, cfg_path, cfg, run = _read(argv)
    if run.resume not in (None, "auto") and resumed is None:
        raise ValueError("--resume names a run: find it with runlog.resumed_run(run_flags(argv)) first")
    path, saved = resumed or (None, {})
    problem = run.problem or saved.get("problem") or "simclr"
    if saved and problem != saved["problem"]:
        raise UserError(f"--resume {path} is a '{saved['problem']}' run, not '{problem}'")

    # every flag: the defaults, the resumed run's own flags (not where it ran), the config's, the command line's
    parser = build_parser(problem, problems)
    kept = {k: v for k, v in saved.items()
            if find_action(parser, k) is not None and k not in checkpoint.LAUNCH_FLAGS + ("config", "resume")}
    args = _layered(parser, argv, [("resumed run", kept),
                                   ("config", _config_values(parser, cfg, cfg_path, problem))], sources)
    if os.sep in args.name or args.name in (".", ".."):
        raise UserError(f"--name {args.name!r} is part of a folder name: no '{os.sep}', not '.' or '..'")
    if os.path.exists(run.root) and not os.path.isdir(run.root):
        raise UserError(f"--root {run.root} is a file, not a folder")
    return Flags(**dict(vars(args), problem=problem, resume=path, root=run.root))


class Flags(argparse.Namespace):
    """Parsed flags, frozen: a value derived from them is derived where it is needed, or put in a new copy
    (`replace`), so the flags a run saves are the flags it was given."""

    def __init__(self, **flags):
        self.__dict__.update(flags)

    def __setattr__(self, key, value):
        raise AttributeError(f"flags are frozen: args.{key} cannot be set after parsing (use .replace)")

    def replace(self, **changes):
        return Flags(**dict(vars(self), **changes))


def default_root():
    return os.environ.get("EXMAN_PATH", "./logs")
