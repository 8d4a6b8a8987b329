"""Faults where runs really run: signals to the whole process group, loader workers that die, checkpoints that rot or
come from an older layout, names the OS gives as bytes, values the front door must refuse, a rendezvous that cannot
be reached. Each ends in one line, or is survived."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

import train
from conftest import HANG, ROOT, TINY, only_run, saved, start_train, train_cli
from test_bad_data import folder_run, image_folder, refused_line
from utils import checkpoint


def wait_for_line(stream, text):
    """Read `stream` until a line holds `text`; returns the lines read."""
    lines = []
    for line in stream:
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"the process ended without printing {text!r}: {''.join(lines)[-2000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_whole_process_group_stops_after_the_step_with_a_checkpoint(tmp_path, sig):
    """SLURM's and systemd's SIGTERM, a terminal's Ctrl-C: every process of the group gets it, the loader's workers
    too; they leave it to the training process, which stops after its step with a checkpoint and resumes."""
    data = image_folder(tmp_path / "data", broken={})
    proc = start_train(folder_run(data, tmp_path / "logs", "--iters", "200", "--workers", "2", "--log_freq", "1",
                                  "--save_freq", "1000"), start_new_session=True)
    wait_for_line(proc.stdout, "run folder")
    folder = only_run(tmp_path / "logs")
    while not (folder / "logs.csv").exists():  # a step done: the workers are up and serving batches
        time.sleep(0.05)
    os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=HANG)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and "DataLoader worker" not in err
    step = saved(folder)["step"]
    assert 0 < step < 200 and f"stopped by signal {int(sig)} at step {step}" in open(folder / "log.txt").read()


@pytest.mark.slow
def test_a_loader_worker_killed_alone_is_one_line_naming_the_intact_checkpoint(tmp_path):
    data = image_folder(tmp_path / "data", broken={})
    proc = start_train(folder_run(data, tmp_path / "logs", "--iters", "400", "--workers", "2", "--log_freq", "1"))
    wait_for_line(proc.stdout, "run folder")
    folder = only_run(tmp_path / "logs")
    while not (folder / "logs.csv").exists():
        time.sleep(0.05)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    os.kill(int(workers[0]), signal.SIGKILL)  # as the OOM killer does
    out, err = proc.communicate(timeout=HANG)
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]
    assert proc.returncode == 1 and len(lines) == 1, err
    assert "DataLoader worker" in lines[0] and ("no checkpoint was written" in lines[0] or "is intact" in lines[0])


def test_a_worker_that_dies_while_handing_over_a_batch_is_named_as_a_dead_worker():
    """The race the test above meets now and then: the worker dies after its batch is announced, before the batch's
    shared memory is received (EOFError from multiprocessing), where PyTorch's own check has not yet seen it."""
    from data.loader import dead_worker, received

    class Worker:
        def __init__(self, pid, alive):
            self.pid, self.alive = pid, alive

        def is_alive(self):
            return self.alive

    class Loader:
        def __init__(self, workers):
            self._workers = workers

        def __iter__(self):
            return self

        def __next__(self):
            raise EOFError

    with pytest.raises(RuntimeError) as died:
        next(received(Loader([Worker(11, True), Worker(12, False)])))
    assert dead_worker(died.value) == "DataLoader worker (pid(s) 12) exited unexpectedly while handing over a batch"
    with pytest.raises(EOFError):  # every worker alive: not a death, the error as it was
        next(received(Loader([Worker(11, True)])))


def test_ctrl_c_while_waiting_for_a_held_run_is_one_line(tmp_path):
    from test_bad_data import holder
    folder, _ = train.main(TINY + ["--iters", "1", "--eval_freq", "-1", "--root", str(tmp_path)])
    held = holder(folder)
    try:
        proc = start_train(["--resume", folder, "--lock_wait", "600"])
        wait_for_line(proc.stdout, "waiting up to")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=HANG)
    finally:
        held.kill()
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130 and lines == ["train.py: error: stopped by signal 2 before training began"], err


