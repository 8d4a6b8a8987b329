"""`--problem finetune`: a pretrained backbone and a linear layer, all of it trained on the labelled images (or a
class-balanced fraction of them, as the semi-supervised protocol of SimCLR and SwAV); `--encoder_ckpt none` trains
the same recipe from a random initialisation, the supervised baseline."""

import torch.nn as nn
import torch.nn.functional as F

from data.augment import Augment
from models.backbones import backbone_spec
from models.base import Method
from models.eval import (add_encoder_backbone_args, add_label_args, classifier_accuracy, encoder_arch_args,
                         encoder_backbone, encoder_data_args, load_encoder)
from utils import config
from utils.config import Range
from utils.errors import UserError


class FineTune(Method):
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
        config.compat_group(p).add_argument(
            "--head_init", default="default", choices=["default", "normal", "zeros"],
            help="the Linear's starting weights: PyTorch's default, N(0, 0.01) and a zero bias (SimCLR's linear_layer), "
                 "or zeros (SimCLR's --zero_init_logits_layer, in its README's fine-tuning commands)")
        p.set_defaults(opt="sgd", lr=0.05, epochs=30, weight_decay=0.0, data=None)

    @staticmethod
    def resolve(args):
        """(args, encoder): the encoder read once (None for `none`), the flags the user left unset completed from it."""
        if not args.encoder_ckpt:
            raise UserError("--problem finetune needs --encoder_ckpt (a pretraining run folder or checkpoint, or `none` "
                            "to train from a random initialisation)")
        source = None if args.encoder_ckpt == "none" else load_encoder(args.encoder_ckpt)
        if source is not None and source.spec is None:
            raise UserError("--encoder_ckpt pixels has no weights to fine-tune: use `none` for a random-init backbone")
        return encoder_arch_args(encoder_data_args(args, source.args if source else {}), source), source

    def __init__(self, args, train, device, encoder):
        super().__init__(args, device)
        self.backbone_spec = encoder.spec if encoder else backbone_spec(args, train)
        self.backbone = encoder_backbone(self.backbone_spec, encoder.weights if encoder else None, train, args.data)
        self.classifier = nn.Linear(self.backbone.feat_dim, train.num_classes)
        if args.head_init != "default":  # (after the default init: the random streams stay as they were)
            nn.init.zeros_(self.classifier.bias)
            if args.head_init == "zeros":
                nn.init.zeros_(self.classifier.weight)
            else:
                nn.init.normal_(self.classifier.weight, std=0.01)
        self.num_classes = train.num_classes
        side = train.image_size
        self.augment = Augment([1], [side], [args.min_scale], [1.0], train.mean, train.std, train.channels,
                               colour=False, generator=self.generator("augment"))
        self.crops = self.augment.crops

    def lr_scales(self):
        return {p: self.args.backbone_lr_scale for p in self.backbone.parameters()}

    def forward(self, batch, step):
        x, y, _ = batch
        with self.autocast():
            logits = self.classifier(self.backbone(self.augment(x)[0]))
        return F.cross_entropy(logits.float(), y), {}, {}

    def evaluate(self, test):
        """Top-1 and top-5 of the fine-tuned classifier on the test (or --validation) images' features."""
        acc1, acc5 = classifier_accuracy(self.classifier, *test, self.num_classes)
        return dict(test_acc1=acc1, test_acc5=acc5)
