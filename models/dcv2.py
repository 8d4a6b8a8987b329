"""DeepCluster-v2: SwAV's model with prototypes set to k-means centroids of a memory bank every epoch, never trained."""
import math

import torch
import torch.nn.functional as F

from data.loader import steps_per_epoch
from models.base import Pretrain
from models.backbones import prototype_layers
from models.memory import spherical_kmeans
from models.monitors import prototype_monitors, trivial_solution_warning
from utils import config, dist, seeds
from utils.errors import UserError

NO_ASSIGNMENT = -100  # cross_entropy's ignore_index: an image not in any bank yet


def bank_slots(args, images, procs):
    """A rank's bank rows: one for each image it sees in an epoch of full batches."""
    return steps_per_epoch(images, args.batch_size) * (args.batch_size // procs)


class DeepClusterV2(Pretrain):
    @staticmethod
    def add_args(p):
        Pretrain.add_args(p)
        g = p.add_argument_group("DeepCluster-v2")
        g.add_argument("--temperature", type=config.POSITIVE, default=0.1,
                       help="softmax temperature of the cluster prediction")
        g.add_argument("--num_clusters", type=config.INT1, nargs="+", default=[3000, 3000, 3000],
                       help="k of each k-means; one prototype head per entry")
        g.add_argument("--kmeans_iters", type=config.INT1, default=10,
                       help="k-means rounds at the start of every epoch")
        g.add_argument("--crops_for_mb", type=config.INT0, nargs="+", default=[0, 1],
                       help="crops whose embeddings the memory bank keeps; head h clusters bank h mod len")
        p.set_defaults(head_hidden_dims=[2048])

    def __init__(self, args, train, device):
        super().__init__(args, train, device)
        self.check_crops("crops_for_mb", args.crops_for_mb)
        self.prototypes = prototype_layers(args.embedding_dim, args.num_clusters)
        self.prototypes.requires_grad_(False)  # centroids, not trained
        # per-rank bank: one slot per image this rank sees in an epoch, overwritten batch by batch
        self.local_batch = args.batch_size // dist.world_size()
        self.steps_per_epoch = steps_per_epoch(len(train), args.batch_size)
        slots = bank_slots(args, len(train), dist.world_size())
        if max(args.num_clusters) > slots:
            raise UserError(f"--num_clusters {max(args.num_clusters)} exceeds the {slots} images of a rank's memory bank")
        self.bank = torch.zeros(len(args.crops_for_mb), slots, args.embedding_dim, device=device)
        self.bank_index = torch.full((slots,), -1, dtype=torch.long, device=device)
        self.assignments = torch.full((len(args.num_clusters), len(train)), NO_ASSIGNMENT, dtype=torch.long,
                                      device=device)
        self.clustered_epoch = -1

    @staticmethod
    def state_bytes(args, images, procs):
        slots = bank_slots(args, images, procs)
        return [(f"DeepCluster-v2's banks, {len(args.crops_for_mb)} x {slots} x {args.embedding_dim} float32 per rank "
                 f"(an epoch of its images)", 4 * len(args.crops_for_mb) * slots * args.embedding_dim + 8 * slots,
                 "--crops_for_mb"),
                (f"DeepCluster-v2's cluster assignments, {len(args.num_clusters)} x {images} int64 on every rank",
                 8 * len(args.num_clusters) * images, "fewer --num_clusters heads")]

    @property
    def uniform_loss(self):
        return sum(math.log(k) for k in self.args.num_clusters) / len(self.args.num_clusters)

    def warnings(self):
        return trivial_solution_warning("--num_clusters", self.args.num_clusters, self.args.embedding_dim)

    def monitors(self, out):
        """Pretrain's, and how the first crop's embeddings use this epoch's centroids."""
        values = super().monitors(out)
        if values:
            z = out["embeddings"][:len(out["index"])]
            values.update(prototype_monitors(z, self.prototypes, self.args.temperature))
        return values

    def get_extra_state(self):  # identical on every rank; the banks are per rank (rank_state)
        return dict(assignments=self.assignments, clustered_epoch=self.clustered_epoch)

    def set_extra_state(self, state):
        if state["assignments"].shape != self.assignments.shape:
            raise UserError(f"the checkpoint's cluster assignments cover {state['assignments'].shape[1]} images, "
                                   f"the training set has {self.assignments.shape[1]}")
        self.assignments.copy_(state["assignments"])
        self.clustered_epoch = state["clustered_epoch"]

    def rank_state(self):
        return dict(bank=self.bank.cpu(), bank_index=self.bank_index.cpu())

    def load_rank_state(self, state):
        if state["bank"].shape == self.bank.shape:
            self.bank.copy_(state["bank"])
            self.bank_index.copy_(state["bank_index"])

    @torch.no_grad()
    def fill_bank(self, batches, epoch):
        """One pass over this rank's images (training mode, see bank_pass) puts an embedding of each in the bank."""
        for slot, (crops, idx) in enumerate(self.bank_pass(batches, epoch)):
            self.write_bank(slot, [self.embed([crops[c]]) for c in self.args.crops_for_mb], idx)

    def write_bank(self, slot, embeddings, idx):
        lo = slot * self.local_batch
        self.bank[:, lo:lo + len(idx)] = torch.stack(embeddings)
        self.bank_index[lo:lo + len(idx)] = idx

    @torch.no_grad()
    def cluster(self, epoch):
        """k-means for every head; its centroids become the prototypes, its assignments the targets."""
        for h, layer in enumerate(self.prototypes):
            bank = self.bank[h % len(self.bank)]
            k = layer.weight.shape[0]
            gen = seeds.generator(self.args.seed, "kmeans_start", epoch, h)
            start = dist.broadcast(bank[torch.randperm(len(bank), generator=gen)[:k].to(bank.device)])  # rank 0's rows
            centroids, members = spherical_kmeans(bank, start, self.args.kmeans_iters)
            layer.weight.copy_(centroids)
            self.assignments[h].fill_(NO_ASSIGNMENT)
            self.assignments[h][dist.gather(self.bank_index)] = dist.gather(members)

    def on_epoch_start(self, epoch, batches):
        if (self.bank_index < 0).any():  # a new run, or a resume on another number of processes
            self.fill_bank(batches, epoch)
        if self.clustered_epoch != epoch:  # not again when resuming in the middle of an epoch
            self.cluster(epoch)
            self.clustered_epoch = epoch

    def forward(self, batch, step):
        x, _, idx = batch
        h, z = self.encode(self.augment(x))
        targets = torch.cat([idx] * self.num_crops)
        losses = [F.cross_entropy(layer(z) / self.args.temperature, self.assignments[h][targets],
                                  ignore_index=NO_ASSIGNMENT) for h, layer in enumerate(self.prototypes)]
        return torch.stack(losses).mean(), {}, dict(embeddings=z.detach(), features=h.detach(), index=idx)

    @torch.no_grad()
    def after_step(self, step, out):
        z, idx = out["embeddings"], out["index"]
        n = len(idx)
        self.write_bank(step % self.steps_per_epoch, [z[c * n:(c + 1) * n] for c in self.args.crops_for_mb], idx)
