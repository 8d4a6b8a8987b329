"""What strikes hours into a long run: unreadable images, damaged dataset files and a second process on the same
run folder. Images that cannot be decoded are replaced and listed; every damaged file is one line (exit 2); a run
folder has one writer."""
import gzip
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import train
from conftest import ROOT, TINY, only_run, saved, start_train
from data.datasets import load_dataset
from data.loader import TrainBatches, eval_batches
from test_data import random_images, write_idx
from tools import check_data
from utils import checkpoint

BROKEN = {"train/a/zz_random.jpg": "random", "train/b/zz_empty.jpg": "empty", "train/b/zz_truncated.jpg": "truncated"}


def image_folder(root, per_class=12, broken=BROKEN):
    """Small JPEGs in train/{a,b} and val/{a,b}, and the `broken` files among them: random bytes, empty, cut in half."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 4)):
        for cls in ("a", "b"):
            os.makedirs(root / split / cls, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.jpg")
    whole = (root / "train" / "a" / "0.jpg").read_bytes()
    for name, kind in broken.items():
        content = {"random": rng.bytes(700), "empty": b"", "truncated": whole[:len(whole) // 2]}[kind]
        (root / name).write_bytes(content)
    return root


def folder_run(data_root, logs, *extra):
    return ["--data", "folder", "--data_root", str(data_root), "--size_crops", "16", "--arch", "resnet18", "--width",
            "0.125", "--batch_size", "8", "--workers", "1", "--opt", "adamw", "--lr", "1e-3", "--lr_schedule", "const",
            "--warmup", "0", "--log_freq", "3", "--eval_freq", "-1", "--max_unreadable", "0.2", "--root", str(logs)] + list(extra)


def refused_line(argv, capsys, root=None):
    """train.main(argv) exits 2 with one line and makes no run folder; returns the line."""
    with pytest.raises(SystemExit) as exit:
        train.main(argv)
    assert exit.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "%|" not in line]  # no progress bars
    assert len(err) == 1 and err[0].startswith("train.py: error:"), err
    assert root is None or not (root / "runs").exists() or not os.listdir(root / "runs")
    return err[0]


@pytest.mark.parametrize("decode", ["workers", "device"])
def test_unreadable_images_are_replaced_listed_and_a_resumed_run_matches(tmp_path, decode):
    data = image_folder(tmp_path / "data")
    whole, _ = train.main(folder_run(data, tmp_path / "a", "--iters", "12", "--decode", decode))
    listed = (only_run(tmp_path / "a") / "unreadable.txt").read_text().split()
    assert sorted(listed) == sorted(BROKEN)  # relative to the data root: the format --skip_images reads
    logs = pd.read_csv(os.path.join(whole, "logs.csv"))
    assert logs["unreadable"].tolist() == [3, 3, 3, 3]  # every image is met in the first epoch of 27 images
    half, _ = train.main(folder_run(data, tmp_path / "b", "--iters", "6", "--decode", decode))
    resumed, _ = train.main(["--resume", half, "--iters", "12"])
    a, b = (saved(f) for f in (whole, resumed))
    assert b["step"] == 12
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert (only_run(tmp_path / "b") / "unreadable.txt").read_text().split() == listed


def test_a_stand_in_is_a_fixed_readable_image_and_clean_batches_are_untouched(tmp_path):
    data = load_dataset("folder", str(image_folder(tmp_path)), "train")
    crops = [(16, (0.2, 1.0))] * 2
    bad = {i for i, p in enumerate(data.paths) if os.path.basename(p).startswith("zz_")}
    first, second = (list(TrainBatches(data, 9, 3, "cpu", crops=crops, workers=w).epoch(0)) for w in (0, 2))
    for (x, labels, idx), (y, _, _) in zip(first, second):
        assert all(torch.equal(u, v) for u, v in zip(x, y))  # the same stand-ins with 0 and 2 workers
        for j, i in enumerate(idx.tolist()):
            if i in bad:  # a real image's crops, not zeros, in place of the unreadable file
                assert x[0][j].std() > 10 / 255
    batches = TrainBatches(data, 9, 3, "cpu", crops=crops)
    list(batches.epoch(0))
    assert batches.take_unreadable() == bad and batches.take_unreadable() == set()


@pytest.mark.slow
def test_too_many_unreadable_images_stop_the_run_with_one_line_and_a_checkpoint(tmp_path, capsys):
    data = image_folder(tmp_path / "data")
    line = refused_line(folder_run(data, tmp_path / "logs", "--iters", "12", "--max_unreadable", "0.05"), capsys)
    folder = only_run(tmp_path / "logs")
    assert line.startswith("train.py: error: 3 of the 27 training images cannot be decoded, more than --max_unreadable "
                           "0.05 allows") and f"listed in {folder / 'unreadable.txt'}" in line
    assert "the checkpoint of step 3 is intact" in line
    assert saved(folder)["step"] == 3
    # repaired: the run continues from its checkpoint
    for name in BROKEN:
        (data / name).write_bytes((data / "train" / "a" / "1.jpg").read_bytes())
    resumed, _ = train.main(["--resume", str(folder)])
    assert saved(resumed)["step"] == 12
    assert (folder / "unreadable.txt").read_text() == ""  # repaired files leave the list
    assert pd.read_csv(folder / "logs.csv")["unreadable"].tolist() == [3, 0, 0, 0]


def test_evaluation_replaces_an_unreadable_image_by_its_neighbour_with_a_warning(tmp_path, capsys):
    data = load_dataset("folder", str(image_folder(tmp_path, broken={"val/a/zz_bad.jpg": "random"})), "test")
    ((x, y),) = list(eval_batches(data, 16, "cpu", size=16))
    assert len(x) == 9 and x.float().std() > 10
    zz = list(data.paths).index(str(tmp_path / "val" / "a" / "zz_bad.jpg"))
    assert torch.equal(x[zz], x[zz + 1]) and y[zz] == y[zz + 1]  # the next image, and its label
    assert "warning: 1 images of" in capsys.readouterr().err


def test_check_data_lists_the_unreadable_files_and_training_can_skip_them(tmp_path, capsys):
    data = image_folder(tmp_path / "data", broken=dict(BROKEN, **{"val/a/zz_bad.jpg": "random"}))
    out = tmp_path / "unreadable.txt"
    assert check_data.main(["--data", "folder", "--data_root", str(data), "--workers", "2", "--out", str(out)]) == 0
    assert out.read_text().split() == sorted(list(BROKEN) + ["val/a/zz_bad.jpg"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"folder {data}: 36 images, 2 classes, 4 unreadable, listed in {out}")
    folder, _ = train.main(folder_run(data, tmp_path / "logs", "--iters", "3", "--skip_images", str(out),
                                      "--eval_freq", "0", "--knn_k", "5"))
    assert not os.path.exists(os.path.join(folder, "unreadable.txt"))  # nothing left to replace
    assert "cannot be decoded" not in capsys.readouterr().err  # the evaluation met none either
    assert len(load_dataset("folder", str(data), "train", str(out))) == 24


def test_check_data_reads_in_memory_datasets_whole(tmp_path, capsys):
    assert check_data.main(["--data", "cifar10", "--data_root", str(tmp_path)]) == 2
    assert "cifar10 not found" in capsys.readouterr().err


def fmnist_files(root, images=None, labels=None):
    images = random_images(7, 1, 28, 0)[:, 0] if images is None else images
    labels = np.arange(7, dtype=np.uint8) % 10 if labels is None else labels
    for prefix in ("train", "t10k"):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root / "train-images-idx3-ubyte.gz"


def cut(path, keep):
    data = path.read_bytes()
    path.write_bytes(data[:keep(len(data))])


def rewrite_gz(path, change):
    with gzip.open(path) as f:
        data = f.read()
    with gzip.open(path, "wb") as f:
        f.write(change(data))


def cifar_files(root, labels=(0, 1, 2), data=None):
    os.makedirs(root / "cifar-10-batches-py", exist_ok=True)
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": random_images(3, 3, 32, 0).reshape(3, 3072) if data is None else data, b"labels": list(labels)}
        with open(root / "cifar-10-batches-py" / f, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    return root / "cifar-10-batches-py" / "data_batch_1"


def stl_files(root, labels=(1, 2)):
    os.makedirs(root / "stl10_binary", exist_ok=True)
    for part, n in (("train", 2), ("test", 2), ("unlabeled", 1)):
        (root / "stl10_binary" / f"{part}_X.bin").write_bytes(random_images(n, 3, 96, 0).tobytes())
        if part != "unlabeled":
            (root / "stl10_binary" / f"{part}_y.bin").write_bytes(np.array(labels, np.uint8).tobytes())
    return root / "stl10_binary" / "train_X.bin"


DAMAGED = {
    "fmnist .gz cut short": ("fmnist", lambda r: cut(fmnist_files(r), lambda n: n // 2), "cannot be read (EOFError"),
    "fmnist not gzip": ("fmnist", lambda r: fmnist_files(r).write_bytes(b"\x1f\x8bnot gzip at all"), "cannot be read"),
    "fmnist fewer bytes than its header": ("fmnist", lambda r: rewrite_gz(fmnist_files(r), lambda d: d[:-100]),
                                           "where its header [7, 28, 28] needs"),
    "fmnist labels for images": ("fmnist", lambda r: fmnist_files(r).write_bytes(
        (r / "train-labels-idx1-ubyte.gz").read_bytes()), "is not an IDX file of images"),
    "fmnist label count": ("fmnist", lambda r: fmnist_files(r, labels=np.zeros(6, np.uint8)), "6 labels for 7 images"),
    "fmnist label range": ("fmnist", lambda r: fmnist_files(r, labels=np.full(7, 12, np.uint8)), "outside 0 .. 9"),
    "cifar pickle cut short": ("cifar10", lambda r: cut(cifar_files(r), lambda n: n - 40), "is not a CIFAR batch"),
    "cifar rows of another size": ("cifar10", lambda r: cifar_files(r, data=np.zeros((3, 1000), np.uint8)),
                                   "n x 3072 array"),
    "cifar label count": ("cifar10", lambda r: cifar_files(r, labels=(0, 1)), "2 labels for 3 images"),
    "cifar100 labels in cifar10": ("cifar10", lambda r: cifar_files(r, labels=(0, 1, 57)), "outside 0 .. 9"),
    "stl binary cut short": ("stl10", lambda r: cut(stl_files(r), lambda n: n - 5), "not a whole number of 27648-byte"),
    "stl label 0": ("stl10", lambda r: stl_files(r, labels=(0, 1)), "outside 0 .. 9"),
}


@pytest.mark.parametrize("case", DAMAGED)
def test_a_damaged_dataset_file_is_one_line(tmp_path, capsys, case):
    name, damage, message = DAMAGED[case]
    (tmp_path / "data").mkdir()
    damage(tmp_path / "data")
    line = refused_line(["--data", name, "--data_root", str(tmp_path / "data"), "--root", str(tmp_path / "logs")],
                        capsys, tmp_path / "logs")
    assert message in line and str(tmp_path / "data") in line, line


def test_damaged_lists_configs_checkpoints_and_logs_are_one_line(tmp_path, capsys):
    logs = tmp_path / "logs"
    (tmp_path / "binary.yaml").write_bytes(bytes(range(128, 256)))
    assert "cannot be read as text" in refused_line(["--config", str(tmp_path / "binary.yaml")], capsys, logs)
    data = image_folder(tmp_path / "data", broken={})
    (tmp_path / "other.txt").write_text("train/a/0.jpg\nnowhere/x.jpg\n")
    line = refused_line(folder_run(data, logs, "--skip_images", str(tmp_path / "other.txt")), capsys, logs)
    assert "names 1 files that are not under" in line
    (tmp_path / "binary.txt").write_bytes(bytes(range(128, 256)))
    assert "image list" in refused_line(folder_run(data, logs, "--skip_images", str(tmp_path / "binary.txt")), capsys)
    line = refused_line(["--data", "fmnist", "--skip_images", str(tmp_path / "other.txt"), "--root", str(logs)], capsys)
    assert "fmnist has none" in line
    os.rename(data / "val" / "b", data / "val" / "c")  # the labels of val would not be train's
    assert "hold different class folders" in refused_line(folder_run(data, logs, "--iters", "1"), capsys, logs)

    folder, _ = train.main(TINY + ["--iters", "2", "--eval_freq", "-1", "--root", str(logs)])
    line = refused_line(["--resume", os.path.join(folder, checkpoint.BACKBONE)], capsys)
    assert "holds no training state" in line and "not an exported backbone.pth" in line
    (tmp_path / "empty.pth.tar").write_bytes(b"")
    assert "is empty: not a checkpoint" in refused_line(["--resume", str(tmp_path / "empty.pth.tar")], capsys)
    whole = open(os.path.join(folder, checkpoint.CHECKPOINT), "rb").read()
    (tmp_path / "cut.pth.tar").write_bytes(whole[:len(whole) // 2])
    assert "or is truncated" in refused_line(["--resume", str(tmp_path / "cut.pth.tar")], capsys)
    (tmp_path / "cut.pth.tar").write_bytes(whole[:len(whole) // 2])
    line = refused_line(["--problem", "eval", "--encoder_ckpt", str(tmp_path / "cut.pth.tar"), "--root", str(logs)], capsys)
    assert "or is truncated" in line
    with open(os.path.join(folder, "logs.csv"), "w") as f:
        f.write('iter,"train_loss\n1,')
    assert "logs.csv cannot be read" in refused_line(["--resume", folder, "--iters", "3"], capsys)


def holder(folder):
    """Another process that holds `folder`'s lock until killed; returns it once it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys, time; from utils import runlog; "
                             "runlog.hold(sys.argv[1]); print('held', flush=True); time.sleep(300)", str(folder)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.slow
