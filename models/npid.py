"""NPID / NPID++: backbone -> Linear -> normalize; each image against its memory-bank row and K random rows."""
import torch
import torch.nn.functional as F

from models.base import Pretrain
from models.knn import bank_knn
from models.memory import init_memory_bank, memory_scores, momentum_update, sample_negatives
from utils import config, dist, seeds
from utils.errors import UserError


def nce_loss(scores, z_const, num_data, eps=1e-7):
    """NPID's noise-contrastive estimation; scores (B, K+1) = memory rows . v / T, the positive in column 0.

    P = exp(scores) / Z and the noise probability of K negatives is K * Pn, Pn = 1 / num_data:
    loss = -(1/B) [sum_b log(P_b0 / (P_b0 + K Pn + eps)) + sum_b sum_{k>=1} log(K Pn / (P_bk + K Pn + eps))],
    computed from log P = scores - log Z with log-add-exp.
    """
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
    num_negatives = scores.shape[1] - 1
    log_p = scores - torch.log(torch.as_tensor(z_const, dtype=scores.dtype, device=scores.device))
    noise = torch.tensor(num_negatives / num_data + eps, dtype=scores.dtype, device=scores.device)
    log_denominator = torch.logaddexp(log_p, torch.log(noise))  # log(P + K Pn + eps)
    log_k_pn = torch.log(noise - eps)
    positive = (log_p[:, 0] - log_denominator[:, 0]).sum()
    negatives = (log_k_pn - log_denominator[:, 1:]).sum()
    return -(positive + negatives) / scores.shape[0]


