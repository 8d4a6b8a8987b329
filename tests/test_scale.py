"""At the scale the repo exists for, no rank holds what every rank holds: the kNN's features are sharded and merged
exactly, a checkpoint's per-rank state reaches rank 0 alone."""
import os

import pytest
import torch
import torch.distributed
import torch.multiprocessing as mp

from models.base import Method
from models.knn import knn_accuracy, merge, top_k
from utils import checkpoint, dist

CLASSES, K, T = 4, 7, 0.5


def tied_features(n, seed):
    """n rows of 8 dims, each with four entries of +-1: normalised, every entry is +-0.5 and every cosine a multiple of
    0.25, exact in float32 whatever the order of a sum, and many of them equal."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 8)
    for i in range(n):
        cols = torch.randperm(8, generator=gen)[:4]
        x[i, cols] = torch.randint(0, 2, (4,), generator=gen).float() * 2 - 1
    labels = torch.randint(0, CLASSES, (n,), generator=gen)
    return x, labels


def reference(train, train_labels, test, test_labels, k, t):
    """The kNN written out by hand: per test row, the training rows by decreasing cosine, ties by lower index; their
    votes added up in that order (float32, as the repo adds them); the classes by decreasing vote, ties by lower
    class."""
    sims = (test / 2) @ (train / 2).T  # exact: multiples of 0.25
    correct1 = correct5 = 0
    for i in range(len(test)):
        order = sorted(range(len(train)), key=lambda j: (-sims[i, j].item(), j))[:k]
        votes = torch.zeros(CLASSES)
        for j in order:
            votes[train_labels[j]] += torch.exp(sims[i, j] / t)
        ranked = sorted(range(CLASSES), key=lambda c: (-votes[c].item(), c))
        correct1 += ranked[0] == test_labels[i].item()
        correct5 += test_labels[i].item() in ranked[:5]
    return 100.0 * correct1 / len(test), 100.0 * correct5 / len(test)


def test_top_k_takes_the_lower_columns_of_equal_values():
    sims = torch.tensor([[0.5, 1.0, 0.5, 0.5, 0.25], [0.0, 0.0, 0.0, 0.0, 0.0]])
    values, cols = top_k(sims, 3)
    assert sorted(cols[0].tolist()) == [0, 1, 2] and sorted(cols[1].tolist()) == [0, 1, 2]
    assert torch.equal(values.sort(dim=1, descending=True).values, torch.tensor([[1.0, 0.5, 0.5], [0.0, 0.0, 0.0]]))


def test_merge_orders_candidates_by_value_then_index():
    values = torch.tensor([[0.5, 0.75, 0.5, -float("inf")]])
    index, labels = torch.tensor([[9, 4, 2, 100]]), torch.tensor([[1, 2, 3, 0]])
    best, best_labels = merge(values, index, labels, 3)
    assert best.tolist() == [[0.75, 0.5, 0.5]] and best_labels.tolist() == [[2, 3, 1]]


def test_one_process_knn_is_the_hand_written_one_with_its_tie_rule():
    train, train_labels = tied_features(23, 0)
    test, test_labels = tied_features(17, 1)
    got = knn_accuracy(train, train_labels, test, test_labels, CLASSES, K, T, queries=5)
    assert got == pytest.approx(reference(train, train_labels, test, test_labels, K, T), abs=1e-9)
    assert knn_accuracy(train, train_labels, test, test_labels, CLASSES, 100, T) == pytest.approx(
        reference(train, train_labels, test, test_labels, 23, T), abs=1e-9)  # k beyond the rows: all of them


class _Ranked(Method):
    """A method whose per-rank state is large and says whose it is."""

    def __init__(self):
        super().__init__(argparse_namespace(seed=0), torch.device("cpu"))
        self.backbone, self.backbone_spec = torch.nn.Linear(2, 2), {}

    def rank_state(self):
        return dict(owner=dist.rank(), rows=torch.full((1000,), float(dist.rank())))


def argparse_namespace(**kw):
    import argparse
    return argparse.Namespace(**kw)


def _worker(rank, world, init, out):
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    train, train_labels = tied_features(23, 0)
    test, test_labels = tied_features(17, 1)
    mine = slice(rank, None, world)  # rank r holds rows r, r+W, ...: uneven shards of 23 and 17 rows
    results = dict(knn=knn_accuracy(train[mine], train_labels[mine], test[mine], test_labels[mine], CLASSES, K, T,
                                     queries=6))
    received, real = [], torch.distributed.gather_object

    def gather_object(obj, object_gather_list=None, dst=0, group=None):
        real(obj, object_gather_list, dst, group)
        received.append(object_gather_list)

    def refused(*_, **__):
        raise AssertionError("a save sent one rank's state to every rank")
    torch.distributed.gather_object, torch.distributed.all_gather_object = gather_object, refused
    torch.distributed.broadcast_object_list = refused
    model = _Ranked()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    checkpoint.save(out, 1, 2, 0, argparse_namespace(problem="x"), model, optimizer, scaler)
    results["received"] = [None if r is None else [s[1]["owner"] for s in r] for r in received]
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    torch.distributed.barrier()
    dist.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_sharded_knn_equals_one_process_and_a_save_sends_each_ranks_state_to_rank_0_alone(tmp_path, world):
    mp.spawn(_worker, args=(world, f"file://{tmp_path}/init", str(tmp_path)), nprocs=world)
    train, train_labels = tied_features(23, 0)
    test, test_labels = tied_features(17, 1)
    one = knn_accuracy(train, train_labels, test, test_labels, CLASSES, K, T)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    assert all(r["knn"] == one for r in ranks)
    assert ranks[0]["received"] == [list(range(world))]  # rank 0 got every rank's state ...
    assert all(r["received"] == [None] for r in ranks[1:])  # ... and no other rank got any
    saved = torch.load(tmp_path / checkpoint.CHECKPOINT, weights_only=True)
    assert [s["owner"] for s in saved["rank_state"]] == list(range(world))
