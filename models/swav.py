"""SwAV: backbone -> MLP head -> normalize -> bias-free prototype layers; swapped prediction of Sinkhorn codes."""
import math

import torch
import torch.nn.functional as F

from models.base import Pretrain
from models.backbones import prototype_layers
from models.monitors import prototype_monitors, trivial_solution_warning
from utils import config, dist


@torch.no_grad()
def sinkhorn(scores, epsilon=0.05, num_iters=3):
    """SwAV's equal-partition codes: scores (B, K) of this rank's rows -> codes (B, K), every row summing to 1.

    Q = exp(scores / epsilon), then `num_iters` rounds of: rows of Q^T (prototypes) scaled to sum 1/K
    over the rows of all ranks, columns (samples) scaled to sum 1/B_total. Sums over samples are
    all-reduced, so W ranks give the codes one process would give on all their rows. Half precision
    is promoted to float32; float64 stays float64.
    """
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
    top = scores.max()
    if dist.world_size() > 1:
        torch.distributed.all_reduce(top, op=torch.distributed.ReduceOp.MAX)
    q = torch.exp((scores - top) / epsilon).T  # (K, B); the global max cancels in the normalisations
    num_prototypes, batch = q.shape
    total_batch = batch * dist.world_size()
    q /= dist.all_reduce_sum(q.sum())
    for _ in range(num_iters):
        q /= dist.all_reduce_sum(q.sum(dim=1, keepdim=True))
        q /= num_prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= total_batch
    return (q * total_batch).T


def swav_loss(scores, num_crops, crops_for_assign, temperature=0.1, epsilon=0.05, num_iters=3, queue_scores=None,
              hard=False):
    """SwAV's swapped prediction for one prototype head; scores (C*n, K) crop-major.

    For each crop a in `crops_for_assign`: codes q_a = sinkhorn of its scores (with `queue_scores[j]`,
    the j-th assigned crop's queue scores, prepended when given; only the last n rows are kept; one-hot
    of the row argmax when `hard`), and for every other crop p the cross-entropy
    -sum_k q_a[i, k] log softmax(scores_p[i] / T)[k], averaged over i and over p; then the mean over a.
    Returns the loss and the list of codes q_a.
    """
    n = scores.shape[0] // num_crops
    log_probs = F.log_softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)) / temperature, dim=1)
    total, codes = 0.0, []
    for j, a in enumerate(crops_for_assign):
        assign = scores[a * n:(a + 1) * n].detach()
        if queue_scores is not None and queue_scores[j] is not None:
            assign = torch.cat([queue_scores[j].to(assign.dtype), assign])
        q = sinkhorn(assign, epsilon, num_iters)[-n:]
        if hard:
            q = F.one_hot(q.argmax(dim=1), q.shape[1]).to(q.dtype)
        codes.append(q)
        others = [p for p in range(num_crops) if p != a]
        total = total + sum(-(q * log_probs[p * n:(p + 1) * n]).sum(dim=1).mean() for p in others) / len(others)
    return total / len(crops_for_assign), codes


def queue_rows(args, procs):
    """A rank's queue length: --queue_length rounded down to a multiple of the global batch, split over the ranks."""
    return (args.queue_length - args.queue_length % args.batch_size) // procs


