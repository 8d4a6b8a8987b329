"""Nothing lost, nothing silent: non-finite steps, out-of-range flags, missing data, failed saves, changed
optimisers, environment mistakes, preempted jobs and crafted data files."""
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

import train
from conftest import TINY, only_run, saved, start_train, train_cli as cli
from utils import checkpoint, config

QUICK = TINY + ["--iters", "4", "--log_freq", "2", "--eval_freq", "-1"]


def refused(argv, tmp_path, capsys):
    """train.main(argv) must exit 2 with one line and make no run folder; returns that line."""
    root = tmp_path / "logs"
    with pytest.raises(SystemExit) as exit:
        train.main(argv + ([] if "--root" in argv else ["--root", str(root)]))
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error:"), err
    assert not (root / "runs").exists() or not os.listdir(root / "runs")
    return err[0]


@pytest.mark.slow
def test_a_non_finite_step_stops_the_run_and_writes_nothing(tmp_path):
    train.main(QUICK + ["--root", str(tmp_path)])
    folder = only_run(tmp_path)
    files = {name: (folder / name).read_bytes() for name in (checkpoint.CHECKPOINT, checkpoint.BACKBONE)}
    broken = cli(["--resume", str(folder), "--lr", "1e38", "--iters", "20"])
    assert broken.returncode == 1
    last = broken.stderr.strip().splitlines()[-1]
    assert last.startswith("train.py: error: simclr ") and "the checkpoint of step 4 is intact" in last, last
    assert {name: (folder / name).read_bytes() for name in files} == files  # the good run's files, byte for byte
    assert "done" not in broken.stdout


@pytest.mark.parametrize("argv", [["--batch_size", "-64"], ["--batch_size", "0"], ["--log_freq", "0"], ["--save_freq", "0"],
                                  ["--lr", "-1"], ["--lr", "nan"], ["--lr", "inf"], ["--temperature", "-0.2"],
                                  ["--temperature", "0"], ["--epochs", "-3"], ["--subset", "-5"], ["--width", "0"],
                                  ["--embedding_dim", "0"], ["--knn_k", "0"], ["--warmup", "1.5"], ["--iters", "-2"],
                                  ["--problem", "swav", "--epsilon", "0"], ["--problem", "npid", "--memory_momentum", "1"],
                                  ["--problem", "dcv2", "--num_clusters", "10", "0"],
                                  ["--problem", "eval", "--encoder_ckpt", "pixels", "--min_scale", "0"]])
def test_an_out_of_range_value_is_one_line_naming_the_flag_and_its_range(tmp_path, capsys, argv):
    flag, value = [a for a in argv if a.startswith("--")][-1], argv[-1]
    line = refused(argv, tmp_path, capsys)
    assert f"argument {flag}: {value} is out of range: must be" in line, line


def test_an_out_of_range_config_value_is_refused_too(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"batch_size": -64}))
    assert "config key 'batch_size': -64 is out of range: must be >= 1" in refused(["--config", str(path)], tmp_path, capsys)


def test_documented_sentinels_stay_valid():
    args = config.parse_args(["--iters", "-1", "--eval_freq", "-1", "--head_hidden_dims", "-1", "--size_crops", "-1",
                              "--num_proc_per_node", "-1", "--sync_bn_group_size", "-1"], train.PROBLEMS)
    assert (args.iters, args.eval_freq, args.head_hidden_dims, args.size_crops) == (-1, -1, [-1], [-1])


def test_every_numeric_flag_of_every_problem_declares_its_range():
    undeclared = []
    for problem in train.PROBLEMS:
        for action in config.build_parser(problem, train.PROBLEMS)._actions:
            kind = getattr(action.type, "inner", action.type)
            if kind in (int, float) and not action.choices:
                undeclared.append(f"{problem}: {action.option_strings[0]}")
    assert undeclared == []


