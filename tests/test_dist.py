"""Several processes on CPU (gloo): exact gradients through the gather, the launchers, resume, failure, and --amp."""
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
import torch.distributed
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

import train
from conftest import HANG, ROOT, TINY, only_run, saved, start_train
from test_bad_data import folder_run, image_folder
from models.simclr import info_nce_loss
from models.swav import sinkhorn
from models.memory import init_memory_bank, spherical_kmeans
from utils import dist
from utils.errors import UserError


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 8)).double()


def crops_of(x, lo, hi):
    """Crop-major rows of images lo..hi-1 of x (C, N, d)."""
    return x[:, lo:hi].reshape(-1, x.shape[-1])


def kmeans_data():
    """60 unit vectors in 4 loose clusters, and 6 starting centroids (two of them far from every point)."""
    gen = torch.Generator().manual_seed(3)
    centres = F.normalize(torch.randn(4, 8, generator=gen, dtype=torch.float64), dim=1)
    bank = F.normalize(centres[torch.arange(60) % 4] + 0.6 * torch.randn(60, 8, generator=gen, dtype=torch.float64), dim=1)
    start = torch.cat([bank[:4], -centres[:2]])
    return bank, start


def _gathered_on_this_rank(rank, world, x, temperature):
    net = nn.parallel.DistributedDataParallel(mlp())
    n = x.shape[1] // world
    info_nce_loss(net(crops_of(x, rank * n, (rank + 1) * n)), x.shape[0], temperature).backward()
    rows = torch.arange(7.0)[rank::world, None] * torch.ones(3)  # 7 rows strided over the ranks
    gathered = dist.gather_strided(rows, 7)
    scores = torch.randn(2 * 9, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    codes = dist.gather(sinkhorn(scores[rank * 9:(rank + 1) * 9], 0.05, 3))  # each rank its 9 rows
    bank, start = kmeans_data()
    centroids, members = spherical_kmeans(bank[rank * 30:(rank + 1) * 30], start, 5)  # each rank its 30 rows
    return dict(grads=[p.grad.detach() for p in net.module.parameters()], gathered=gathered.detach(), codes=codes,
                centroids=centroids, members=dist.gather(members))


def _gather_worker(rank, world, init, x, temperature, out):
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    results = _gathered_on_this_rank(rank, world, x, temperature)
    if rank == 0:
        torch.save(results, out)
    torch.distributed.barrier()  # neither rank tears gloo down while the other still writes
    dist.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("num_crops,temperature", [(2, 0.5), (6, 0.1)])
def test_two_processes_give_the_gradients_sinkhorn_codes_and_kmeans_of_one_process_on_all_the_data(tmp_path, num_crops, temperature):
    torch.manual_seed(1)
    x = torch.randn(num_crops, 8, 6, dtype=torch.float64)  # 8 images, each rank gets 4 different ones
    out = str(tmp_path / "grads.pt")
    mp.spawn(_gather_worker, args=(2, f"file://{tmp_path}/init", x, temperature, out), nprocs=2)
    net = mlp()
    info_nce_loss(net(crops_of(x, 0, 8)), num_crops, temperature).backward()
    two = torch.load(out)
    for p, g in zip(net.parameters(), two["grads"]):
        torch.testing.assert_close(g, p.grad, rtol=1e-10, atol=1e-12)
    assert torch.equal(two["gathered"][:, 0], torch.arange(7.0))  # rank r held rows r, r+2, ...: back in order
    scores = torch.randn(2 * 9, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(two["codes"], sinkhorn(scores, 0.05, 3), rtol=1e-12, atol=1e-15)  # = one process
    centroids, members = spherical_kmeans(*kmeans_data(), 5)
    torch.testing.assert_close(two["centroids"], centroids, rtol=1e-12, atol=1e-14)
    assert torch.equal(two["members"], members)


def test_sync_bn_groups_per_node_global_and_fixed_size():
    assert dist.sync_bn_groups(8, -1, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert dist.sync_bn_groups(8, 0, 4) == [list(range(8))]
    assert dist.sync_bn_groups(8, 2, 4) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    with pytest.raises(UserError, match="do not divide"):
        dist.sync_bn_groups(8, 3, 4)


def free_address():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


PRETRAIN = ["--problem", "simclr", "--iters", "4", "--log_freq", "2", "--eval_freq", "-1"] + TINY


def checkpoint_of(root):
    folders = list((root / "runs").iterdir())
    assert len(folders) == 1, folders  # one run folder, however many processes
    return str(folders[0]), saved(folders[0])


DCV2 = ["--problem", "dcv2", "--num_clusters", "20", "--kmeans_iters", "3", "--head_hidden_dims", "64", "--iters", "8",
        "--log_freq", "2", "--eval_freq", "-1"] + TINY  # 8 steps an epoch: k-means at step 0, and at 8 after the resume


@pytest.mark.slow
def test_per_node_launcher_trains_two_processes_and_resumes(tmp_path):
    root = tmp_path / "logs"
    launch = ["--dist", "ddp", "--num_proc_per_node", "2", "--dist_address", free_address()]
    proc = start_train(DCV2 + launch + ["--root", str(root)])
    out, err = proc.communicate(timeout=HANG)
    assert proc.returncode == 0, err
    folder, ckpt = checkpoint_of(root)
    assert ckpt["step"] == 8 and len(ckpt["rng"]) == 2  # each rank's random streams
    assert not torch.equal(ckpt["rng"][0]["generators"]["augment"], ckpt["rng"][1]["generators"]["augment"])
    # DeepCluster-v2's banks are per rank: after one epoch, 8 steps x 32 images each, together every image once
    banks = [state["bank_index"] for state in ckpt["rank_state"]]
    assert [len(b) for b in banks] == [256, 256] and sorted(torch.cat(banks).tolist()) == list(range(512))
    assert (ckpt["model"]["_extra_state"]["assignments"] >= 0).all()  # gathered from both ranks
    proc = start_train(["--resume", folder, "--iters", "12"] + launch)
    out, err = proc.communicate(timeout=HANG)
    assert proc.returncode == 0, err
    _, ckpt = checkpoint_of(root)
    assert ckpt["step"] == 12
    assert pd.read_csv(os.path.join(folder, "logs.csv"))["iter"].tolist() == [2, 4, 6, 8, 10, 12]


def two_nodes(args, address):
    return [start_train(args + ["--dist", "ddp", "--num_proc_per_node", "1", "--world_size", "2", "--node_rank", str(i),
                        "--dist_address", address], start_new_session=True) for i in (0, 1)]


@pytest.mark.slow
def test_two_node_launches_make_one_run(tmp_path):
    root = tmp_path / "logs"
    npid = ["--problem", "npid", "--num_negatives", "64", "--iters", "4", "--log_freq", "2", "--eval_freq", "-1"] + TINY
    npid += ["--subset", "128"]  # batch 64 over 2 ranks: an epoch is 2 steps
    nodes = two_nodes(npid + ["--root", str(root)], free_address())
    for node in nodes:
        out, err = node.communicate(timeout=HANG)
        assert node.returncode == 0, err
    folder, ckpt = checkpoint_of(root)
    assert ckpt["step"] == 4 and len(ckpt["rng"]) == 2
    # NPID's bank is updated with every rank's embeddings: after an epoch no row is left as initialised
    start = init_memory_bank(128, 128, torch.Generator().manual_seed(0))
    assert (ckpt["model"]["_extra_state"]["memory_bank"] != start).any(dim=1).all()
    proc = start_train(["--resume", folder, "--iters", "6"])  # on one process: fresh random streams, same folder
    out, err = proc.communicate(timeout=HANG)
    assert proc.returncode == 0, err
    assert checkpoint_of(root)[1]["step"] == 6


@pytest.mark.slow
def test_torchrun_launches_from_its_environment(tmp_path):
    root = tmp_path / "logs"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", free_address().split(":")[1],
                           os.path.join(ROOT, "train.py")] + PRETRAIN + ["--root", str(root)],
                          cwd=ROOT, capture_output=True, text=True, timeout=HANG)
    assert proc.returncode == 0, proc.stderr
    folder, ckpt = checkpoint_of(root)
    assert ckpt["step"] == 4 and len(ckpt["rng"]) == 2
    # resumed under torchrun: rank 0 holds the run folder's lock, the other ranks follow it
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", free_address().split(":")[1],
                           os.path.join(ROOT, "train.py"), "--resume", folder, "--iters", "6"],
                          cwd=ROOT, capture_output=True, text=True, timeout=HANG)
    assert proc.returncode == 0, proc.stderr
    assert checkpoint_of(root)[1]["step"] == 6


