"""`--problem eval`: a linear probe on a frozen encoder, and kNN, on the labeled train and test images."""
import types

import torch
import torch.nn as nn
import torch.nn.functional as F

from data.augment import Augment
from data.datasets import balanced_subset, label_subset_lines, load_data, read_label_subset
from models import published
from models.backbones import build_backbone, head_from_args, spec_problem
from models.base import Method
from models.knn import bank_knn, eval_mode
from utils import checkpoint, config, dist
from utils.config import Flags, Range, find_action, str2bool
from utils.errors import UserError


def load_encoder(path):
    """What `--encoder_ckpt` (or `--ckpt`) names: a run folder, checkpoint.pth.tar or backbone.pth of this repo, a
    file of another code base (models/published.py), or `pixels`.

    Returns spec (the backbone's, None for pixels), weights (the backbone's state_dict), args (the flags of the run
    that made it, or those a published file implies; {} for pixels), state (that run's whole model state, None unless
    a checkpoint of this repo) and layout (None for this repo's files).
    """
    if path == "pixels":
        return types.SimpleNamespace(spec=None, weights={}, args={}, state=None, layout=None)
    ckpt = checkpoint.read(path)
    where = checkpoint.resolve(path)
    if not checkpoint.is_ours(ckpt):
        found = published.convert(ckpt)
        if found is None:
            raise UserError(f"{where} is of no checkpoint layout this repo reads ({published.describe(ckpt)}); it reads "
                            f"its own runs and {', '.join(published.LAYOUTS)} files")
        if found.problem:
            raise UserError(f"{where} ({found.layout} layout): {found.problem}")
        return types.SimpleNamespace(spec=found.spec, weights=found.weights, args=found.args, state=None,
                                     layout=found.layout)
    checkpoint.verified(ckpt, path)
    spec, weights = checkpoint.backbone_weights(ckpt, path)
    problem = spec_problem(spec)
    if problem:
        raise UserError(f"{where}: {problem}")
    return types.SimpleNamespace(spec=spec, weights=weights, args=ckpt["args"], state=ckpt.get("model"), layout=None)


def encoder_backbone(spec, weights, data, name):
    """The backbone `spec` describes, for the images of `data` (dataset `name`), with `weights` (None: its random
    initialisation); weights that do not fit it are one line naming the first tensor that differs."""
    if spec["in_channels"] != data.channels:
        raise UserError(f"the encoder takes {spec['in_channels']}-channel images, {name} has {data.channels}")
    backbone = build_backbone(spec)
    if weights is not None:
        there, here = checkpoint.shapes(weights), checkpoint.shapes(backbone.state_dict())
        differ = sorted(k for k in there.keys() | here.keys() if there.get(k) != here.get(k))
        if differ:
            k = differ[0]
            raise UserError(f"encoder weights do not fit its {spec['arch']} backbone: {k} is "
                            f"{list(there[k]) if k in there else 'absent'} in the file, "
                            f"{list(here[k]) if k in here else 'absent'} in the backbone")
        backbone.load_state_dict(weights)
    return backbone


def _scratch_defaults():
    p = config.Parser(add_help=False)
    config.add_backbone_args(p, head=False)
    return {a.dest: a.default for a in p._actions if a.option_strings and a.dest != "cifar_stem"}


SCRATCH = _scratch_defaults()  # the backbone flags' defaults when no encoder sets them (cifar_stem: by image size)


def add_encoder_backbone_args(p, scratch=None):
    """The backbone flags, unset by default: the encoder's (`scratch`: where the usual defaults apply instead)."""
    config.add_backbone_args(p, head=False)
    for action in p._actions:  # ('%(default).0s' prints nothing, and keeps argparse from adding "None")
        if action.dest in SCRATCH:
            action.default = None
            also = f"; {SCRATCH[action.dest]} with {scratch}" if scratch else ""
            action.help += f" (default: the encoder's{also}; checked against its weights)%(default).0s"