def test_a_data_root_the_user_typed_is_used_or_refused(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    line = refused(["--data", "fmnist", "--data_root", str(empty)], tmp_path, capsys)
    assert f"Fashion-MNIST not found in --data_root {empty}" in line


def test_a_save_that_fails_half_way_keeps_the_last_checkpoint_and_leaves_no_temporary_file(tmp_path, monkeypatch, capsys):
    real_save = torch.save
    calls = []

    def full_disk(obj, f, *a, **kw):
        calls.append(1)
        if len(calls) <= 2:  # step 2: checkpoint and backbone are written
            return real_save(obj, f, *a, **kw)
        f.write(b"\0" * 1000)  # part of the file, then the disk is full
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(SystemExit) as exit:
        train.main(QUICK + ["--save_freq", "2", "--root", str(tmp_path)])
    assert exit.value.code == 1
    folder = only_run(tmp_path)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (f"train.py: error: no space left on device while writing {folder / checkpoint.CHECKPOINT}; "
                    f"the checkpoint of step 2 is intact")
    monkeypatch.setattr(torch, "save", real_save)
    assert saved(folder)["step"] == 2
    assert not [f for f in os.listdir(folder) if checkpoint.TMP in f]


@pytest.mark.slow
def test_resume_removes_the_temporary_files_of_dead_processes(tmp_path):
    train.main(QUICK + ["--root", str(tmp_path)])
    folder = only_run(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = folder / f"{checkpoint.CHECKPOINT}{checkpoint.TMP}{dead.pid}"
    stale.write_bytes(b"half a checkpoint")
    resumed = cli(["--resume", str(folder), "--iters", "6"])
    assert resumed.returncode == 0, resumed.stderr
    assert not stale.exists()


@pytest.mark.slow
def test_resume_with_another_optimiser_starts_it_afresh_with_a_warning(tmp_path):
    train.main(QUICK + ["--root", str(tmp_path)])  # AdamW
    folder = only_run(tmp_path)
    resumed = cli(["--resume", str(folder), "--opt", "sgd", "--iters", "6"])
    assert resumed.returncode == 0, resumed.stderr
    assert "warning: --opt sgd starts afresh (the checkpoint's optimiser is adamw)" in resumed.stderr
    ckpt = saved(folder)
    assert ckpt["step"] == 6 and ckpt["args"]["opt"] == "sgd"
    assert all(set(s) == {"momentum_buffer"} for s in ckpt["optimizer"]["state"].values())  # SGD's state, not AdamW's


def test_environment_mistakes_are_one_line(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert f"--root {a_file} is a file" in refused(["--root", str(a_file)], tmp_path, capsys)
    assert "cannot make a run folder under --root" in refused(QUICK + ["--root", str(a_file / "sub")], tmp_path, capsys)
    assert "--name 'a/b' is part of a folder name" in refused(["--name", "a/b"], tmp_path, capsys)
    if not torch.cuda.is_available():
        assert "no CUDA GPU is visible" in refused(["--device", "cuda"], tmp_path, capsys)
    assert "is not a device" in refused(["--device", "gpu0"], tmp_path, capsys)


@pytest.mark.slow
def test_a_machine_without_git_runs_training(tmp_path):
    """exman imports GitPython, which fails to import where no git program is on the PATH (GPU images, slim
    containers); the run must not depend on it."""
    env = dict(os.environ, PATH=str(tmp_path))  # an empty folder: no git, python by its full path
    env.pop("GIT_PYTHON_REFRESH", None)
    run = cli(QUICK + ["--root", str(tmp_path / "logs")], env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (only_run(tmp_path / "logs") / "logs.csv").exists()


@pytest.mark.slow
def test_resume_auto_starts_a_run_then_continues_it_after_a_preemption(tmp_path):
    args = QUICK[:-6] + ["--iters", "20", "--log_freq", "1", "--save_freq", "1", "--eval_freq", "-1",
                         "--name", "job", "--resume", "auto", "--root", str(tmp_path)]
    proc = start_train(args)
    while proc.poll() is None:  # preempt it once a checkpoint exists
        if list(tmp_path.glob("runs/*/checkpoint.pth.tar")):
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM
    folder = only_run(tmp_path)
    stopped_at = saved(folder)["step"]
    assert 1 <= stopped_at < 20
    again = cli(args)  # the scheduler restarts the same command
    assert again.returncode == 0, again.stderr
    assert f"resuming {folder} at step {stopped_at}" in again.stdout
    assert only_run(tmp_path) == folder and saved(folder)["step"] == 20
    third = cli(args)  # that run is finished: the same command starts a new one
    assert third.returncode == 0, third.stderr
    assert len(list((tmp_path / "runs").iterdir())) == 2


def test_resume_auto_needs_a_name(tmp_path, capsys):
    assert "--resume auto needs --name" in refused(["--resume", "auto"], tmp_path, capsys)


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_crafted_cifar_file_is_refused_without_running_its_code(tmp_path, capsys):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": Payload(marker), b"labels": [0]}, f)
    line = refused(["--data", "cifar10", "--data_root", str(tmp_path)], tmp_path, capsys)
    assert "which a CIFAR batch never does: refused" in line and not marker.exists()
