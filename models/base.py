"""What every pretraining method shares: data, backbone, augmentation, kNN monitor, and the loop's hooks."""
import types

import torch
import torch.nn as nn

from data.augment import from_args
from data.datasets import fixed_subset, load_dataset
from models.backbones import backbone_spec, build_backbone
from models.knn import extract_features, knn_accuracy
from utils import config, dist


def autocast(args, device):
    """torch.autocast for the backbone and head under --amp; the losses run outside it, in float32."""
    dtype = torch.bfloat16 if args.amp_dtype == "bf16" else torch.float16
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=args.amp)


def load_data(args, pretrain):
    """train (what the loop iterates), test, and knn_train (the labeled training images for kNN)."""
    train = fixed_subset(load_dataset(args.data, args.data_root, "pretrain" if pretrain else "train"), args.subset, args.seed)
    test = load_dataset(args.data, args.data_root, "test")
    knn_train = train
    if (train.labels < 0).any():  # STL-10's unlabeled images: kNN uses the labeled split
        knn_train = fixed_subset(load_dataset(args.data, args.data_root, "train"), args.subset, args.seed)
    return types.SimpleNamespace(train=train, test=test, knn_train=knn_train)


class NonFinite(Exception):
    """A step's loss or codes are not finite: `tensors` are written to the run folder before training stops."""

    def __init__(self, message, tensors):
        super().__init__(message)
        self.tensors = tensors


class Problem(nn.Module):
    """What the loop calls besides `forward(batch) -> (loss, logs)` and `evaluate()`; all optional."""

    step = 0  # the optimiser step being taken, set by the loop before each forward

    @staticmethod
    def replicated(args):
        """False: under DDP every rank trains on its part of each global batch."""
        return False

    def on_epoch_start(self, epoch, batches):
        """Hook: start of every epoch, or of the rest of one on resume; `batches` is the loop's TrainBatches
        (DeepCluster-v2 fills its memory bank from it and clusters here; SwAV switches its queue on)."""

    def after_backward(self):
        """Hook: gradients are ready, the optimiser has not stepped (SwAV drops frozen prototypes' gradients)."""

    def after_step(self, batch, logs):
        """Hook: after every optimiser step (memory banks and queues are updated here)."""

    def rank_state(self):
        """This rank's own state (a queue, say): the checkpoint keeps every rank's."""
        return {}

    def load_rank_state(self, state):
        pass


class Pretrain(Problem):
    """Backbone + augmentation. A method subclasses it, adds its head and defines `forward(batch) -> (loss, logs)`."""

    @staticmethod
    def add_args(p):
        config.add_backbone_args(p)
        config.add_augment_args(p)

    @staticmethod
    def load_data(args):
        return load_data(args, pretrain=True)

    def __init__(self, args, data, device):
        super().__init__()
        self.args, self.data, self.device = args, data, device
        self.backbone_spec = backbone_spec(args, data.train)
        self.backbone = build_backbone(self.backbone_spec)
        gen = torch.Generator(device).manual_seed(args.seed * 1000 + dist.rank())
        try:
            self.augment = from_args(args, data.train, gen)
        except ValueError as e:
            raise config.UserError(str(e))

    def autocast(self):
        return autocast(self.args, self.device)

    def train_data(self):
        return self.data.train

    def evaluate(self):
        """kNN accuracy of the backbone's features, test images against the labeled training images."""
        train, test = (extract_features(self.backbone, d, self.device, workers=self.args.workers, autocast=self.autocast)
                       for d in (self.data.knn_train, self.data.test))
        k1, k5 = knn_accuracy(*train, *test, self.data.test.num_classes, self.args.knn_k, self.args.knn_t)
        return dict(knn_acc1=k1, knn_acc5=k5)
