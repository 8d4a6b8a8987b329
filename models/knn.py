"""Frozen-feature extraction and the weighted kNN classifier (on backbone features, or against NPID's memory bank)."""
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


@torch.no_grad()
def extract_features(backbone, data, device, batch_size=512, workers=0, autocast=contextlib.nullcontext):
    """(features, labels) of every image of `data`, in order, un-augmented, backbone in eval mode.

    Distributed, rank r embeds images r, r+W, ... and every rank gets all the features.
    """
    feats, labels = [], []
    mine = torch.arange(dist.rank(), len(data), dist.world_size())
    with eval_mode(backbone):
        for x, y in eval_batches(data, batch_size, device, workers, indices=mine):
            with autocast():
                feats.append(backbone(eval_view(x, data.mean, data.std)).float())
            labels.append(y)
    return dist.gather_strided(torch.cat(feats), len(data)), dist.gather_strided(torch.cat(labels), len(data))


@torch.no_grad()
def knn_accuracy(train_feats, train_labels, test_feats, test_labels, num_classes, k=200, t=0.07, chunk=256):
    """Top-1 and top-5 accuracy (percent): the k most cosine-similar training samples vote with weight exp(sim/t)."""
    train_feats = F.normalize(train_feats, dim=1)
    test_feats = F.normalize(test_feats, dim=1)
    k = min(k, len(train_feats))
    correct1 = correct5 = 0
    for lo in range(0, len(test_feats), chunk):
        sim, nn_idx = (test_feats[lo:lo + chunk] @ train_feats.T).topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes, device=sim.device)
        votes.scatter_add_(1, train_labels[nn_idx], torch.exp(sim / t))
        top = votes.topk(min(5, num_classes), dim=1).indices
        y = test_labels[lo:lo + chunk, None]
        correct1 += (top[:, :1] == y).sum().item()
        correct5 += (top == y).any(dim=1).sum().item()
    return 100.0 * correct1 / len(test_feats), 100.0 * correct5 / len(test_feats)


@torch.no_grad()
def bank_knn(head, memory_bank, bank_labels, test, num_classes, k, t, autocast):
    """NPID's native kNN: the head's embeddings of the test features `test` = (features, labels) against the bank."""
    with eval_mode(head), autocast():
        v = head(test[0])
    k1, k5 = knn_accuracy(memory_bank, bank_labels, v.float(), test[1], num_classes, k, t)
    return dict(bank_knn_acc1=k1, bank_knn_acc5=k5)
