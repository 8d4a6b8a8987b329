"""The contract between train.py's loop and a problem, and what every pretraining method shares.

A problem is an nn.Module built by `Problem.build(args, device)`. The loop calls, in this order:
- `on_epoch_start(epoch, batches)`: start of every epoch, or of the rest of one on resume (DeepCluster-v2
  clusters here, SwAV switches its queue on);
- `forward(batch, step) -> (loss, logs, out)`: `logs` are floats for logs.csv, `out` the step's detached
  tensors, written to the run folder if the step turns out non-finite and handed to the hooks below;
- `after_backward(step)`: gradients are ready, the optimiser has not stepped (SwAV drops frozen prototypes');
- `after_step(step, out)`: the optimiser has stepped (memory banks and queues are updated here);
- `evaluate() -> metrics`, at --eval_freq and at the end.
A problem with `full_batch` True (the L-BFGS probe) has no batches: the loop calls its `full_batch_step(optimizer)`,
one pass over every training image, instead; one with `trains` False (a probe re-scored) is only evaluated.
Saved state: every random draw comes from the problem's own generators (`self.generator(name)`), saved per rank.
State that every rank holds alike (NPID's bank, DeepCluster-v2's centroids) goes in `get_extra_state()`, so in
the model's state_dict; state that differs per rank (SwAV's queue, DeepCluster-v2's banks) in `rank_state()`.
Checkpoints also export `backbone` (an nn.Module) with `backbone_spec` (the dict that rebuilds it).
"""
import types

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from data.augment import from_args
from data.datasets import fixed_subset, load_dataset
from data.loader import TrainBatches, unreadable_list
from models.backbones import backbone_spec, build_backbone, multicrop_forward
from models.heads import head_from_args
from models.knn import extract_features, knn_accuracy
from models.monitors import OnlineProbe, effective_rank
from utils import config, dist, optim, seeds
from utils.errors import UserError


def autocast(args, device):
    """torch.autocast for the backbone and head under --amp; the losses run outside it, in float32."""
    dtype = torch.bfloat16 if args.amp_dtype == "bf16" else torch.float16
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=args.amp)


def normalisation(args, data):
    """(mean, std) the pixels of `data` are normalised with: --norm_mean / --norm_std, else the dataset's."""
    # getattr: the flags of runs made before these flags existed (an encoder's saved args) have neither
    mean = tuple(getattr(args, "norm_mean", None) or data.mean)
    std = tuple(getattr(args, "norm_std", None) or data.std)
    for name, values in (("--norm_mean", mean), ("--norm_std", std)):
        if len(values) != data.channels:
            raise UserError(f"{name} has {len(values)} values; {args.data} has {data.channels} channels")
    return mean, std


def load_data(args, pretrain, device):
    """train (what the loop iterates), test, and knn_train (the labeled training images for kNN), on `device`."""
    def load(split):
        return load_dataset(args.data, args.data_root, split, args.skip_images, args.interpolation)
    train = fixed_subset(load("pretrain" if pretrain else "train"), args.subset, args.seed)
    test = fixed_subset(load("test"), getattr(args, "test_subset", 0), 0, "test_subset")  # (saved flags of older runs)
    knn_train = train
    if (train.labels < 0).any():  # STL-10's unlabeled images: kNN uses the labeled split
        knn_train = fixed_subset(load("train"), args.subset, args.seed)
    for d in (train, test, knn_train):
        d.to(device)
        d.mean, d.std = normalisation(args, d)
    return types.SimpleNamespace(train=train, test=test, knn_train=knn_train, label_subset=None,
                                 validation_subset=None)


