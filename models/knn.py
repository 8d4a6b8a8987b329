"""Frozen-feature extraction and the weighted kNN classifier, each rank holding only its share of the features.

Under W processes rank r holds rows r, r+W, r+2W, ... of the training features (the kNN's memory) and of the test
features: about N·D/W floats each, never all of them. The test features reach every rank a round of queries at a
time; each rank finds the k nearest of its own training rows for every query, and the query's owner merges the W
candidate lists into the global top k. Ties are broken by the lower training index (and equal votes by the lower
class), so W processes give what one process gives: the same neighbours, the same votes added in the same order.
(The cosines themselves are dot products of float32 rows, which a BLAS may round differently for other matrix
shapes: in exact arithmetic, as the tests use, W processes give one process's result bit for bit.)
"""
import contextlib

import torch
import torch.nn.functional as F

from data.augment import eval_view
from data.loader import eval_batches
from utils import dist


@contextlib.contextmanager
def eval_mode(module):
    """`module` in eval mode (BatchNorm uses its running statistics) inside the block, its former mode after."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def shard(n):
    """The indices of this rank's share of n rows: r, r+W, r+2W, ..."""
    return torch.arange(dist.rank(), n, dist.world_size())


@torch.no_grad()
def extract_features(backbone, data, device, batch_size=512, workers=0, autocast=contextlib.nullcontext):
    """(features, labels) of this rank's share of the images of `data` (`shard`), in order, un-augmented, the
    backbone in eval mode: float32 features on `device`."""
    mine = shard(len(data))
    feats = torch.empty(len(mine), backbone.feat_dim, device=device)  # filled in place: no second copy at the end
    labels = torch.empty(len(mine), dtype=torch.long, device=device)
    done = 0
    with eval_mode(backbone):
        for x, y in eval_batches(data, batch_size, device, workers, indices=mine):
            with autocast():
                feats[done:done + len(x)] = backbone(eval_view(x, data.mean, data.std)).float()
            labels[done:done + len(x)] = y
            done += len(x)
    return feats, labels