def test_a_rendezvous_host_that_does_not_resolve_and_values_out_of_reach_are_one_line(tmp_path, capsys):
    root = ["--root", str(tmp_path)]
    line = refused_line(TINY + root + ["--dist", "ddp", "--dist_address", "no-such-host.invalid:29500",
                                       "--num_proc_per_node", "2"], capsys, tmp_path)
    assert "the host 'no-such-host.invalid' does not resolve" in line
    assert "out of range" in refused_line(TINY + root + ["--dist_timeout", "1e16"], capsys, tmp_path)
    assert "out of range" in refused_line(TINY + root + ["--epochs", "1e308"], capsys, tmp_path)
    line = refused_line(TINY + root + ["--min_scale_crops", "0.5", "--max_scale_crops", "0.3"], capsys, tmp_path)
    assert "--min_scale_crops 0.5 is above --max_scale_crops 0.3" in line
    bomb = "name: [&a [x, x, x, x, x, x, x, x, x], &b [*a, *a, *a, *a, *a, *a, *a, *a, *a], " \
           "&c [*b, *b, *b, *b, *b, *b, *b, *b, *b], &d [*c, *c, *c, *c, *c, *c, *c, *c, *c], [*d, *d, *d, *d]]\n"
    (tmp_path / "bomb.yaml").write_text(bomb)
    line = refused_line(["--config", str(tmp_path / "bomb.yaml")] + root, capsys, tmp_path)
    assert len(line) < 300 and "is not a value of --name" in line
    assert "is a folder: give a YAML file" in refused_line(["--config", str(tmp_path)] + root, capsys, tmp_path)
    os.mkfifo(tmp_path / "fifo")
    line = refused_line(["--config", str(tmp_path / "fifo")] + root, capsys, tmp_path)
    assert "is not a regular file" in line


def test_a_flipped_bit_in_a_checkpoint_is_one_line_and_an_older_layout_resumes_with_a_warning(tmp_path, capsys):
    folder, _ = train.main(TINY + ["--iters", "2", "--eval_freq", "-1", "--root", str(tmp_path)])
    ckpt = saved(folder)
    weight = next(k for k in ckpt["model"] if k.endswith("conv1.weight"))
    ckpt["model"][weight].view(-1).view(torch.int32)[7] ^= 1 << 3  # one bit of one weight, as a bad disk flips it
    torch.save(ckpt, os.path.join(folder, checkpoint.CHECKPOINT))
    line = refused_line(["--resume", folder, "--iters", "3"], capsys)
    assert line.endswith("checkpoint.pth.tar is corrupt: its contents do not match the checksum they were saved with "
                         "(a damaged disk or copy); restore it from a copy, or start afresh")
    line = refused_line(["--problem", "eval", "--encoder_ckpt", folder, "--root", str(tmp_path)], capsys)
    assert "is corrupt" in line
    old = {k: v for k, v in saved(folder).items() if k not in ("scaler", "rank_state", "rng", "checksum")}
    torch.save(old, os.path.join(folder, checkpoint.CHECKPOINT))  # an older layout, or a pruned file
    resumed, _ = train.main(["--resume", folder, "--iters", "3"])
    assert saved(resumed)["step"] == 3 and "of an older layout" in capsys.readouterr().err
    torch.save(dict(old, args={k: v for k, v in old["args"].items() if k != "problem"}),
               os.path.join(folder, checkpoint.CHECKPOINT))
    assert "its saved flags name no problem" in refused_line(["--resume", folder], capsys)


@pytest.mark.slow
def test_resume_auto_finds_a_scratch_run_and_a_run_whose_params_yaml_was_lost(tmp_path, capsys):
    base = TINY + ["--eval_freq", "-1", "--root", str(tmp_path), "--resume", "auto", "--name", "job", "--iters", "4"]
    first = train_cli(base[:-1] + ["2", "--tmp", "true"])
    assert first.returncode == 0, first.stderr
    (scratch,) = (tmp_path / "tmp").iterdir()
    os.remove(scratch / "done.yaml")  # unfinished, as if stopped in its last phase: --iters 4 continues it
    again, _ = train.main(base + ["--tmp", "true"])
    assert again == str(scratch) and saved(again)["step"] == 4  # the scratch run continued, not a new one
    indexed = train_cli(base[:-1] + ["2"])
    assert indexed.returncode == 0, indexed.stderr
    (run,) = (tmp_path / "runs").iterdir()
    os.remove(run / "done.yaml")
    (run / "params.yaml").write_text("")  # a power loss while it was written
    continued, _ = train.main(base)
    assert continued == str(run) and saved(run)["step"] == 4
    assert "the run is known by the flags its checkpoint saved (name 'job'" in capsys.readouterr().err


