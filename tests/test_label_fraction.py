"""The probe on a fraction of the labels: a class-balanced subset fixed by the seed, listed in the run folder, read back
by --label_subset (file names for image folders, indices in memory), and every bad list one line."""
import os

import pytest
import torch

import train
from data.datasets import FolderData, balanced_subset, label_subset_lines, read_label_subset
from tools.benchmark import make_jpeg_folder
from utils.errors import UserError

PROBE = ["--problem", "eval", "--encoder_ckpt", "pixels", "--data", "fmnist", "--subset", "2000", "--epochs", "5",
         "--batch_size", "50", "--opt", "sgd", "--lr", "0.05", "--knn_k", "20", "--workers", "0",
         "--test_subset", "1000"]


def test_the_subset_is_class_balanced_and_fixed_by_the_seed():
    labels = torch.arange(10).repeat_interleave(torch.tensor([100, 50, 7, 300, 1, 90, 90, 90, 90, 82]))
    a, b, other = balanced_subset(labels, 0.1, 0), balanced_subset(labels, 0.1, 0), balanced_subset(labels, 0.1, 1)
    assert torch.equal(a, b) and not torch.equal(a, other)
    assert torch.equal(a, a.sort().values) and len(set(a.tolist())) == len(a)
    counts = torch.bincount(labels[a], minlength=10).tolist()
    assert counts == [10, 5, 1, 30, 1, 9, 9, 9, 9, 8]  # round(0.1 n), at least one of each class
    assert torch.equal(balanced_subset(labels, 1.0, 0), torch.arange(len(labels)))


def test_a_probe_on_a_tenth_lists_its_images_and_the_list_trains_the_same_probe(tmp_path, fmnist):
    first, m1 = train.main(PROBE + ["--label_fraction", "0.1", "--root", str(tmp_path / "a")])
    lines = open(os.path.join(first, "label_subset.txt")).read().split()
    assert abs(len(lines) - 200) <= 5 and all(n.isdigit() for n in lines)  # 10% of each class (rounded) of 2,000
    again, m2 = train.main(PROBE + ["--label_subset", os.path.join(first, "label_subset.txt"),
                                    "--root", str(tmp_path / "b")])
    assert open(os.path.join(again, "label_subset.txt")).read().split() == lines
    w1 = torch.load(os.path.join(first, "checkpoint.pth.tar"), weights_only=True)["model"]
    w2 = torch.load(os.path.join(again, "checkpoint.pth.tar"), weights_only=True)["model"]
    assert all(torch.equal(w1[k], w2[k]) for k in w1 if k.startswith("classifier"))
    assert m1 == m2
    # fewer labels: the probe and kNN score below the same probe on all 2,000 images, from the same features
    _, full = train.main(PROBE + ["--root", str(tmp_path / "c")])
    assert m1["knn_acc1"] < full["knn_acc1"] and m1["test_acc1"] < full["test_acc1"]
    assert not os.path.exists(os.path.join(only(tmp_path / "c"), "label_subset.txt"))


def test_validation_holds_out_balanced_unlabelled_images_and_scores_on_them(tmp_path, fmnist):
    folder, metrics = train.main(PROBE + ["--label_fraction", "0.1", "--validation", "300", "--root", str(tmp_path)])
    labelled = [int(n) for n in open(os.path.join(folder, "label_subset.txt")).read().split()]
    held = [int(n) for n in open(os.path.join(folder, "validation.txt")).read().split()]
    assert abs(len(held) - 300) <= 5 and not set(held) & set(labelled) and len(set(held)) == len(held)
    assert abs(len(labelled) - 200) <= 5  # the labelled images are the ones drawn without --validation
    again, _ = train.main(PROBE + ["--label_fraction", "0.1", "--root", str(tmp_path / "b")])
    assert open(os.path.join(again, "label_subset.txt")).read().split() == [str(i) for i in labelled]
    assert {"val_acc1", "val_acc5", "val_knn_acc1"} <= set(metrics) and not any("test" in k for k in metrics)
    assert metrics["val_acc1"] > 40  # ten classes: scored on real held-out images, not an empty set
    # all the labels: the held-out images come out of the training images
    whole, _ = train.main(PROBE + ["--validation", "500", "--root", str(tmp_path / "c")])
    rest = {int(n) for n in open(os.path.join(whole, "label_subset.txt")).read().split()}
    held = {int(n) for n in open(os.path.join(whole, "validation.txt")).read().split()}
    assert rest | held == set(range(2000)) and not rest & held


def test_the_lbfgs_probe_takes_the_labelled_fraction_as_its_batch(tmp_path, fmnist):
    folder, metrics = train.main(PROBE + ["--opt", "lbfgs", "--lr", "1", "--lr_scaling", "none", "--iters", "5",
                                          "--label_fraction", "0.1", "--root", str(tmp_path)])
    labelled = open(os.path.join(folder, "label_subset.txt")).read().split()
    params = open(os.path.join(folder, "params.yaml")).read()
    assert f"batch_size: {len(labelled)}\n" in params and metrics["test_acc1"] > 40


def only(root):
    (folder,) = (root / "runs").iterdir()
    return folder


def test_an_image_folder_lists_file_names_and_reads_them_back(tmp_path):
    make_jpeg_folder(str(tmp_path), 24, classes=3)
    data = FolderData("folder", str(tmp_path / "train"))
    picked = balanced_subset(data.labels, 0.25, 0)
    lines = label_subset_lines(data, picked)
    assert len(lines) == 6 and all(n.endswith(".JPEG") and os.sep not in n for n in lines)
    (tmp_path / "list.txt").write_text("\n".join(reversed(lines)) + "\n\n")
    assert torch.equal(read_label_subset(str(tmp_path / "list.txt"), data), picked)


@pytest.mark.parametrize("text, message", [
    ("000000.JPEG\nn01440764_10026.JPEG\n", "1 of its 2 file names are not training images"),
    ("000000.JPEG\n000001.JPEG\n", "has no image of class 2"),
    ("", "lists no image"),
])
def test_a_bad_folder_list_is_one_clear_error(tmp_path, text, message):
    make_jpeg_folder(str(tmp_path), 12, classes=3)
    (tmp_path / "list.txt").write_text(text)
    with pytest.raises(UserError, match=message):
        read_label_subset(str(tmp_path / "list.txt"), FolderData("folder", str(tmp_path / "train")))


@pytest.mark.parametrize("extra, message", [
    (["--label_fraction", "0"], "--label_fraction"),
    (["--label_fraction", "1.5"], "--label_fraction"),
    (["--label_subset", "{d}/none.txt"], "cannot be read"),
    (["--label_subset", "{d}/names.txt"], "images are listed by index, not 'a.JPEG'"),
    (["--label_subset", "{d}/far.txt"], "lists image 5000; fmnist has 2000 training images"),
    (["--label_subset", "{d}/names.txt", "--label_fraction", "0.1"], "give one"),
    (["--label_fraction", "0.5", "--validation", "1000"], "--validation 1000 leaves no image to train on"),
])
def test_a_bad_fraction_or_list_is_one_line_and_exit_2(tmp_path, capsys, fmnist, extra, message):
    (tmp_path / "names.txt").write_text("a.JPEG\n")
    (tmp_path / "far.txt").write_text("3\n5000\n")
    root = tmp_path / "logs"
    with pytest.raises(SystemExit) as exit:
        train.main(PROBE + [e.format(d=tmp_path) for e in extra] + ["--root", str(root)])
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("train.py: error:") and message in err[-1], err
    assert not (root / "runs").exists() or not os.listdir(root / "runs")
