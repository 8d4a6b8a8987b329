"""`--problem finetune`: a pretrained backbone and a linear layer, all of it trained on the labelled images (or a
class-balanced fraction of them, as the semi-supervised protocol of SimCLR and SwAV); `--encoder_ckpt none` trains
the same recipe from a random initialisation, the supervised baseline."""

import torch.nn as nn
import torch.nn.functional as F

from data.augment import Augment
from models.backbones import backbone_spec
from models.base import Problem, load_data
from models.eval import (add_encoder_backbone_args, add_label_args, classifier_accuracy, encoder_arch_args,
                         encoder_backbone, encoder_data_args, load_encoder, on_validation, take_labelled)
from utils import optim
from utils.config import Range
from utils.errors import UserError


class FineTune(Problem):
    @staticmethod
    def add_args(p):
        add_encoder_backbone_args(p, scratch="--encoder_ckpt none")
        g = p.add_argument_group("fine-tuning (--data and --data_root default to the encoder's)")
        g.add_argument("--encoder_ckpt", default=None,
                       help="pretrained run folder, checkpoint.pth.tar or backbone.pth whose backbone (as that run "
                            "built it) is fine-tuned, or a published checkpoint (as --problem eval reads); `none`: a random-init backbone of the --arch flags (supervised "
                            "from scratch)")
        g.add_argument("--min_scale", type=Range(float, gt=0, le=1), default=0.08,
                       help="smallest RandomResizedCrop area fraction of the training crops (with a flip: the only "
                            "augmentation)")
        g.add_argument("--backbone_lr_scale", type=Range(float, ge=0), default=1.0,
                       help="the backbone's learning rate as a factor of the linear layer's (0: a frozen backbone, "
                            "batch norm statistics still updating)")
        add_label_args(g)
        p.set_defaults(opt="sgd", lr=0.05, epochs=30, weight_decay=0.0, data=None)

    @classmethod
    def build(cls, args, device):
        if not args.encoder_ckpt:
            raise UserError("--problem finetune needs --encoder_ckpt (a pretraining run folder or checkpoint, or `none` "
                            "to train from a random initialisation)")
        source = None if args.encoder_ckpt == "none" else load_encoder(args.encoder_ckpt)
        if source is not None and source.spec is None:
            raise UserError("--encoder_ckpt pixels has no weights to fine-tune: use `none` for a random-init backbone")
        args = encoder_arch_args(encoder_data_args(args, source.args if source else {}), source)
        data = load_data(args, pretrain=False, device=device)
        take_labelled(args, data)
        return cls(args, data, device, source)

    def __init__(self, args, data, device, source):
        super().__init__(args, data, device)
        self.backbone_spec = source.spec if source else backbone_spec(args, data.train)
        self.backbone = encoder_backbone(self.backbone_spec, source.weights if source else None, data.train, args.data)
        self.classifier = nn.Linear(self.backbone.feat_dim, data.train.num_classes)
        side = data.train.image_size
        self.augment = Augment([1], [side], [args.min_scale], [1.0], data.train.mean, data.train.std,
                               data.train.channels, colour=False, generator=self.generator("augment"))

    def make_optimizer(self):
        return optim.build_optimizer(self, self.args, {p: self.args.backbone_lr_scale for p in self.backbone.parameters()})

    def forward(self, batch, step):
        x, y, _ = batch
        with self.autocast():
            logits = self.classifier(self.backbone(self.augment(x)[0]))
        return F.cross_entropy(logits.float(), y), {}, {}

    def evaluate(self):
        """Top-1 and top-5 of the fine-tuned classifier on the test (or --validation) images, and kNN of its
        backbone's features."""
        train, (test_feats, test_labels) = self.features()
        acc1, acc5 = classifier_accuracy(self.classifier, test_feats, test_labels, self.data.test.num_classes)
        metrics = dict(test_acc1=acc1, test_acc5=acc5, **self.knn(train, (test_feats, test_labels)))
        return on_validation(self.args, metrics)