def encoder_arch_args(args, source):
    """`args` with the backbone flags the user left unset taken from the encoder's backbone (the defaults without
    an encoder); a flag set to another value than the encoder's is refused: the encoder's backbone is what is built.
    For a file of another code base the encoder's backbone is read from its tensors' shapes."""
    if source is None:
        return args.replace(**{k: v for k, v in SCRATCH.items() if getattr(args, k) is None})
    spec = source.spec
    theirs = dict(arch=spec["arch"], width=spec.get("width"), stem_stride=spec.get("stem_stride"),
                  cifar_stem=spec.get("cifar_stem"), **{f"regnet_{k}": v for k, v in spec.get("regnet", {}).items()})
    whose = f" ({source.layout} layout), whose tensors are those of a backbone with" if source.layout else ", whose backbone has"
    changes = {}
    for key in list(SCRATCH) + ["cifar_stem"]:
        mine, their = getattr(args, key), theirs.get(key)
        if mine is not None and their is not None and mine != their:
            named = f"--encoder_ckpt {args.encoder_ckpt}" if args.encoder_ckpt else f"--ckpt {args.ckpt}"
            raise UserError(f"--{key} {mine} contradicts {named}{whose} {key} {their}: "
                            f"leave --{key} unset to use that backbone")
        changes[key] = mine if mine is not None else their if their is not None else SCRATCH.get(key)
    return args.replace(**changes)


def add_label_args(g):
    """The flags that choose the labelled training images (the linear probe's and fine-tuning's)."""
    g.add_argument("--label_fraction", type=Range(float, gt=0, le=1), default=1.0,
                   help="train on a class-balanced fraction of the labelled training images, drawn by --seed (0.01: "
                        "1%% of each class), the kNN memory too; the run lists them in label_subset.txt")
    g.add_argument("--label_subset", default=None,
                   help="train on the images this file lists, one a line: file names for image folders (the format "
                        "of SimCLR's ImageNet 1%% and 10%% lists), indices for in-memory datasets; as label_subset.txt")
    g.add_argument("--validation", type=Range(int, ge=0), default=0,
                   help="hold out about this many class-balanced training images, none of them labelled ones (drawn by "
                        "--seed, listed in validation.txt), and report on them in place of the test images (val_acc1, "
                        "val_knn_acc1, ...): for choosing a recipe without looking at the test set")


def encoder_data_args(args, saved):
    """`args` with the data flags the user left unset taken from the flags `saved` of the encoder's run: the
    dataset, its root and the pixel normalisation the encoder was trained with."""
    data = args.data or saved.get("data", "fmnist")
    data_root = args.data_root
    if data_root is None and saved.get("data") == data:
        data_root = saved.get("data_root")
    norm = {k: saved.get(k) if getattr(args, k) is None else getattr(args, k) for k in ("norm_mean", "norm_std")}
    return args.replace(data=data, data_root=data_root, **norm)


def take_labelled(args, data):
    """The run's images with, as `train` and the kNN memory, the labelled images --label_subset lists or a
    class-balanced --label_fraction of them drawn by --seed, and as `label_subset` the lines of their
    label_subset.txt; with --validation N, about N other training images, class-balanced, as `test` (and
    `validation_subset` their lines)."""
    if args.label_subset and args.label_fraction < 1:
        raise UserError("--label_subset and --label_fraction both choose the labelled images: give one")
    train, test = data.train, data.test
    label_lines = validation_lines = None
    everything = torch.arange(len(train))
    if args.label_subset:
        picked = read_label_subset(args.label_subset, train)
    elif args.label_fraction < 1:
        picked = balanced_subset(train.labels, args.label_fraction, args.seed)
    else:
        picked = everything
    if args.validation:
        pool = everything[~torch.isin(everything, picked)] if len(picked) < len(everything) else everything
        if args.validation >= len(pool):
            raise UserError(f"--validation {args.validation} leaves no image to train on: {len(pool)} are not "
                            "labelled ones")
        held = pool[balanced_subset(train.labels.cpu()[pool], args.validation / len(pool), args.seed, "validation")]
        if len(picked) == len(everything):
            picked = everything[~torch.isin(everything, held)]
        validation_lines = label_subset_lines(train, held)
        test = train.subset(held.to(train.labels.device))
    if len(picked) < len(everything):
        label_lines = label_subset_lines(train, picked)
        train = train.subset(picked.to(train.labels.device))
    return types.SimpleNamespace(train=train, test=test, knn_train=train, label_subset=label_lines,
                                 validation_subset=validation_lines)


def on_validation(args, metrics):
    """`metrics` of the test images renamed for the held-out training images under --validation (val_acc1, ...)."""
    if not getattr(args, "validation", 0):  # (pretraining has no held-out images)
        return metrics
    return {"val_" + k.removeprefix("test_"): v for k, v in metrics.items()}


def classifier_accuracy(classifier, feats, labels, num_classes):
    """(top-1, top-5) in % of `classifier` on features `feats`, in eval mode; each rank passes its share of them."""
    with torch.no_grad(), eval_mode(classifier):
        top5 = classifier(feats).topk(min(5, num_classes), dim=1).indices
    counts = dist.all_reduce_sum(torch.stack([(top5[:, 0] == labels).sum(), (top5 == labels[:, None]).any(dim=1).sum(),
                                              torch.tensor(len(labels), device=labels.device)]))
    shares = counts[:2].float() / counts[2].float()  # float32, as the mean of a 0/1 mask always gave
    return 100.0 * shares[0].item(), 100.0 * shares[1].item()