def test_a_file_name_that_is_not_utf8_is_listed_and_the_run_goes_on(tmp_path):
    data = image_folder(tmp_path / "data", broken={})
    good = next((data / "train" / "a").iterdir())
    latin = os.path.join(os.fsencode(data / "train" / "a"), b"caf\xe9.jpg")  # an archive unzipped from Windows
    os.rename(os.fsencode(good), latin)
    with open(os.path.join(os.fsencode(data / "train" / "a"), b"broken-\xe9.jpg"), "wb") as f:
        f.write(b"not a jpeg")
    result = train_cli(folder_run(data, tmp_path / "logs", "--iters", "3", "--max_unreadable", "0.5"))
    assert result.returncode == 0, result.stderr
    listed = open(only_run(tmp_path / "logs") / "unreadable.txt", "rb").read()
    assert b"broken-\xe9.jpg" in listed  # the bytes the OS gave, as --skip_images reads them back


def test_a_file_size_limit_the_os_enforces_stops_the_checkpoint_write_in_one_line(tmp_path):
    """RLIMIT_FSIZE (`ulimit -f`, a quota or a full disk as the OS raises it: EFBIG) below the checkpoint's size."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (300 * 1024, 300 * 1024))  # Python ignores SIGXFSZ: writes raise

    result = train_cli(TINY + ["--problem", "simclr", "--iters", "4", "--save_freq", "2", "--eval_freq", "-1",
                               "--root", str(tmp_path / "logs")], preexec_fn=limit)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("train.py: error: file too large while writing ") and "checkpoint.pth.tar" in last, last
    assert "Traceback" not in result.stderr
    folder = only_run(tmp_path / "logs")
    assert not [name for name in os.listdir(folder) if "checkpoint" in name or checkpoint.TMP in name]  # nothing torn


def test_a_disk_that_fills_mid_run_stops_in_one_line_and_keeps_the_last_checkpoint(tmp_path):
    """A 4 MB tmpfs: the first checkpoint (2.4 MB) fits, the second's temporary file beside it does not (ENOSPC)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("no tmpfs can be mounted here (mount needs root and CAP_SYS_ADMIN)")
    try:
        result = train_cli(TINY + ["--problem", "simclr", "--iters", "6", "--save_freq", "2", "--log_freq", "1",
                                   "--eval_freq", "-1", "--root", str(disk)])
        assert result.returncode == 1, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("train.py: error: no space left on device while writing ") and last.endswith(
            "checkpoint.pth.tar; the checkpoint of step 2 is intact"), last
        assert "Traceback" not in result.stderr
        folder = only_run(disk)
        ckpt = checkpoint.verified(checkpoint.load(folder / "checkpoint.pth.tar"), folder)
        assert ckpt["step"] == 2 and [n for n in os.listdir(folder) if checkpoint.TMP in n] == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_the_continue_command_is_shell_quoted(tmp_path):
    root = tmp_path / "my runs"
    folder, _ = train.main(TINY + ["--iters", "1", "--eval_freq", "-1", "--root", str(root)])
    assert train.resume_command(folder) == f"python train.py --resume '{folder}'"