def top_k(sims, k):
    """(values, columns) of the k largest entries of each row of `sims`; of equal values, the lower columns. No
    temporary the size of `sims`: a tie straddles the k-th place only where the (k+1)-th value equals the k-th."""
    if k >= sims.shape[1]:
        return sims.topk(k, dim=1)
    values, columns = sims.topk(k + 1, dim=1)
    tied = (values[:, k - 1] == values[:, k]).nonzero()[:, 0]
    values, columns = values[:, :k], columns[:, :k]
    step = max(1, len(sims) // 32)  # rows at a time: their int64 running counts stay a quarter of `sims`
    for lo in range(0, len(tied), step):
        rows = tied[lo:lo + step]
        s, t = sims[rows], values[rows, k - 1:]
        equal = s == t
        need = k - (s > t).sum(1, keepdim=True)
        keep = (s > t) | (equal & (equal.cumsum(1) <= need))
        cols = keep.nonzero()[:, 1].view(len(rows), k)
        columns[rows], values[rows] = cols, s.gather(1, cols)
    return values, columns


def merge(values, index, labels, k):
    """The k best (value, index, label) of each row's candidates: the larger value first, then the lower index."""
    order = index.sort(dim=1, stable=True).indices
    values, index, labels = values.gather(1, order), index.gather(1, order), labels.gather(1, order)
    order = values.sort(dim=1, descending=True, stable=True).indices[:, :k]
    return values.gather(1, order), labels.gather(1, order)


def normalize_(x, eps=1e-12):
    """F.normalize(x, dim=1) in place, bit for bit: no second copy of a rank's features."""
    return x.div_(x.norm(dim=1, keepdim=True).clamp_min_(eps))


def nearest_of_mine(queries, train_feats, train_labels, index, n_train, kk):
    """(values, global rows, labels), each (queries, kk): the kk training rows of this rank most similar to each
    query, padded (-inf, row n_train) where the rank holds fewer. A function of its own, so that the round's
    similarities are freed before the next round's are made."""
    device = train_feats.device
    values = torch.full((len(queries), kk), -float("inf"), device=device)
    rows = torch.full((len(queries), kk), n_train, dtype=torch.long, device=device)  # padding: never chosen
    labels = torch.zeros_like(rows)
    if len(train_feats):
        v, c = top_k(queries @ train_feats.T, min(kk, len(train_feats)))
        values[:, :c.shape[1]], rows[:, :c.shape[1]], labels[:, :c.shape[1]] = v, index[c], train_labels[c]
    return values, rows, labels


@torch.no_grad()
def knn_accuracy(train_feats, train_labels, test_feats, test_labels, num_classes, k=200, t=0.07, queries=1024,
                 block=2 ** 22, in_place=False):
    """Top-1 and top-5 accuracy (%) of the test images: their k most cosine-similar training images vote with
    weight exp(sim / t). Each rank passes its share (`shard`) of the training and of the test features; a round
    scores up to `queries` test rows, from every rank, against every rank's training rows, fewer where a round's
    similarities would pass `block` floats on a rank (16 MB: a constant, whatever N). `in_place`: the training
    features are normalised where they are (the caller's features are then changed; no copy of them is made)."""
    w, device = dist.world_size(), train_feats.device
    train_feats = normalize_(train_feats) if in_place else F.normalize(train_feats, dim=1)
    local = torch.tensor([len(train_feats), len(test_feats)], device=device)
    n_train, n_test = dist.all_reduce_sum(local).tolist()
    most_train, most_test = dist.all_reduce_max(local).tolist()
    k = min(k, n_train)
    kk = min(k, most_train)  # the candidates each rank sends per query, padded where it holds fewer rows
    per_rank = max(1, min(queries, block // max(1, most_train)) // w)
    index = torch.arange(len(train_feats), device=device) * w + dist.rank()  # the global row numbers
    correct = torch.zeros(2, dtype=torch.long, device=device)
    for lo in range(0, most_test, per_rank):  # every rank takes part in every round
        q = F.normalize(test_feats[lo:lo + per_rank], dim=1)
        padded = torch.zeros(per_rank, test_feats.shape[1], device=device)
        padded[:len(q)] = q
        candidates = nearest_of_mine(dist.all_gather_cat(padded), train_feats, train_labels, index, n_train, kk)
        # the candidates for each query go to the rank that owns it: (per_rank, W * kk) there
        values, rows, labels = (dist.all_to_all_rows(x).transpose(0, 1).flatten(1) for x in candidates)
        sim, nn_labels = merge(values, rows, labels, k)
        votes = torch.zeros(len(sim), num_classes, device=device)
        votes.scatter_add_(1, nn_labels, torch.exp(sim / t))
        top = votes[:len(q)].sort(dim=1, descending=True, stable=True).indices[:, :5]  # equal votes: the lower class
        y = test_labels[lo:lo + per_rank, None]
        correct[0] += (top[:, :1] == y).sum()
        correct[1] += (top == y).any(dim=1).sum()
    correct1, correct5 = dist.all_reduce_sum(correct).tolist()
    return 100.0 * correct1 / max(1, n_test), 100.0 * correct5 / max(1, n_test)


@torch.no_grad()
def bank_knn(head, memory_bank, bank_labels, test, num_classes, k, t, autocast):
    """NPID's native kNN: the head's embeddings of the test features `test` = (features, labels), this rank's share,
    against the memory bank (every rank holds all of it and votes with its share of the rows)."""
    with eval_mode(head), autocast():
        v = head(test[0])
    mine = slice(dist.rank(), None, dist.world_size())  # this rank's share, a view: no copy of the bank
    k1, k5 = knn_accuracy(memory_bank[mine], bank_labels[mine], v.float(), test[1], num_classes, k, t)
    return dict(bank_knn_acc1=k1, bank_knn_acc5=k5)