class LinearEval(Method):
    """A linear classifier (after a BatchNorm with --linear_bn) on a frozen encoder: on the features the
    run extracts once (--precompute_features), or on crops of the images through the encoder in eval mode; and,
    with --knn_memory_bank, NPID's kNN against the bank of the run that made the encoder."""

    @staticmethod
    def add_args(p):
        add_encoder_backbone_args(p)
        g = p.add_argument_group("linear evaluation (--data and --data_root default to the encoder's)")
        g.add_argument("--encoder_ckpt", default=None,
                       help="pretrained run folder, checkpoint.pth.tar or backbone.pth; a published checkpoint (the "
                            "swav / DeepCluster-v2 releases, VISSL's model zoo, simclr-pytorch, solo-learn, a torchvision "
                            "or timm ResNet); `pixels` for the raw-pixel baseline")
        g.add_argument("--precompute_features", type=str2bool, default=True,
                       help="compute the training features once, without augmentation (fast); else RandomResizedCrop + flip every step")
        g.add_argument("--min_scale", type=Range(float, gt=0, le=1), default=0.08,
                       help="smallest crop area fraction when not precomputing")
        g.add_argument("--linear_bn", type=str2bool, default=False,
                       help="a non-affine BatchNorm before the linear layer")
        config.compat_group(p).add_argument(
            "--linear_bn_affine", type=str2bool, default=False,
            help="with --linear_bn: the BatchNorm learns a scale and a shift, left out of weight decay with "
                 "--exclude_bias_and_norm true --decay_bias true (VISSL's eval_mlp head, regularize_bn false)")
        g.add_argument("--knn_memory_bank", type=str2bool, default=False,
                       help="NPID encoders: also kNN of the test embeddings against the run's memory bank (bank_knn_acc1)")
        add_label_args(g)
        g.add_argument("--eval_only", type=str2bool, default=False,
                       help="no training: score the linear run given by --ckpt")
        g.add_argument("--ckpt", default=None, help="with --eval_only: the linear run folder or checkpoint to score")
        opt = find_action(p, "opt")
        opt.choices = opt.choices + ["lbfgs"]
        opt.help = ("optimiser; lbfgs: full-batch L-BFGS on precomputed features, trained to the optimum "
                    "(one iteration per step; the batch is every training image, whatever --batch_size says)")
        p.set_defaults(opt="sgd", lr=0.1, epochs=100, weight_decay=0.0, data=None)  # SGD momentum 0.9 + cosine

    @staticmethod
    def resolve(args):
        """(args, encoder): the encoder read once (load_encoder), the flags the user left unset completed from it:
        its data, normalisation and backbone; a re-scored probe's (--eval_only) its own shape."""
        if args.eval_only:
            if not args.ckpt:
                raise UserError("--eval_only needs --ckpt, the linear run to score")
            source = load_encoder(args.ckpt)
            if source.args.get("problem") != "eval":
                raise UserError(f"--ckpt {args.ckpt} is a '{source.args.get('problem')}' run, not a linear (eval) run")
        elif not args.encoder_ckpt:
            raise UserError("--problem eval needs --encoder_ckpt (a pretraining run folder or checkpoint, or `pixels`)")
        else:
            source = load_encoder(args.encoder_ckpt)
        args = encoder_data_args(args, source.args)
        if source.spec is None:
            given = [k for k in list(SCRATCH) + ["cifar_stem"] if getattr(args, k) is not None]
            if given:
                raise UserError(f"--{given[0]} has no meaning with --encoder_ckpt pixels: there is no backbone")
        else:
            args = encoder_arch_args(args, source)
        if args.eval_only:  # the probe's shape is the trained run's
            args = args.replace(linear_bn=source.args["linear_bn"],
                                linear_bn_affine=source.args.get("linear_bn_affine", False))
        if args.opt == "lbfgs" and not args.precompute_features:
            raise UserError("--opt lbfgs needs --precompute_features true: it takes every training feature at each step")
        if args.linear_bn_affine and not args.linear_bn:
            raise UserError("--linear_bn_affine gives --linear_bn's BatchNorm a scale and a shift: it needs --linear_bn true")
        if args.linear_bn_affine and args.opt == "lbfgs":
            raise UserError("--linear_bn_affine trains the BatchNorm's scale and shift; --opt lbfgs fits the Linear alone "
                            "on features normalised once: use --opt sgd")
        if args.knn_memory_bank and (args.eval_only or args.encoder_ckpt == "pixels"):
            raise UserError("--knn_memory_bank needs --encoder_ckpt, the NPID run whose memory bank to use")
        return args, source

    def __init__(self, args, train, device, encoder):
        if args.opt == "lbfgs":  # each step takes every training feature, whatever the fraction of the labels
            args = args.replace(batch_size=len(train))
        super().__init__(args, device)
        self.backbone_spec = encoder.spec or dict(arch="pixels", in_channels=train.channels, image_size=train.image_size)
        self.backbone = encoder_backbone(self.backbone_spec, encoder.weights, train, args.data)
        self.backbone.requires_grad_(False)
        feat_dim = self.backbone.feat_dim
        norm = nn.BatchNorm1d(feat_dim, affine=args.linear_bn_affine) if args.linear_bn else nn.Identity()
        self.classifier = nn.Sequential(norm, nn.Linear(feat_dim, train.num_classes))
        self.num_classes = train.num_classes
        side = train.image_size
        self.augment = Augment([1], [side], [args.min_scale], [1.0], train.mean, train.std, train.channels,
                               colour=False, generator=self.generator("augment"))
        self.crops = () if args.precompute_features else self.augment.crops  # features: batches of rows, no crops
        if args.linear_bn and not args.precompute_features and dist.world_size() > 1:  # global BatchNorm statistics
            if device.type == "cpu":
                raise UserError("--linear_bn with --precompute_features false on several processes needs GPUs (SyncBatchNorm)")
            self.classifier = nn.SyncBatchNorm.convert_sync_batchnorm(self.classifier)
        if args.eval_only:
            self.load_state_dict(encoder.state)
        self.memory = npid_bank(args, encoder, self.backbone.feat_dim, device) if args.knn_memory_bank else None

    def train(self, mode=True):
        super().train(mode)
        self.backbone.eval()  # frozen encoder: BatchNorm statistics stay as pretrained
        return self

    def forward(self, batch, step):
        (x,), y, _ = batch  # one view: the features, or one crop of the images
        if self.args.precompute_features:
            feats = x
        else:
            with torch.no_grad(), self.autocast():
                feats = self.backbone(self.augment([x])[0]).float()
        return F.cross_entropy(self.classifier(feats), y), {}, {}

    @torch.no_grad()
    def evaluate(self, test):
        """Top-1 and top-5 of the classifier on the test features; NPID's bank kNN with --knn_memory_bank."""
        acc1, acc5 = classifier_accuracy(self.classifier, *test, self.num_classes)
        metrics = dict(test_acc1=acc1, test_acc5=acc5)
        if self.memory is not None:
            head, bank, labels = self.memory
            metrics.update(bank_knn(head, bank, labels, test, self.num_classes, self.args.knn_k, self.args.knn_t,
                                    self.autocast))
        return metrics