def test_a_checkpoint_of_an_earlier_commit_resumes_to_that_commits_own_weights(tmp_path):
    """tests/fixtures/checkpoint_9b0dfa0: 3 steps of a run made by commit 9b0dfa0, and the weights that commit's own
    uninterrupted run had after 6. Resumed here to 6 steps, the run ends with them: bit for bit on the CPU they were
    made on (an AMD EPYC with AVX-512 BF16), within float rounding on another."""
    import shutil
    fixture = os.path.join(ROOT, "tests", "fixtures", "checkpoint_9b0dfa0")
    folder = tmp_path / "runs" / "000001-fixture"
    folder.mkdir(parents=True)
    for name in ("checkpoint.pth.tar", "params.yaml", "logs.csv"):
        shutil.copy(os.path.join(fixture, name), folder / name)
    resumed = train_cli(["--resume", str(folder), "--iters", "6"], env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert resumed.returncode == 0, resumed.stderr
    expected = torch.load(os.path.join(fixture, "uninterrupted_step6.pt"), weights_only=True)
    ckpt = saved(folder)
    assert ckpt["step"] == expected["step"] == 6
    for key, value in expected["model"].items():
        torch.testing.assert_close(ckpt["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_an_allocation_that_fails_is_one_line_naming_what_shrinks_the_run(tmp_path, capsys, monkeypatch):
    from models.simclr import SimCLR
    real = SimCLR.forward

    def forward(self, batch, step):
        if step == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(self, batch, step)
    monkeypatch.setattr(SimCLR, "forward", forward)
    with pytest.raises(SystemExit) as stop:
        train.main(TINY + ["--iters", "3", "--save_freq", "1", "--eval_freq", "-1", "--root", str(tmp_path)])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "%|" not in line]
    assert stop.value.code == 1 and len(lines) == 1
    assert lines[0].startswith("train.py: error: out of memory on the GPU (a batch of 64 images a process): lower "
                               "--batch_size (64), --num_crops / --size_crops, --width or --arch, or add processes "
                               "in step 1; the checkpoint of step 1 is intact; continue with: python train.py --resume")


@pytest.mark.parametrize("where", ["train.lock", "the first line of log.txt", "a later line of log.txt",
                                   "label_subset.txt"])
def test_a_full_disk_while_the_run_writes_its_folder_is_one_line(tmp_path, capsys, monkeypatch, where):
    import builtins
    import errno
    from utils import runlog
    full = OSError(errno.ENOSPC, "No space left on device")
    writes = []
    if where == "train.lock":
        real_write = os.write
        monkeypatch.setattr(runlog.os, "write", lambda fd, data: (_ for _ in ()).throw(full) if b"pid" in data
                            else real_write(fd, data))
    else:
        real_open = builtins.open

        def opened(path, mode="r", *args, **kw):
            name = os.path.basename(str(path))
            if "log.txt" in where and name == "log.txt" and "a" in mode:
                writes.append(path)
                if where.startswith("the first") or len(writes) > 1:
                    raise full
            if where == "label_subset.txt" and name.startswith("label_subset.txt"):
                raise full
            return real_open(path, mode, *args, **kw)
        monkeypatch.setattr(builtins, "open", opened)
    flags = TINY + ["--iters", "2", "--eval_freq", "0", "--knn_k", "20", "--root", str(tmp_path)]
    if where == "label_subset.txt":
        flags = ["--problem", "eval", "--encoder_ckpt", "pixels", "--subset", "512", "--label_fraction", "0.1",
                 "--batch_size", "32", "--iters", "2", "--test_subset", "1000", "--root", str(tmp_path)]
    with pytest.raises(SystemExit) as stop:
        train.main(flags)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "%|" not in line]
    assert stop.value.code == 1 and len(lines) == 1, lines
    name = where.split()[-1] if where != "train.lock" else "train.lock"
    assert lines[0].startswith("train.py: error: no space left on device while writing ") and name in lines[0]


def blocked_on(path):
    """The number of processes waiting for a POSIX lock on `path` (Linux: /proc/locks marks them '->')."""
    inode = os.stat(path).st_ino
    return sum(1 for line in open("/proc/locks") if "->" in line and line.split()[-3].endswith(f":{inode}"))


@pytest.mark.slow
def test_two_first_launches_of_one_name_at_the_same_moment_make_one_run(tmp_path):
    from utils import runlog
    flags = TINY + ["--iters", "3", "--eval_freq", "-1", "--root", str(tmp_path), "--resume", "auto", "--name", "job"]
    with runlog.name_lock(str(tmp_path), "job"):  # both launches look, find nothing, and wait here to make the run
        procs = [start_train(flags) for _ in range(2)]
        lock = os.path.join(tmp_path, "locks", "job.lock")
        while blocked_on(lock) < 2:
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.05)
    results = [p.communicate(timeout=HANG) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], results
    stopped = next(err for p, (_, err) in zip(procs, results) if p.returncode == 2)
    assert "another --resume auto --name job launch started" in stopped and "this one stops" in stopped
    assert len(list((tmp_path / "runs").iterdir())) == 1