class Problem(nn.Module):
    """What the loop calls (see the module's docstring); every hook is optional."""

    def __init__(self, args, data, device):
        super().__init__()
        self.args, self.data, self.device = args, data, device
        self.generators = {}

    @classmethod
    def build(cls, args, device):
        """Load the data and build the problem; the run records `model.args`, the flags it resolved."""
        return cls(args, load_data(args, pretrain=True, device=device), device)

    @staticmethod
    def whole_batch_on_every_rank(args):
        """False: under DDP every rank trains on its part of each global batch. True: no DDP, every rank computes
        the same step on the whole batch (the precomputed-feature probe)."""
        return False

    def generator(self, name):
        """A new random generator on the device, owned by this problem, saved per rank in checkpoints."""
        self.generators[name] = seeds.generator(self.args.seed, name, dist.rank(), device=self.device)
        return self.generators[name]

    def reseed(self, step):
        """Fresh streams for a resume on another number of processes: still distinct per rank and resume point."""
        for name, gen in self.generators.items():
            gen.manual_seed(seeds.seed_of(self.args.seed, name, dist.rank(), "resumed at", step))

    def autocast(self):
        return autocast(self.args, self.device)

    def train_data(self):
        return self.data.train

    def crops(self):
        """(size, (min_scale, max_scale)) of every crop the loader cuts from each image; none: each batch is the
        in-memory items as they are (the probe's precomputed features)."""
        return self.augment.crops

    def train_batches(self, folder=None):
        """The batches of every epoch: this rank's share of each global batch, or all of it; with the run `folder`,
        the images that cannot be decoded are listed there (data.loader.UnreadableList)."""
        shards = 1 if self.whole_batch_on_every_rank(self.args) else dist.world_size()
        data = self.train_data()
        return TrainBatches(data, self.args.batch_size, self.args.seed, self.device, crops=self.crops(),
                            workers=self.args.workers, rank=dist.rank() if shards > 1 else 0, world_size=shards,
                            decode=self.args.decode,
                            listed=unreadable_list(data, folder, self.args.max_unreadable) if folder else None)

    full_batch = False  # True: each step is full_batch_step(optimizer), one pass over every training image
    trains = True  # False: nothing to train, the run is its final evaluation

    def make_optimizer(self):
        return optim.build_optimizer(self, self.args)

    def warnings(self):
        """Lines the run prints once it has its folder: a recipe with a known trivial solution."""
        return []

    def online_probe(self):
        """The linear probe the loop trains beside this problem (models.monitors.OnlineProbe), or None."""
        return None

    def monitors(self, out):
        """{name: float} of the step whose `out` this is, for the logs.csv row (models/monitors.py)."""
        return {}

    uniform_loss = None  # the loss when every prediction is uniform (ln K), for the problems that have one

    def on_epoch_start(self, epoch, batches):
        pass

    def after_backward(self, step):
        pass

    def after_step(self, step, out):
        pass

    def rank_state(self):
        return {}

    def run_files(self):
        """{file name: text} written into a new run's folder: the labelled images of a probe or fine-tuning on a
        fraction of the labels, and the held-out images of --validation (`models.eval.take_labelled`)."""
        files = {"label_subset.txt": self.data.label_subset, "validation.txt": self.data.validation_subset}
        return {name: "".join(f"{line}\n" for line in lines) for name, lines in files.items() if lines}

    def features(self):
        """(features, labels) of the labeled training images and of the test images, from the backbone in eval mode."""
        return [extract_features(self.backbone, d, self.device, workers=self.args.workers, autocast=self.autocast)
                for d in (self.data.knn_train, self.data.test)]

    def knn(self, train, test):
        """kNN accuracy of test = (features, labels) against train = (features, labels)."""
        k1, k5 = knn_accuracy(*train, *test, self.data.test.num_classes, self.args.knn_k, self.args.knn_t)
        return dict(knn_acc1=k1, knn_acc5=k5)

    def load_rank_state(self, state):
        pass


class Pretrain(Problem):
    """Backbone + head + augmentation. A method subclasses it and defines `forward(batch, step)`."""

    @staticmethod
    def add_args(p):
        config.add_backbone_args(p)
        config.add_augment_args(p)
        config.add_monitor_args(p)

    def __init__(self, args, data, device):
        super().__init__(args, data, device)
        self.backbone_spec = backbone_spec(args, data.train)
        self.backbone = build_backbone(self.backbone_spec)
        if args.conv_init == "default":
            for m in self.backbone.modules():
                if isinstance(m, nn.Conv2d):
                    m.reset_parameters()
        try:
            self.augment = from_args(args, data.train, self.generator("augment"))
        except ValueError as e:
            raise UserError(str(e))
        self.head = head_from_args(args, self.backbone.feat_dim)
        self.num_crops = sum(args.num_crops)

    def check_crops(self, flag, crops):
        """`--<flag>` lists crop indices; each must name one of the crops."""
        if any(not 0 <= c < self.num_crops for c in crops):
            raise UserError(f"--{flag} {crops} names crops beyond the {self.num_crops} there are")

    def encode(self, crops, normalize=True):
        """(backbone features, embeddings) of a list of crop batches, crop-major: the backbone and head under
        autocast; the embeddings L2-normalized in float32, or (normalize False) the head's output as it is."""
        with self.autocast():
            features = multicrop_forward(self.backbone, crops)
            z = self.head(features)
        return features, F.normalize(z.float(), dim=1) if normalize else z

    def embed(self, crops):
        """The L2-normalized float32 embeddings of a list of crop batches, crop-major."""
        return self.encode(crops)[1]

    def online_probe(self):
        labels = self.data.train.labels
        if not self.args.online_probe or (labels < 0).any():  # STL-10's unlabeled images: nothing to learn from
            return None
        return OnlineProbe(self.backbone.feat_dim, self.data.train.num_classes, self.args.online_probe_lr, self.device)

    def probe_batch(self, batch, out):
        """(features, labels) the online probe learns from: every crop of the first size (the large ones)."""
        labels, large = batch[1], self.args.num_crops[0]
        return out["features"][:large * len(labels)], labels.repeat(large)

    def monitors(self, out):
        """The effective rank of the first crop's backbone features and head outputs."""
        if not self.args.monitors:
            return {}
        n = len(out["features"]) // self.num_crops
        return dict(rankme_backbone=effective_rank(out["features"][:n]),
                    rankme_head=effective_rank(out["embeddings"][:n]))

    def bank_pass(self, batches, epoch):
        """(crops, indices) of each of this rank's batches in one epoch, with a progress bar: a memory bank's fill.

        The caller embeds in training mode, batch statistics, as the steps that later rewrite the bank: a new
        network's running statistics make nearly parallel embeddings (mean cosine 0.99 against 0.85).
        """
        for x, _, idx in tqdm(batches.epoch(epoch), total=len(batches), desc="memory bank",
                              disable=not dist.is_main(), leave=False):
            yield self.augment(x), idx

    def evaluate(self):
        """kNN accuracy of the backbone's features, test images against the labeled training images."""
        return self.knn(*self.features())
