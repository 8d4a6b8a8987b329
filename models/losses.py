"""The methods' losses as pure functions of tensors. Batches are crop-major: row c*n + i is crop c of image i."""
import torch
import torch.nn.functional as F

from utils import dist


def info_nce_loss(z, num_crops, temperature):
    """SimCLR's InfoNCE over every pair of crops of an image, with global negatives.

    For anchor crop a of image i and each other crop b of it, one term
    -log(exp(s_ab / T) / (exp(s_ab / T) + sum over all crops k of all other images of exp(s_ak / T))),
    s = cosine similarity; the other crops of image i appear in neither sum. Columns come from every
    rank (`dist.gather`); the loss is the mean over this rank's C*n*(C-1) terms.
    With C = 2 it is NT-Xent over 2N views.
    """
    z = F.normalize(z.to(torch.promote_types(z.dtype, torch.float32)), dim=1)  # fp16/bf16 -> fp32
    n = z.shape[0] // num_crops
    logits = z @ dist.gather(z).T / temperature  # (C*n, W*C*n)
    rows = torch.arange(num_crops * n, device=z.device)
    crop, image = rows // n, rows % n
    offset = dist.rank() * num_crops * n
    same_image = offset + torch.arange(num_crops, device=z.device)[None] * n + image[:, None]  # (C*n, C)
    mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, same_image, True)
    negatives = logits.masked_fill(mask, float("-inf")).logsumexp(dim=1, keepdim=True)
    positives = logits.gather(1, same_image)
    terms = torch.logaddexp(positives, negatives) - positives
    other = torch.arange(num_crops, device=z.device)[None] != crop[:, None]
    return terms[other].mean()


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
