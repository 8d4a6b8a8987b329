"""At the scale the repo exists for, no rank holds what every rank holds: the kNN's features are sharded and merged
exactly, a checkpoint's per-rank state reaches rank 0 alone."""
import os

import pytest
import torch
import torch.distributed
import torch.multiprocessing as mp

from data.datasets import PathIndex, load_dataset, walk
from models.base import Method
from models.knn import knn_accuracy, merge, top_k
from utils import checkpoint, dist
from utils.errors import UserError

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


def test_a_path_index_gives_back_every_path_as_the_os_gave_it():
    names = ["/data/train/a/1.JPEG", "/data/train/b/caf\xe9.jpg", os.fsdecode(b"/data/train/b/latin-\xe9.jpg"), ""]
    index = PathIndex.of(names)
    assert len(index) == 4 and list(index) == names and index[2] == names[2]
    assert os.fsencode(index[2]) == b"/data/train/b/latin-\xe9.jpg"  # not UTF-8: the same bytes back
    assert list(index.take(torch.tensor([3, 1]).numpy())) == [names[3], names[1]]


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
    folder = load_dataset("folder", os.path.join(out, "images"), "train")  # rank 0 walks it, the others receive it
    classes, paths, labels = walk(os.path.join(out, "images", "train"))  # what this rank's own walk finds
    same_index = folder.classes == classes and list(folder.paths) == paths and folder.labels.tolist() == labels
    try:
        load_dataset("folder", os.path.join(out, "nowhere"), "train")
    except UserError as e:
        refused = str(e)
    train, train_labels = tied_features(23, 0)
    test, test_labels = tied_features(17, 1)
    mine = slice(rank, None, world)  # rank r holds rows r, r+W, ...: uneven shards of 23 and 17 rows
    results = dict(same_index=same_index, refused=refused, knn=knn_accuracy(train[mine], train_labels[mine], test[mine], test_labels[mine], CLASSES, K, T,
                                     queries=6))
    received, tensors, real, real_gather = [], [], torch.distributed.gather_object, torch.distributed.gather

    def gather_object(obj, object_gather_list=None, dst=0, group=None):
        real(obj, object_gather_list, dst, group)
        received.append(object_gather_list)

    def gather(tensor, gather_list=None, dst=0, group=None):
        real_gather(tensor, gather_list, dst, group)
        tensors.append(gather_list is not None)

    def refused(*_, **__):
        raise AssertionError("a save sent one rank's state to every rank")
    torch.distributed.gather_object, torch.distributed.all_gather_object = gather_object, refused
    torch.distributed.gather = gather
    torch.distributed.broadcast_object_list = refused
    model = _Ranked()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    checkpoint.save(out, 1, 2, 0, argparse_namespace(problem="x"), model, optimizer, scaler)
    results["received"] = [None if r is None else [s[1]["owner"] for s in r] for r in received]
    results["tensors_received"] = any(tensors)
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    torch.distributed.barrier()
    dist.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_sharded_knn_equals_one_process_and_a_save_sends_each_ranks_state_to_rank_0_alone(tmp_path, world):
    for i, name in enumerate(["b/2.jpg", "a/1.jpg", "a/sub/3.png", "b/notes.txt", "a/0.jpeg"]):
        (tmp_path / "images" / "train" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "images" / "train" / name).write_bytes(b"")
    mp.spawn(_worker, args=(world, f"file://{tmp_path}/init", str(tmp_path)), nprocs=world)
    train, train_labels = tied_features(23, 0)
    test, test_labels = tied_features(17, 1)
    one = knn_accuracy(train, train_labels, test, test_labels, CLASSES, K, T)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    assert all(r["knn"] == one for r in ranks)
    assert all(r["same_index"] for r in ranks)  # the index rank 0 built is the one each rank would have built
    assert all(r["refused"].startswith("folder: ") and "does not exist" in r["refused"] for r in ranks)
    assert ranks[0]["received"] == [list(range(world))] and ranks[0]["tensors_received"]  # rank 0 got every rank's ...
    assert all(r["received"] == [None] and not r["tensors_received"] for r in ranks[1:])  # ... and no other rank any
    saved = torch.load(tmp_path / checkpoint.CHECKPOINT, weights_only=True)
    assert [s["owner"] for s in saved["rank_state"]] == list(range(world))
    assert all(torch.equal(s["rows"], torch.full((1000,), float(r))) for r, s in enumerate(saved["rank_state"]))


def test_the_dry_run_prints_each_data_sized_state_per_rank_by_its_formula(capsys, fmnist, tmp_path):
    import train
    from conftest import ROOT

    def dry(config, *flags):
        train.main(["--config", os.path.join(ROOT, "configs", config), "--dry_run", "true", "--dist", "ddp",
                    "--num_proc_per_node", "4"] + list(flags))
        return capsys.readouterr().out
    out = dry("fmnist_dcv2.yaml")  # RN18 at width 0.25: 128 features; 60,000 images, batch 256 over 4 ranks
    slots = (60000 // 256) * (256 // 4)
    assert f"DeepCluster-v2's banks, 2 x {slots} x 128 float32 per rank" in out
    assert f"({2 * slots * 128 * 4 + slots * 8} bytes); --crops_for_mb shrinks it" in out
    assert f"cluster assignments, 3 x 60000 int64 on every rank: 1.44 MB ({3 * 60000 * 8} bytes)" in out
    assert f"an evaluation's features, 60000 training and 10000 test images x 128 float32 shared by the ranks: " \
           f"8.96 MB ({(15000 + 2500) * 128 * 4} bytes)" in out
    assert f"NPID's memory bank, 60000 x 128 float32 on every rank: 30.7 MB ({60000 * 128 * 4} bytes)" in dry(
        "fmnist_npid.yaml")
    assert f"SwAV's queue, 2 x 256 x 128 float32 per rank: 262 kB ({2 * 256 * 128 * 4} bytes)" in dry("fmnist_swav.yaml")
    names = ["a/1.jpg", "a/22.jpg", "b/333.jpg", "b/4444.jpg"]
    for split in ("train", "val"):
        for name in names:
            (tmp_path / split / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / split / name).write_bytes(b"")
    out = dry("fmnist_simclr.yaml", "--data", "folder", "--data_root", str(tmp_path), "--batch_size", "4", "--eval_freq",
              "-1")
    index = sum(len(os.fsencode(str(tmp_path / "train" / n))) for n in names) + 8 * (4 + 1) + 8 * 4
    assert f"the training folder's index of 4 files, host memory of every rank: {index} B ({index} bytes)" in out
    assert "an evaluation's features" not in out  # --eval_freq -1: none


def test_a_launch_whose_state_cannot_fit_its_gpu_is_warned_naming_the_largest_and_its_flag(monkeypatch):
    import types
    import train
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(total_memory=10 ** 9))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "a 1 GB GPU")
    states = [("a bank", 8 * 10 ** 8, "--bank_flag", True), ("features", 3 * 10 ** 8, "--eval_freq -1", True),
              ("an index", 5 * 10 ** 9, None, False)]
    line = train.too_big_for(torch.device("cuda", 0), states)
    assert line.startswith("warning: each rank's data-sized state needs 1.1 GB, more than the 1 GB of a 1 GB GPU")
    assert line.endswith("the largest is a bank (800 MB; --bank_flag shrinks it)")
    assert train.too_big_for(torch.device("cuda", 0), states[1:]) is None  # the host's index is not the GPU's
    assert train.too_big_for(torch.device("cpu"), states) is None