def test_a_held_run_folder_is_refused_naming_its_holder_and_freed_when_the_holder_dies(tmp_path, capsys):
    folder, _ = train.main(TINY + ["--iters", "2", "--eval_freq", "-1", "--name", "job", "--root", str(tmp_path)])
    before = {name: (tmp_path / "runs" / os.path.basename(folder) / name).read_bytes()
              for name in ("checkpoint.pth.tar", "logs.csv", "log.txt")}
    proc = holder(folder)
    line = refused_line(["--resume", folder, "--iters", "4"], capsys)
    assert f"{folder} is being trained by the process of host " in line and f" pid {proc.pid} since " in line
    assert "pid" in refused_line(["--resume", "auto", "--name", "job", "--iters", "4", "--root", str(tmp_path)], capsys)
    start = time.time()
    line = refused_line(["--resume", folder, "--iters", "4", "--lock_wait", "1.5"], capsys)
    assert time.time() - start >= 1.5 and "is being trained by" in line
    assert {name: open(os.path.join(folder, name), "rb").read() for name in before} == before  # nothing touched
    proc.kill()  # SIGKILL: no clean-up runs, the kernel drops the lock
    proc.wait()
    resumed, _ = train.main(["--resume", folder, "--iters", "4"])
    assert saved(resumed)["step"] == 4
    proc = holder(folder)  # train.main released its lock on return: another process can take the folder
    proc.kill()
    proc.wait()