@pytest.mark.slow
def test_two_processes_list_the_unreadable_images_one_process_meets(tmp_path):
    data = image_folder(tmp_path / "data")
    args = folder_run(data, tmp_path / "one", "--iters", "3", "--workers", "0")
    one = start_train(args)
    two = start_train(folder_run(data, tmp_path / "two", "--iters", "3", "--workers", "0") +
              ["--dist", "ddp", "--num_proc_per_node", "2", "--dist_address", free_address()])
    for proc in (one, two):
        out, err = proc.communicate(timeout=HANG)
        assert proc.returncode == 0, err
    lists = [(folder / "unreadable.txt").read_text() for folder in (only_run(tmp_path / "one"), only_run(tmp_path / "two"))]
    assert lists[0] and lists[0] == lists[1]  # each rank meets half of them: the list is their union


def wait_for_rows(root, rows, procs, limit=240):
    start = time.time()
    while time.time() - start < limit and all(p.poll() is None for p in procs):
        csvs = list(root.glob("runs/*/logs.csv"))
        if csvs and len(pd.read_csv(csvs[0])) >= rows:
            return
        time.sleep(0.2)
    raise AssertionError("training did not get going: " + "".join(p.stderr.read() for p in procs if p.poll() is not None))


@pytest.mark.slow
def test_a_killed_node_ends_the_other_within_the_timeout(tmp_path):
    root = tmp_path / "logs"
    nodes = two_nodes(PRETRAIN + ["--iters", "100000", "--log_freq", "1", "--save_freq", "1", "--dist_timeout", "60",
                                  "--root", str(root)], free_address())
    wait_for_rows(root, 2, nodes)
    os.killpg(nodes[1].pid, signal.SIGKILL)  # node 1 and its worker die at once
    killed = time.time()
    out, err = nodes[0].communicate(timeout=120)
    assert nodes[0].returncode == dist.LOST_GROUP and time.time() - killed < 90
    assert "train.py: error: rank 0 lost the process group (another rank died or hangs)" in err, err
    _, ckpt = checkpoint_of(root)  # the last good checkpoint still loads
    assert ckpt["step"] >= 1  # step 1 was saved before step 2's row; step 2's save may have been cut off


