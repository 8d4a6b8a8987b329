"""What a method is to the loop (`Method`), and what the pretraining methods share (`Pretrain`).

A method is an nn.Module: a model, its loss and a few named hooks. train.py's loop calls, in this order:
- `on_epoch_start(epoch, batches)`: start of every epoch, or of the rest of one on resume (DeepCluster-v2
  clusters here, SwAV switches its queue on);
- `forward(batch, step) -> (loss, logs, out)`: `logs` are floats for logs.csv, `out` the step's detached
  tensors, written to the run folder if the step turns out non-finite and handed to the hooks below;
- `after_backward(step)`: gradients are ready, the optimiser has not stepped (SwAV drops frozen prototypes');
- `after_step(step, out)`: the optimiser has stepped (memory banks and queues are updated here);
and `monitors(out)` at each logs.csv row, `evaluate(test)` at each evaluation: the method's own metrics on the test
images' backbone features `test` = (features, labels), beside the run's kNN (NPID scores them against its bank).
A method holds `args` (the flags it was built with), `device`, `backbone` and `backbone_spec` (the dict that
rebuilds it: every checkpoint exports both), `crops` (what the loader cuts of each image: (size, (min_scale,
max_scale)) each), `generators` (its random streams by name, saved per rank), `lr_scales()` ({parameter: factor of the
scheduled lr}), `uniform_loss` (ln K where K prototypes predict), `warnings()` (lines for the run's start) and, on
its class, `state_bytes(args, images, procs)`: what it holds that grows with the data, per rank of `procs`.
State every rank holds alike (NPID's bank) goes in `get_extra_state()`, so in the state_dict; state that differs
per rank (SwAV's queue, DeepCluster-v2's banks) in `rank_state()` / `load_rank_state(state)`.
The data, the loaders, the kNN evaluation, the online probe and the run's files are the run's (train.py).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from data.augment import from_args
from models.backbones import backbone_spec, build_backbone, head_from_args, multicrop_forward
from models.monitors import effective_rank
from utils import config, dist, seeds
from utils.errors import UserError


def autocast(args, device):
    """torch.autocast for the backbone and head under --amp; the losses run outside it, in float32."""
    dtype = torch.bfloat16 if args.amp_dtype == "bf16" else torch.float16
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=args.amp)


class Method(nn.Module):
    """The contract of the module's docstring; every hook is optional."""

    uniform_loss = None  # ln K for the methods whose loss is ln K when every prediction is uniform

    def __init__(self, args, device):
        super().__init__()
        self.args, self.device = args, device
        self.generators = {}

    def generator(self, name):
        """A new random generator on the device, owned by this method, saved per rank in checkpoints."""
        self.generators[name] = seeds.generator(self.args.seed, name, dist.rank(), device=self.device)
        return self.generators[name]

    def autocast(self):
        return autocast(self.args, self.device)

    def lr_scales(self):
        return {}

    @staticmethod
    def state_bytes(args, images, procs):
        """[(what, bytes on each rank, the flag that shrinks it)] of the state that grows with the `images` the run
        trains on, on each of `procs` ranks: a memory bank, a queue."""
        return []

    def warnings(self):
        return []

    def monitors(self, out):
        return {}

    def evaluate(self, test):
        return {}

    def on_epoch_start(self, epoch, batches):
        pass

    def after_backward(self, step):
        pass

    def after_step(self, step, out):
        pass

    def rank_state(self):
        return {}

    def load_rank_state(self, state):
        pass


class Pretrain(Method):
    """Backbone + head + augmentation of a pretraining method, built for the training images `train` (their
    channels, size and normalisation). A method subclasses it and defines `forward(batch, step)`."""

    @staticmethod
    def add_args(p):
        config.add_backbone_args(p)
        config.add_augment_args(p)
        config.add_monitor_args(p)

    def __init__(self, args, train, device):
        super().__init__(args, device)
        self.backbone_spec = backbone_spec(args, train)
        self.backbone = build_backbone(self.backbone_spec)
        if args.conv_init == "default":
            for m in self.backbone.modules():
                if isinstance(m, nn.Conv2d):
                    m.reset_parameters()
        try:
            self.augment = from_args(args, train, self.generator("augment"))
        except ValueError as e:
            raise UserError(str(e))
        self.crops = self.augment.crops
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