class NPID(Pretrain):
    @staticmethod
    def add_args(p):
        Pretrain.add_args(p)
        g = p.add_argument_group("NPID")
        g.add_argument("--temperature", type=config.POSITIVE, default=0.07, help="temperature of the memory scores")
        g.add_argument("--num_negatives", type=config.INT1, default=4096,
                       help="memory rows drawn per image, with replacement")
        g.add_argument("--memory_momentum", type=config.Range(float, ge=0, lt=1), default=0.5,
                       help="memory update M[y] <- normalize(m M[y] + (1 - m) v) (VISSL's memory_params.momentum)")
        g.add_argument("--loss_type", default="nce", choices=["nce", "cross_entropy"],
                       help="nce: NCE with a normalisation constant Z fixed on the first batch; cross_entropy: InfoNCE")
        g.add_argument("--nce_z_momentum", type=config.Range(float, ge=0, le=1), default=1.0,
                       help="NCE's Z after the first batch: Z <- m Z + (1 - m) N mean(exp(scores)) every step; "
                            "1: fixed at the first batch's estimate, as the released NPID code")
        g.add_argument("--memory_init", default="random", choices=["random", "network"],
                       help="the bank before training: random unit rows (NPID's own), or one pass of the initial "
                            "network over the augmented training images")
        config.compat_group(p).add_argument(
            "--memory_init_mean_of", type=config.INT1, default=1,
            help="with --memory_init random: the bank starts as the mean of this many random banks of unit rows, not "
                 "normalized again (VISSL draws one on each GPU and averages them: rows of norm about 1/sqrt(GPUs), "
                 "and NCE's Z estimated from them)")
        g.add_argument("--nce_eps", type=config.NONNEGATIVE, default=1e-7, help="eps in the NCE denominators")
        p.set_defaults(head_hidden_dims=[], num_crops=[1], min_scale_crops=[0.2], color_jitter=[0.4, 0.4, 0.4, 0.4])

    def __init__(self, args, train, device):
        super().__init__(args, train, device)
        if self.num_crops != 1:
            raise UserError(f"NPID takes one crop per image, not --num_crops {args.num_crops}")
        if args.memory_init == "network" and args.memory_init_mean_of > 1:
            raise UserError("--memory_init_mean_of averages random banks: it has no meaning with --memory_init network")
        self.negatives = self.generator("negatives")
        # the same bank on every rank: one generator seeded alike everywhere
        self.memory_bank = init_memory_bank(len(train), args.embedding_dim,
                                            seeds.generator(args.seed, "memory_bank", device=device),
                                            args.memory_init_mean_of)
        self.z_const = torch.tensor(-1.0, device=device)  # NCE's Z; negative until the first batch estimates it
        self.z_known = False
        self.memory_filled = args.memory_init == "random"
        self.bank_labels = train.labels if (train.labels >= 0).all() else None  # a bank of unlabelled images: no kNN
        self.num_classes = train.num_classes

    @staticmethod
    def state_bytes(args, images, procs):
        return [(f"NPID's memory bank, {images} x {args.embedding_dim} float32 on every rank",
                 4 * images * args.embedding_dim, "--embedding_dim")]

    def get_extra_state(self):  # in state_dict, so in the checkpoint; not a buffer, so DDP never broadcasts it
        return dict(memory_bank=self.memory_bank, z_const=float(self.z_const), memory_filled=self.memory_filled)

    def set_extra_state(self, state):
        if state["memory_bank"].shape != self.memory_bank.shape:
            raise UserError(f"the checkpoint's memory bank has {len(state['memory_bank'])} rows, "
                            f"the training set {len(self.memory_bank)} images")
        self.memory_bank.copy_(state["memory_bank"])
        self.z_const = torch.tensor(float(state["z_const"]), device=self.device)
        self.z_known = bool(self.z_const > 0)
        self.memory_filled = state["memory_filled"]

    @torch.no_grad()
    def on_epoch_start(self, epoch, batches):
        """With --memory_init network: before the first step, every bank row is the initial network's embedding."""
        if self.memory_filled:
            return
        for crops, idx in self.bank_pass(batches, epoch):
            momentum_update(self.memory_bank, dist.gather(idx), dist.gather(self.embed(crops)), 0.0)
        self.memory_filled = True

    def forward(self, batch, step):
        x, _, idx = batch
        h, v = self.encode(self.augment(x))
        size = len(self.memory_bank)
        rows = torch.cat([idx[:, None], sample_negatives(len(idx), self.args.num_negatives, size, self.negatives)], 1)
        scores = memory_scores(self.memory_bank, v, rows) / self.args.temperature
        if self.args.loss_type == "nce":
            momentum = self.args.nce_z_momentum
            if not self.z_known or momentum < 1:  # Z ~ N E[exp(m . v / T)], estimated on this batch
                estimate = dist.all_reduce_mean(scores.detach().exp().mean() * size)
                self.z_const = estimate if not self.z_known else momentum * self.z_const + (1 - momentum) * estimate
                self.z_known = True
            loss = nce_loss(scores, self.z_const, size, self.args.nce_eps)
        else:
            loss = F.cross_entropy(scores, torch.zeros_like(idx))
        # mean cosine similarity to the image's own bank row and to the negatives' rows: what the loss pulls and pushes
        cosines = scores.detach().float() * self.args.temperature
        logs = dict(pos_sim=cosines[:, 0].mean(), neg_sim=cosines[:, 1:].mean())
        if self.args.loss_type == "nce":
            logs["z_const"] = self.z_const
        return loss, logs, dict(embeddings=v.detach(), features=h.detach(), index=idx, scores=scores.detach())

    @torch.no_grad()
    def after_step(self, step, out):
        # every rank's rows: the banks stay identical
        momentum_update(self.memory_bank, dist.gather(out["index"]), dist.gather(out["embeddings"]),
                        self.args.memory_momentum)

    def evaluate(self, test):
        """NPID's own kNN: the head's embeddings of the test features against the memory bank."""
        if self.bank_labels is None:
            return {}
        return bank_knn(self.head, self.memory_bank, self.bank_labels, test, self.num_classes, self.args.knn_k,
                        self.args.knn_t, self.autocast)
