"""What a pretraining run watches for collapse, on tensors its steps already hold: the effective rank of features
and embeddings, prototype usage, an online linear probe, and the one-time warning when they show collapse."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import dist

STRETCH = 50  # steps a collapse sign must hold before the warning: a passing dip says nothing


@torch.no_grad()
def effective_rank(x):
    """RankMe (Garrido et al. 2023): exp of the entropy of the singular values of `x` (rows: samples) normalised to
    sum 1. About k for a matrix of rank k with equal singular values; 1 when every row is the same vector."""
    s = torch.linalg.svdvals(x.float())
    p = s / s.sum().clamp_min(1e-12) + 1e-7
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def span_share(z, weight):
    """The share of the energy of rows `z` that lies in the span of the rows of `weight`: 1 when the prototypes
    span the embedding space; near 0 once the embeddings have moved where no prototype points."""
    _, s, vh = torch.linalg.svd(weight.float(), full_matrices=False)
    basis = vh[s > s[0] * max(weight.shape) * torch.finfo(torch.float32).eps]
    z = z.float()
    return float((z @ basis.T).pow(2).sum() / z.pow(2).sum().clamp_min(1e-12))


@torch.no_grad()
def prototype_usage(z, weight, temperature):
    """(share of the prototypes that at least one row of `z` is nearest to, entropy of the batch's mean predicted
    code softmax(z . p / T) as a fraction of ln K): 1/K and 0 when every image goes to one prototype."""
    scores = z.float() @ weight.float().T
    k = weight.shape[0]
    used = torch.unique(scores.argmax(1)).numel() / k
    mean_code = F.softmax(scores / temperature, dim=1).mean(0)
    entropy = float(-(mean_code * mean_code.clamp_min(1e-12).log()).sum())
    return used, entropy / math.log(k) if k > 1 else 0.0


def prototype_monitors(z, layers, temperature):
    """proto_used, code_entropy and proto_span (above), averaged over the prototype heads."""
    rows = [(*prototype_usage(z, layer.weight, temperature), span_share(z, layer.weight)) for layer in layers]
    return {name: sum(r[i] for r in rows) / len(rows) for i, name in enumerate(("proto_used", "code_entropy",
                                                                             "proto_span"))}


class OnlineProbe:
    """A linear classifier on the detached backbone features of each training batch, trained by its own SGD beside
    pretraining (solo-learn's online linear evaluation). Features are standardised with the batch's own statistics
    (no running state), the layer starts at zero and no random number is drawn: the encoder's steps are exactly
    those of a run without it. Its accuracy on each batch is taken before it learns from that batch.
    Under DDP its gradients are averaged over the ranks, so every rank holds the same probe."""

    def __init__(self, feat_dim, num_classes, lr, device):
        self.layer = nn.Linear(feat_dim, num_classes).to(device)
        nn.init.zeros_(self.layer.weight)
        nn.init.zeros_(self.layer.bias)
        self.optimizer = torch.optim.SGD(self.layer.parameters(), lr=lr, momentum=0.9)
        self.correct = torch.zeros((), device=device)
        self.seen = torch.zeros((), device=device)

    def step(self, features, labels, large=1):
        """One SGD step on the `features` of a training step's crops (crop-major, (crops x n, feat_dim)) with the
        images' `labels` (n,): the first `large` crops (the large ones) of each image, rows of unknown label (-1) left
        out."""
        labels = labels.repeat(large)
        features = features[:len(labels)]
        keep = labels >= 0
        x = F.batch_norm(features.detach().float()[keep], None, None, training=True)
        y = labels[keep]
        with torch.enable_grad():
            logits = self.layer(x)
            loss = F.cross_entropy(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if dist.world_size() > 1:
            grads = [p.grad for p in self.layer.parameters()]
            flat = dist.all_reduce_mean(torch.cat([g.flatten() for g in grads]))
            for g, part in zip(grads, flat.split([g.numel() for g in grads])):
                g.copy_(part.view_as(g))
        self.optimizer.step()
        self.correct += (logits.detach().argmax(1) == y).sum()
        self.seen += len(y)

    def accuracy(self):
        """Training accuracy (%) over every rank's batches since the last call; then a new interval."""
        counts = dist.all_reduce_sum(torch.stack([self.correct, self.seen]))
        self.correct.zero_()
        self.seen.zero_()
        return float(100 * counts[0] / counts[1]) if counts[1] > 0 else float("nan")

    def state_dict(self):
        return dict(layer=self.layer.state_dict(), optimizer=self.optimizer.state_dict())

    def load_state_dict(self, state):
        self.layer.load_state_dict(state["layer"])
        self.optimizer.load_state_dict(state["optimizer"])


class CollapseWatch:
    """Reads each logs.csv row of a pretraining run; the first time a sign of collapse has held for STRETCH steps,
    returns the one line that says so and what usually helps (and never again in this process)."""

    def __init__(self, problem, embedding_dim, uniform_loss=None):
        self.problem, self.embedding_dim, self.uniform_loss = problem, embedding_dim, uniform_loss
        self.since = {}  # sign -> the step its stretch began
        self.last_step, self.warned = 0, False

    def signs(self, row):
        """{sign: (held, what the line says of it)} for the monitors in `row`."""
        found = {}
        if self.uniform_loss is not None and "loss_minus_lnk" in row:
            found["uniform"] = (abs(row["loss_minus_lnk"]) < 0.01,
                                f"the loss has stayed within 0.01 of ln K = {self.uniform_loss:.3f}: every prediction "
                                f"is uniform and the gradient vanishes")
        if "proto_span" in row:
            found["span"] = (row["proto_span"] < 0.05,
                             f"{100 * row['proto_span']:.2f}% of the embeddings' energy lies in the prototypes' span: "
                             f"they have moved where no prototype points")
        if "proto_used" in row:
            found["one_prototype"] = (row.get("code_entropy", 1.0) < 0.05,
                                      "the batch's predicted codes sit on one prototype or a few")
        if "rankme_head" in row:
            floor = 1.5  # healthy runs of the Fashion-MNIST configs stay above 3.3 (docs/results.md)
            found["rank"] = (row["rankme_head"] < floor,
                             f"the embeddings' effective rank is {row['rankme_head']:.2f} of {self.embedding_dim} "
                             f"dimensions: they are collapsing to a point or a line")
        return found

    def hint(self, sign):
        if sign in ("uniform", "span"):
            return ("more prototypes than embedding dimensions (--num_prototypes, --num_clusters), a smaller "
                    "--epsilon or a later --epoch_queue_starts usually helps")
        return "a lower --lr, a longer --warmup or a higher --temperature usually helps"

    def check(self, step, row):
        """The warning line for the row of step `step`, or None."""
        line = None
        for sign, (held, what) in self.signs(row).items():
            if not held:
                self.since.pop(sign, None)
                continue
            start = self.since.setdefault(sign, self.last_step)
            if step - start >= STRETCH and not self.warned and line is None:
                line = (f"warning: {self.problem} may be collapsing at step {step}: {what} (for {step - start} steps); "
                        f"{self.hint(sign)}. It may still recover; the kNN accuracy will tell.")
        self.last_step = step
        if line:
            self.warned = True
        return line


def trivial_solution_warning(flag, counts, embedding_dim):
    """The start-up line for fewer prototypes (in any head) than embedding dimensions, else nothing."""
    few = min(counts)
    if few >= embedding_dim:
        return []
    return [f"warning: {flag} {few} on a {embedding_dim}-dimensional embedding leaves {embedding_dim - few} "
            f"directions that no prototype points along; embeddings there score 0 against every prototype, where the "
            f"loss is ln K and its gradient vanishes, a trivial solution runs can fall into and stay in (watch "
            f"proto_span and loss_minus_lnk in logs.csv); {flag} {embedding_dim} or more rules it out"]