class SwAV(Pretrain):
    @staticmethod
    def add_args(p):
        Pretrain.add_args(p)
        g = p.add_argument_group("SwAV")
        g.add_argument("--temperature", type=config.POSITIVE, default=0.1,
                       help="softmax temperature of the swapped prediction")
        g.add_argument("--epsilon", type=config.POSITIVE, default=0.05, help="Sinkhorn entropy regularisation")
        g.add_argument("--sinkhorn_iterations", type=config.INT1, default=3, help="Sinkhorn normalisation rounds")
        g.add_argument("--num_prototypes", type=config.INT1, nargs="+", default=[3000], help="prototypes of each head")
        g.add_argument("--crops_for_assign", type=config.INT0, nargs="+", default=[0, 1],
                       help="crops whose codes are predicted")
        g.add_argument("--queue_length", type=config.INT0, default=0,
                       help="embeddings queued over all ranks (0: no queue)")
        g.add_argument("--epoch_queue_starts", type=config.INT0, default=15,
                       help="epoch at which the queue starts filling")
        g.add_argument("--freeze_prototypes_niters", type=config.INT0, default=313,
                       help="steps during which prototypes stay fixed")
        g.add_argument("--prototypes_lr_scale", type=config.POSITIVE, default=1.0,
                       help="the prototypes' learning rate as a factor of the schedule's")
        g.add_argument("--temp_hard_assignment_iters", type=config.INT0, default=0, help="steps that use one-hot codes")
        g.add_argument("--use_double_precision", type=config.str2bool, default=False,
                       help="Sinkhorn and loss in float64")
        p.set_defaults(head_hidden_dims=[2048])

    def __init__(self, args, train, device):
        super().__init__(args, train, device)
        self.check_crops("crops_for_assign", args.crops_for_assign)
        self.prototypes = prototype_layers(args.embedding_dim, args.num_prototypes)
        self.queue = torch.zeros(len(args.crops_for_assign), queue_rows(args, dist.world_size()), args.embedding_dim,
                                 device=device)
        self.queue_filled = 0  # rows written; the queue joins Sinkhorn once they reach its length
        self.queue_on = False

    @staticmethod
    def state_bytes(args, images, procs):
        rows = queue_rows(args, procs)
        if not rows:
            return []
        return [(f"SwAV's queue, {len(args.crops_for_assign)} x {rows} x {args.embedding_dim} float32 per rank",
                 4 * len(args.crops_for_assign) * rows * args.embedding_dim, "--queue_length")]

    def on_epoch_start(self, epoch, batches):
        self.queue_on = self.queue.shape[1] > 0 and epoch >= self.args.epoch_queue_starts

    @torch.no_grad()
    def normalize_prototypes(self):
        for layer in self.prototypes:
            layer.weight.copy_(F.normalize(layer.weight, dim=1))

    def forward(self, batch, step):
        x, _, _ = batch
        self.normalize_prototypes()
        h, z = self.encode(self.augment(x))
        dtype = torch.float64 if self.args.use_double_precision else torch.float32
        use_queue = self.queue_on and self.queue_filled >= self.queue.shape[1]
        losses, all_scores, all_codes = [], [], []
        for layer in self.prototypes:
            scores = layer(z).to(dtype)
            with torch.no_grad():
                queue_scores = [layer(q).to(dtype) for q in self.queue] if use_queue else None
            loss, codes = swav_loss(scores, self.num_crops, self.args.crops_for_assign, self.args.temperature,
                                    self.args.epsilon, self.args.sinkhorn_iterations, queue_scores,
                                    hard=step < self.args.temp_hard_assignment_iters)
            losses.append(loss)
            all_scores.append(scores.detach())
            all_codes.append(codes)
        out = dict(embeddings=z.detach(), features=h.detach(), scores=all_scores, codes=all_codes)
        return torch.stack(losses).mean().float(), dict(queue_used=float(use_queue)), out

    @property
    def uniform_loss(self):
        return sum(math.log(k) for k in self.args.num_prototypes) / len(self.args.num_prototypes)

    def warnings(self):
        return trivial_solution_warning("--num_prototypes", self.args.num_prototypes, self.args.embedding_dim)

    def monitors(self, out):
        """Pretrain's, and how the first crop's embeddings use the prototypes."""
        values = super().monitors(out)
        if values:
            z = out["embeddings"][:len(out["embeddings"]) // self.num_crops]
            values.update(prototype_monitors(z, self.prototypes, self.args.temperature))
        return values

    def lr_scales(self):
        return {p: self.args.prototypes_lr_scale for p in self.prototypes.parameters()}

    def after_backward(self, step):
        if step < self.args.freeze_prototypes_niters:
            for p in self.prototypes.parameters():
                p.grad = None  # the optimiser skips them: no update, no weight decay, no momentum

    @torch.no_grad()
    def after_step(self, step, out):
        if not self.queue_on:
            return
        z = out["embeddings"]
        n = len(z) // self.num_crops
        self.queue[:, n:] = self.queue[:, :-n].clone()  # newest first
        self.queue[:, :n] = torch.stack([z[a * n:(a + 1) * n] for a in self.args.crops_for_assign])
        self.queue_filled = min(self.queue.shape[1], self.queue_filled + n)

    def rank_state(self):
        return dict(queue=self.queue.cpu(), queue_filled=self.queue_filled)

    def load_rank_state(self, state):
        if state["queue"].shape == self.queue.shape:
            self.queue.copy_(state["queue"])
            self.queue_filled = state["queue_filled"]