def npid_bank(args, encoder, feat_dim, device):
    """(head, memory bank, labels of the bank's rows) of the NPID run that made the encoder."""
    if encoder.args["problem"] != "npid" or encoder.state is None:
        raise UserError(f"--knn_memory_bank needs an NPID run's checkpoint.pth.tar; {args.encoder_ckpt} is not one")
    pretrain_args = Flags(**encoder.args)
    labels = load_data(pretrain_args, pretrain=True, device="cpu").train.labels  # the bank's rows: the pretraining images
    bank = encoder.state["_extra_state"]["memory_bank"]
    if len(labels) != len(bank) or (labels < 0).any():
        raise UserError(f"the memory bank of {args.encoder_ckpt} does not match its labeled training images")
    head = head_from_args(pretrain_args, feat_dim)
    head.load_state_dict({k[len("head."):]: v for k, v in encoder.state.items() if k.startswith("head.")})
    return head.to(device), bank.to(device), labels.to(device)


def through_batch_norm(classifier, feats):
    """The L-BFGS probe's features, passed once through its BatchNorm (if any), whose statistics become those of the
    whole set: every evaluation of the line search then sees the same inputs, bit for bit."""
    norm = classifier[0]
    if isinstance(norm, nn.BatchNorm1d):
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: after one batch, that batch's mean and variance
        with torch.no_grad():
            feats = norm.train()(feats)
    return feats


def lbfgs_step(linear, optimizer, feats, labels):
    """One L-BFGS iteration of the probe's Linear, every training feature in each loss evaluation; returns the loss
    before the step."""
    first = []

    def closure():
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(linear(feats), labels)
        loss.backward()
        first.append(loss.detach())
        return loss
    optimizer.step(closure)
    return first[0]
