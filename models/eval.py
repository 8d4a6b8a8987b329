"""`--problem eval`: a linear probe on a frozen encoder, and kNN, on the labeled train and test images."""
import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

from data.augment import Augment
from data.datasets import ArrayData
from models.backbones import build_backbone
from models.base import Problem, autocast, load_data
from models.heads import MLP, head_dims
from models.knn import extract_features, knn_accuracy
from models.npid import bank_knn
from utils import checkpoint, dist
from utils.config import UserError, str2bool


class FeatureData(ArrayData):
    """Precomputed features in place of images: the loop batches them like any in-memory dataset."""

    def __init__(self, features, labels, num_classes):
        self.name, self.images, self.labels, self.num_classes = "features", features, labels, num_classes


class LinearEval(Problem):
    @staticmethod
    def add_args(p):
        g = p.add_argument_group("linear evaluation")
        g.add_argument("--arch", default="linear", choices=["linear"], help="classifier on the frozen encoder's pooled features")
        g.add_argument("--encoder_ckpt", default=None,
                       help="pretrained run folder, checkpoint.pth.tar or backbone.pth; `pixels` for the raw-pixel baseline")
        g.add_argument("--precompute_features", type=str2bool, default=True,
                       help="compute the training features once, without augmentation (fast); else RandomResizedCrop + flip every step")
        g.add_argument("--min_scale", type=float, default=0.08, help="smallest crop area fraction when not precomputing")
        g.add_argument("--linear_bn", type=str2bool, default=False, help="a non-affine BatchNorm before the linear layer")
        g.add_argument("--knn_memory_bank", type=str2bool, default=False,
                       help="NPID encoders: also kNN of the test embeddings against the run's memory bank (bank_knn_acc1)")
        g.add_argument("--eval_only", type=str2bool, default=False, help="no training: score the linear run given by --ckpt")
        g.add_argument("--ckpt", default=None, help="with --eval_only: the linear run folder or checkpoint to score")
        p.set_defaults(opt="sgd", lr=0.1, epochs=100, weight_decay=0.0)  # SGD momentum 0.9 + cosine, METHODS.md

    @staticmethod
    def replicated(args):
        """Precomputed features are gathered on every rank, which then trains the same probe on the whole batch:
        no DDP, and exactly the single-process result. Augmented features split each batch over the ranks (DDP)."""
        return args.precompute_features

    @staticmethod
    def load_data(args):
        """The data flags default to those the encoder was pretrained with."""
        if args.eval_only:
            if not args.ckpt:
                raise UserError("--eval_only needs --ckpt, the linear run to score")
            source = checkpoint.load(args.ckpt)
            if source["args"].get("problem") != "eval":
                raise UserError(f"--ckpt {args.ckpt} is a '{source['args'].get('problem')}' run, not a linear (eval) run")
        elif not args.encoder_ckpt:
            raise UserError("--problem eval needs --encoder_ckpt (a pretraining run folder or checkpoint, or `pixels`)")
        elif args.encoder_ckpt != "pixels":
            source = checkpoint.load(args.encoder_ckpt)
        if args.eval_only or args.encoder_ckpt != "pixels":
            for key in ("data", "data_root"):
                if key not in args.given:
                    setattr(args, key, source["args"][key])
        if args.eval_only:
            args.linear_bn = source["args"]["linear_bn"]  # the probe's shape is the trained run's
        return load_data(args, pretrain=False)

    def __init__(self, args, data, device):
        super().__init__()
        self.args, self.data, self.device = args, data, device
        if args.eval_only:
            saved = checkpoint.load(args.ckpt)
            spec, state = saved["backbone_spec"], None
        elif args.encoder_ckpt == "pixels":
            spec, state = dict(arch="pixels", in_channels=data.train.channels, image_size=data.train.image_size), {}
        else:
            spec, state = checkpoint.load_backbone(args.encoder_ckpt)
        if spec["in_channels"] != data.train.channels:
            raise UserError(f"the encoder takes {spec['in_channels']}-channel images, {args.data} has {data.train.channels}")
        if args.opt == "lbfgs" and not args.eval_only:
            if not args.precompute_features:
                raise UserError("--opt lbfgs needs --precompute_features true: it takes every training feature at each step")
            if args.batch_size != len(data.train):
                raise UserError(f"--opt lbfgs takes the whole training set as one batch: --batch_size {len(data.train)}")
        self.backbone_spec = spec
        self.backbone = build_backbone(spec)
        if state is not None:
            try:
                self.backbone.load_state_dict(state)
            except RuntimeError as e:
                raise UserError(f"encoder weights do not fit its architecture: {str(e).splitlines()[0]}")
        self.backbone.requires_grad_(False)
        feat_dim = self.backbone.feat_dim
        self.classifier = nn.Sequential(nn.BatchNorm1d(feat_dim, affine=False) if args.linear_bn else nn.Identity(),
                                        nn.Linear(feat_dim, data.train.num_classes))
        side = data.train.image_size
        gen = torch.Generator(device).manual_seed(args.seed * 1000 + dist.rank())
        self.augment = Augment([1], [side], [args.min_scale], [1.0], data.train.mean, data.train.std,
                               data.train.channels, colour=False, generator=gen)
        self._features = self._full_batch = None
        if args.linear_bn and not self.replicated(args) and dist.world_size() > 1:  # global BatchNorm statistics
            if device.type == "cpu":
                raise UserError("--linear_bn with --precompute_features false on several processes needs GPUs (SyncBatchNorm)")
            self.classifier = nn.SyncBatchNorm.convert_sync_batchnorm(self.classifier)
        if args.eval_only:
            self.load_state_dict(saved["model"])
        self.memory = self.load_memory_bank(args, device) if args.knn_memory_bank else None

    def load_memory_bank(self, args, device):
        """(head, memory bank, labels of the bank's rows) of the NPID run --encoder_ckpt."""
        if args.eval_only or args.encoder_ckpt == "pixels":
            raise UserError("--knn_memory_bank needs --encoder_ckpt, the NPID run whose memory bank to use")
        ckpt = checkpoint.load(args.encoder_ckpt)
        if ckpt["args"]["problem"] != "npid" or "model" not in ckpt:
            raise UserError(f"--knn_memory_bank needs an NPID run's checkpoint.pth.tar; {args.encoder_ckpt} is not one")
        pretrain_args = argparse.Namespace(**ckpt["args"])
        labels = load_data(pretrain_args, pretrain=True).train.labels  # the bank's rows are the pretraining images
        bank = ckpt["model"]["_extra_state"]["memory_bank"]
        if len(labels) != len(bank) or (labels < 0).any():
            raise UserError(f"the memory bank of {args.encoder_ckpt} does not match its labeled training images")
        head = MLP(head_dims(pretrain_args, self.backbone.feat_dim), pretrain_args.head_use_bn, pretrain_args.head_use_relu)
        head.load_state_dict({k[len("head."):]: v for k, v in ckpt["model"].items() if k.startswith("head.")})
        return head.to(device), bank.to(device), labels.to(device)

    def autocast(self):
        return autocast(self.args, self.device)

    def train(self, mode=True):
        super().train(mode)
        self.backbone.eval()  # frozen encoder: BatchNorm statistics stay as pretrained
        return self

    def features(self):
        """Un-augmented (train, test) features and labels, computed once: the encoder never changes."""
        if self._features is None:
            self.backbone.to(self.device)
            self._features = [extract_features(self.backbone, d, self.device, workers=self.args.workers,
                                               autocast=self.autocast) for d in (self.data.train, self.data.test)]
        return self._features

    def train_data(self):
        if not self.args.precompute_features:
            return self.data.train
        feats, labels = self.features()[0]
        if self.args.opt == "lbfgs":  # the loop's batch only counts: forward reads the whole set (full_batch)
            feats = feats.new_empty(len(feats), 0)
        return FeatureData(feats, labels, self.data.train.num_classes)

    def full_batch(self):
        """--opt lbfgs: the training features in dataset order, through the probe's BatchNorm once, whose statistics
        become those of the whole set: every evaluation of the line search sees the same inputs, bit for bit."""
        if self._full_batch is None:
            feats, labels = self.features()[0]
            norm = self.classifier[0]
            if isinstance(norm, nn.BatchNorm1d):
                norm.reset_running_stats()
                norm.momentum = None  # a cumulative average: after one batch, that batch's mean and variance
                with torch.no_grad():
                    feats = norm.train()(feats)
            self._full_batch = feats, labels
        return self._full_batch

    def forward(self, batch):
        x, y, _ = batch
        if self.args.opt == "lbfgs":
            x, y = self.full_batch()
            return F.cross_entropy(self.classifier[1](x), y), {}
        if self.args.precompute_features:
            feats = x
        else:
            with torch.no_grad(), self.autocast():
                feats = self.backbone(self.augment(x)[0]).float()
        logits = self.classifier(feats)
        return F.cross_entropy(logits, y), {}

    @torch.no_grad()
    def evaluate(self):
        (train_feats, train_labels), (test_feats, test_labels) = self.features()
        was_training = self.training
        self.eval()
        top5 = self.classifier(test_feats).topk(min(5, self.data.test.num_classes), dim=1).indices
        self.train(was_training)
        acc1 = 100.0 * (top5[:, 0] == test_labels).float().mean().item()
        acc5 = 100.0 * (top5 == test_labels[:, None]).any(dim=1).float().mean().item()
        k1, k5 = knn_accuracy(train_feats, train_labels, test_feats, test_labels, self.data.test.num_classes,
                              self.args.knn_k, self.args.knn_t)
        metrics = dict(test_acc1=acc1, test_acc5=acc5, knn_acc1=k1, knn_acc5=k5)
        if self.memory is not None:
            head, bank, labels = self.memory
            metrics.update(bank_knn(head, bank, labels, (test_feats, test_labels), self.data.test.num_classes,
                                    self.args.knn_k, self.args.knn_t, self.autocast))
        return metrics