@pytest.mark.slow
def test_a_second_launch_of_a_running_job_exits_2_and_the_first_finishes_untouched(tmp_path):
    args = TINY + ["--iters", "20", "--log_freq", "1", "--save_freq", "2", "--eval_freq", "-1", "--name", "job",
                   "--resume", "auto", "--root", str(tmp_path)]
    first = start_train(args)
    while not list(tmp_path.glob("runs/*/checkpoint.pth.tar")):
        assert first.poll() is None, first.communicate()
        time.sleep(0.05)
    first.send_signal(signal.SIGSTOP)  # paused in the middle of its run, holding the folder: events, not timing
    try:
        # launched twice more while it trains: at once, and as a requeued job that waits for it to end (then a new run)
        second = start_train(args)
        _, second_err = second.communicate()
        third = start_train(args + ["--lock_wait", "600", "--iters", "2"])
        waiting = next((line for line in third.stdout if "waiting up to 600 s for the process of host" in line), None)
    finally:
        first.send_signal(signal.SIGCONT)
    (_, err), (_, third_err) = first.communicate(), third.communicate()
    assert first.returncode == 0, err
    assert second.returncode == 2 and second_err.strip().splitlines()[-1].startswith("train.py: error: "), second_err
    assert f"pid {first.pid}" in second_err.strip().splitlines()[-1]
    assert waiting is not None and third.returncode == 0, third_err
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2
    logs = pd.read_csv(runs[0] / "logs.csv")
    assert logs["iter"].tolist() == list(range(1, 21))  # one writer: no row twice, none missing
    log = (runs[0] / "log.txt").read_text()
    assert log.count("run folder") == 1 and "resuming" not in log
    assert saved(runs[0])["step"] == 20
