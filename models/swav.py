"""SwAV: backbone -> MLP head -> normalize -> bias-free prototype layers; swapped prediction of Sinkhorn codes."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.backbones import multicrop_forward
from models.base import NonFinite, Pretrain
from models.heads import MLP, head_dims
from models.losses import sinkhorn, swav_loss
from utils import config, dist


class SwAV(Pretrain):
    @staticmethod
    def add_args(p):
        Pretrain.add_args(p)
        g = p.add_argument_group("SwAV")
        g.add_argument("--temperature", type=float, default=0.1, help="softmax temperature of the swapped prediction")
        g.add_argument("--epsilon", type=float, default=0.05, help="Sinkhorn entropy regularisation")
        g.add_argument("--sinkhorn_iterations", type=int, default=3, help="Sinkhorn normalisation rounds")
        g.add_argument("--num_prototypes", type=int, nargs="+", default=[3000], help="prototypes of each head")
        g.add_argument("--crops_for_assign", type=int, nargs="+", default=[0, 1], help="crops whose codes are predicted")
        g.add_argument("--queue_length", type=int, default=0, help="embeddings queued over all ranks (0: no queue)")
        g.add_argument("--epoch_queue_starts", type=int, default=15, help="epoch at which the queue starts filling")
        g.add_argument("--freeze_prototypes_niters", type=int, default=313, help="steps during which prototypes stay fixed")
        g.add_argument("--temp_hard_assignment_iters", type=int, default=0, help="steps that use one-hot codes")
        g.add_argument("--use_double_precision", type=config.str2bool, default=False, help="Sinkhorn and loss in float64")
        p.set_defaults(head_hidden_dims=[2048])

    def __init__(self, args, data, device):
        super().__init__(args, data, device)
        if any(not 0 <= a < sum(args.num_crops) for a in args.crops_for_assign):
            raise config.UserError(f"--crops_for_assign {args.crops_for_assign} names crops beyond the {sum(args.num_crops)} there are")
        self.head = MLP(head_dims(args, self.backbone.feat_dim), args.head_use_bn, args.head_use_relu)
        self.prototypes = nn.ModuleList(nn.Linear(args.embedding_dim, k, bias=False) for k in args.num_prototypes)
        self.num_crops = sum(args.num_crops)
        # per-rank queue: queue_length rounded down to a multiple of the global batch, split over the ranks
        per_rank = (args.queue_length - args.queue_length % args.batch_size) // dist.world_size()
        self.queue = torch.zeros(len(args.crops_for_assign), per_rank, args.embedding_dim, device=device)
        self.queue_filled = 0  # rows written; the queue joins Sinkhorn once they reach its length
        self.queue_on = False

    def on_epoch_start(self, epoch, batches):
        self.queue_on = self.queue.shape[1] > 0 and epoch >= self.args.epoch_queue_starts

    @torch.no_grad()
    def normalize_prototypes(self):
        for layer in self.prototypes:
            layer.weight.copy_(F.normalize(layer.weight, dim=1))

    def forward(self, batch):
        x, _, _ = batch
        self.normalize_prototypes()
        crops = self.augment(x)
        with self.autocast():
            z = self.head(multicrop_forward(self.backbone, crops))
        z = F.normalize(z.float(), dim=1)
        dtype = torch.float64 if self.args.use_double_precision else torch.float32
        n = z.shape[0] // self.num_crops
        use_queue = self.queue_on and self.queue_filled >= self.queue.shape[1]
        losses, all_scores = [], []
        for layer in self.prototypes:
            scores = layer(z).to(dtype)
            with torch.no_grad():
                queue_scores = [layer(q).to(dtype) for q in self.queue] if use_queue else None
            losses.append(swav_loss(scores, self.num_crops, self.args.crops_for_assign, self.args.temperature,
                                    self.args.epsilon, self.args.sinkhorn_iterations, queue_scores,
                                    hard=self.step < self.args.temp_hard_assignment_iters))
            all_scores.append(scores.detach())
        loss = torch.stack(losses).mean()
        if not torch.isfinite(loss):
            codes = [[sinkhorn(s[a * n:(a + 1) * n], self.args.epsilon, self.args.sinkhorn_iterations)
                      for a in self.args.crops_for_assign] for s in all_scores]
            raise NonFinite(f"SwAV loss is {loss.item()} at step {self.step}",
                            dict(scores=all_scores, embeddings=z.detach(), codes=codes))
        self._assigned = [z[a * n:(a + 1) * n].detach() for a in self.args.crops_for_assign]
        return loss.float(), dict(queue_used=float(use_queue))

    def after_backward(self):
        if self.step < self.args.freeze_prototypes_niters:
            for p in self.prototypes.parameters():
                p.grad = None  # the optimiser skips them: no update, no weight decay, no momentum

    @torch.no_grad()
    def after_step(self, batch, logs):
        if not self.queue_on:
            return
        n = self._assigned[0].shape[0]
        self.queue[:, n:] = self.queue[:, :-n].clone()  # newest first
        self.queue[:, :n] = torch.stack(self._assigned)
        self.queue_filled = min(self.queue.shape[1], self.queue_filled + n)

    def rank_state(self):
        return dict(queue=self.queue.cpu(), queue_filled=self.queue_filled)

    def load_rank_state(self, state):
        if state["queue"].shape == self.queue.shape:
            self.queue.copy_(state["queue"])
            self.queue_filled = state["queue_filled"]