@pytest.mark.slow
def test_a_killed_worker_stops_its_node_and_is_named_in_one_line(tmp_path):
    root = tmp_path / "logs"
    proc = start_train(PRETRAIN + ["--iters", "100000", "--log_freq", "1", "--dist", "ddp", "--num_proc_per_node", "2",
                           "--dist_address", free_address(), "--root", str(root)])
    wait_for_rows(root, 2, [proc])
    workers = [int(p) for p in subprocess.run(["pgrep", "-f", "-P", str(proc.pid), "multiprocessing.spawn"],
                                              capture_output=True, text=True).stdout.split()]
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    errors = [line for line in err.splitlines() if "error" in line.lower() or "warn" in line.lower()]
    assert len(errors) == 1 and re.search(r"^train.py: error: rank 1 failed \(signal SIGKILL\)", errors[0]), err
    assert "Traceback" not in err and "resource_tracker" not in err and "lost the process group" not in err, err


@pytest.mark.slow
def test_ctrl_c_stops_every_rank_after_the_same_step_with_a_checkpoint(tmp_path):
    root = tmp_path / "logs"
    proc = start_train(PRETRAIN + ["--iters", "100000", "--log_freq", "1", "--dist", "ddp", "--num_proc_per_node", "2",
                           "--dist_address", free_address(), "--root", str(root)], start_new_session=True)
    wait_for_rows(root, 2, [proc])
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the launcher and both workers
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err
    folder, ckpt = checkpoint_of(root)
    assert f"stopped by signal 2 at step {ckpt['step']}; continue with: python train.py --resume {folder}" in out
    assert len(ckpt["rng"]) == 2


