"""Each dataset's loader on small files written here in the dataset's exact on-disk format."""
import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from data.datasets import fixed_subset, load_dataset
from data.loader import TrainBatches, epoch_batches, eval_batches
from utils.errors import UserError


def random_images(n, c, side, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, c, side, side), dtype=np.uint8)


def write_idx(path, array):
    """IDX: magic 0x00000800 | dtype code 0x08 (ubyte) | ndim, big-endian int32 dims, raw bytes; gzipped."""
    header = struct.pack(">I", 0x0800 | array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def test_fmnist_idx_files_from_data_root(tmp_path):
    images = random_images(7, 1, 28, 0)[:, 0]
    labels = np.arange(7, dtype=np.uint8) % 10
    for prefix in ("train", "t10k"):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    data = load_dataset("fmnist", str(tmp_path), "test")
    assert data.images.shape == (7, 1, 28, 28) and data.images.dtype == torch.uint8
    assert np.array_equal(data.images[:, 0].numpy(), images) and data.labels.tolist() == labels.tolist()
    assert data.num_classes == 10 and data.channels == 1 and data.image_size == 28


def test_real_fmnist_has_standard_sizes(fmnist):
    train, test = load_dataset("fmnist", None, "train"), load_dataset("fmnist", None, "test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert train.images.float().mean().item() / 255 == pytest.approx(0.2860, abs=1e-3)  # the normalisation stats


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_python_pickles(tmp_path, name):
    folder, train_files, test_files, key = {
        "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
        "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
    }[name]
    os.makedirs(tmp_path / folder)
    written = {}
    for i, f in enumerate(train_files + test_files):
        x = random_images(3, 3, 32, i)
        # rows of 3072 bytes: 1024 red, 1024 green, 1024 blue, each row-major
        batch = {b"data": x.reshape(3, 3072), key: [i, i + 1, i + 2], b"filenames": [b"a.png"] * 3}
        with open(tmp_path / folder / f, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
        written[f] = x
    train = load_dataset(name, str(tmp_path), "train")
    assert train.images.shape == (3 * len(train_files), 3, 32, 32)
    assert np.array_equal(train.images[:3].numpy(), written[train_files[0]])
    test = load_dataset(name, str(tmp_path), "test")
    assert np.array_equal(test.images.numpy(), written[test_files[0]])
    assert test.labels.tolist() == [len(train_files) + j for j in range(3)]
    assert test.num_classes == (10 if name == "cifar10" else 100)


def test_stl10_binary_is_column_major_with_one_based_labels(tmp_path):
    root = tmp_path / "stl10_binary"
    os.makedirs(root)
    parts = {"train": random_images(2, 3, 96, 1), "test": random_images(3, 3, 96, 2), "unlabeled": random_images(4, 3, 96, 3)}
    for part, x in parts.items():
        # every channel stored column by column: write the transpose of each 96x96 plane
        (root / f"{part}_X.bin").write_bytes(b"".join(x[i, c].T.tobytes() for i in range(len(x)) for c in range(3)))
        if part != "unlabeled":
            (root / f"{part}_y.bin").write_bytes(bytes(range(1, len(x) + 1)))
    test = load_dataset("stl10", str(tmp_path), "test")
    assert np.array_equal(test.images.numpy(), parts["test"]) and test.labels.tolist() == [0, 1, 2]
    pretrain = load_dataset("stl10", str(tmp_path), "pretrain")  # train + unlabeled, the latter labeled -1
    assert len(pretrain) == 6 and pretrain.labels.tolist() == [0, 1, -1, -1, -1, -1]
    assert np.array_equal(pretrain.images[2:].numpy(), parts["unlabeled"])
    assert len(load_dataset("stl10", str(tmp_path), "train")) == 2


def write_image_folder(root, classes=("cat", "dog"), per_class=3, size=(40, 30)):
    for split in ("train", "val"):
        for c, cls in enumerate(classes):
            os.makedirs(root / split / cls)
            for i in range(per_class):
                colour = (c * 200, i * 60, 100)
                Image.new("RGB", size, colour).save(root / split / cls / f"{i}.png")


def test_image_folder_train_crops_and_eval_views(tmp_path):
    write_image_folder(tmp_path)
    train = load_dataset("folder", str(tmp_path), "train")
    assert len(train) == 6 and train.classes == ["cat", "dog"] and train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    batches = TrainBatches(train, 4, seed=0, device="cpu", crops=[(24, (0.2, 1.0)), (24, (0.2, 1.0)), (8, (0.05, 0.2))])
    crops, labels, idx = next(batches.epoch(0))
    assert [tuple(c.shape) for c in crops] == [(4, 3, 24, 24)] * 2 + [(4, 3, 8, 8)]
    assert crops[0].dtype == torch.float32 and 0 <= crops[0].min() and crops[0].max() <= 1
    # a plain-colour image stays its colour under any crop: the crop belongs to the indexed image
    for j, i in enumerate(idx.tolist()):
        assert round(crops[2][j, 0, 0, 0].item() * 255) == (200 if labels[j] == 1 else 0)
        assert labels[j] == train.labels[i]
    x, y = next(eval_batches(load_dataset("folder", str(tmp_path), "test"), 6, "cpu", size=16))
    assert x.shape == (6, 3, 16, 16) and y.tolist() == [0, 0, 0, 1, 1, 1]


def test_imagenet_reads_imagenet_path(tmp_path, monkeypatch):
    write_image_folder(tmp_path, classes=("n01440764", "n01443537"))
    monkeypatch.setenv("IMAGENET_PATH", str(tmp_path))
    assert len(load_dataset("imagenet", None, "test")) == 6


@pytest.mark.parametrize("name, root, message", [
    ("cifar10", "nowhere", "cifar-10-batches-py"), ("stl10", "nowhere", "stl10_binary"),
    ("folder", "nowhere", "nowhere/train"), ("fmnist", "nowhere", "train-images-idx3-ubyte.gz")])
def test_missing_files_say_what_and_where(tmp_path, monkeypatch, name, root, message):
    monkeypatch.setattr("data.datasets.FMNIST_DEBIAN", str(tmp_path / "none"))
    monkeypatch.setattr("torchvision.datasets.FashionMNIST", None)  # no download attempt in the test
    with pytest.raises(UserError, match=message):
        load_dataset(name, str(tmp_path / root), "train")


def test_epoch_order_is_a_seeded_permutation_split_over_ranks():
    full = torch.cat(list(epoch_batches(20, 8, seed=3, epoch=1)))
    assert len(full) == 16 and len(set(full.tolist())) == 16  # drop_last: 2 whole batches
    assert torch.equal(full, torch.cat(list(epoch_batches(20, 8, seed=3, epoch=1))))
    assert not torch.equal(full, torch.cat(list(epoch_batches(20, 8, seed=3, epoch=2))))
    ranks = [list(epoch_batches(20, 8, 3, 1, rank=r, world_size=2)) for r in range(2)]
    assert torch.equal(torch.cat([ranks[0][0], ranks[1][0], ranks[0][1], ranks[1][1]]), full)
    assert torch.equal(torch.cat(list(epoch_batches(20, 8, 3, 1, start=1))), full[8:])


def test_fixed_subset_is_the_same_for_a_seed(fmnist):
    data = load_dataset("fmnist", None, "test")
    a, b = fixed_subset(data, 100, 0), fixed_subset(data, 100, 0)
    assert len(a) == 100 and torch.equal(a.images, b.images)
    assert not torch.equal(a.labels, fixed_subset(data, 100, 1).labels)


def test_test_subset_scores_on_the_same_test_images_for_every_seed(fmnist):
    import train
    from data.datasets import load_data
    from utils.config import parse_args
    full = load_dataset("fmnist", None, "test")
    tests = [load_data(parse_args(["--test_subset", "300", "--seed", s], train.PROBLEMS), True, "cpu").test
             for s in ("0", "1")]
    assert len(tests[0]) == 300 and torch.equal(tests[0].images, tests[1].images)
    rows = {bytes(x.numpy()) for x in full.images}  # 300 of the test images, not of the training ones
    assert all(bytes(x.numpy()) in rows for x in tests[0].images)
    assert len(load_data(parse_args([], train.PROBLEMS), True, "cpu").test) == len(full)