@pytest.mark.slow
def test_linear_eval_on_two_processes_matches_one(runs, tmp_path):
    args = ["--problem", "eval", "--encoder_ckpt", runs["pre"], "--subset", "512", "--epochs", "10", "--batch_size", "128",
            "--linear_bn", "true", "--knn_k", "20", "--test_subset", "1000"]
    one = start_train(args + ["--root", str(tmp_path / "one")])
    out1, err = one.communicate(timeout=HANG)
    assert one.returncode == 0, err
    two = start_train(args + ["--root", str(tmp_path / "two"), "--dist", "ddp", "--num_proc_per_node", "2",
                      "--dist_address", free_address()])
    out2, err = two.communicate(timeout=HANG)
    assert two.returncode == 0, err
    done = [re.search(r"^done eval .*$", out, re.M).group(0).split(" ", 3)[-1] for out in (out1, out2)]
    assert done[0] == done[1]  # test_acc1, test_acc5, knn_acc1, knn_acc5 all equal


@pytest.mark.slow
def test_amp_bf16_on_cpu_trains_with_a_finite_falling_loss(tmp_path):
    args = ["--problem", "simclr", "--iters", "24", "--log_freq", "4", "--amp", "true", "--amp_dtype", "bf16",
            "--eval_freq", "-1", "--root", str(tmp_path)] + TINY[:-4] + ["--opt", "adamw", "--lr", "2e-3", "--workers", "0"]
    folder, _ = train.main(args)
    loss = pd.read_csv(os.path.join(folder, "logs.csv"))["train_loss"]
    assert loss.notna().all() and (loss < 1e3).all()
    assert loss.iloc[-2:].mean() < loss.iloc[:2].mean() - 0.05


@pytest.mark.slow
def test_the_per_node_launcher_returns_the_runs_result_and_gives_back_what_it_changed(tmp_path):
    """In-process, as a notebook or a sweep calls train.main: the result of rank 0's run comes back, a failure is
    a SystemExit with the ranks' code, and the signal handlers and logger level are the caller's again."""
    import logging
    import yaml
    logger = logging.getLogger("torch.multiprocessing.spawn")

    def state():
        return signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), logger.level
    before = state()
    launch = ["--dist", "ddp", "--num_proc_per_node", "2", "--dist_address", free_address()]
    folder, metrics = train.main(PRETRAIN + launch + ["--root", str(tmp_path), "--eval_freq", "0", "--knn_k", "20"])
    assert folder == str(only_run(tmp_path)) and state() == before
    done = yaml.safe_load(open(os.path.join(folder, "done.yaml")))
    assert set(metrics) == {"knn_acc1", "knn_acc5"} and all(done[k] == v for k, v in metrics.items())
    with pytest.raises(SystemExit) as failed:  # the ranks find no data: each stops with a user's error
        train.main(PRETRAIN + launch + ["--root", str(tmp_path), "--data", "folder", "--data_root", str(tmp_path / "no")])
    assert failed.value.code == 2 and state() == before
