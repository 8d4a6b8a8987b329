"""A job preempted at any moment of its run's end, then restarted with the same `--resume auto` command, finishes
its own run in its own folder with the figures of an uninterrupted run; a second signal stops at once in one
line; the run's signal handlers are gone after it."""
import os
import signal

import pytest
import torch
import yaml

import train
from conftest import TINY, saved
from utils import checkpoint, runlog

ARGS = TINY + ["--problem", "simclr", "--iters", "4", "--log_freq", "1", "--save_freq", "2", "--eval_freq", "0",
               "--knn_k", "20", "--name", "job", "--resume", "auto"]


def launch(root):
    return train.main(ARGS + ["--root", str(root)])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, fmnist):
    folder, metrics = launch(tmp_path_factory.mktemp("whole"))
    return folder, metrics


def kill_self():
    os.kill(os.getpid(), signal.SIGTERM)


def at_last_step(monkeypatch):
    real = train.train_step

    def step(model, net, optimizer, scaler, batch, n):
        if n == 3:
            kill_self()
        return real(model, net, optimizer, scaler, batch, n)
    monkeypatch.setattr(train, "train_step", step)


def in_final_evaluation(monkeypatch):
    real = train.Run.evaluate

    def evaluate(run):
        kill_self()
        return real(run)
    monkeypatch.setattr(train.Run, "evaluate", evaluate)


def in_final_save(monkeypatch):
    real = checkpoint.save

    def save(folder, step, *rest):
        if step == 4:
            kill_self()
        return real(folder, step, *rest)
    monkeypatch.setattr(checkpoint, "save", save)


def killed_between_the_two_files_of_the_final_save(monkeypatch):
    """SIGKILL after checkpoint.pth.tar of the last step is written, before backbone.pth."""
    real = checkpoint.save_atomic

    def save_atomic(obj, path):
        if path.endswith(checkpoint.BACKBONE) and "step" not in obj and saved_step(path) == 4:
            raise SystemExit(128 + signal.SIGKILL)  # the process dies here, nothing after runs
        return real(obj, path)
    monkeypatch.setattr(checkpoint, "save_atomic", save_atomic)


def saved_step(backbone_path):
    return saved(os.path.dirname(backbone_path))["step"]


@pytest.mark.parametrize("preempt", [at_last_step, in_final_evaluation, in_final_save,
                                     killed_between_the_two_files_of_the_final_save])
@pytest.mark.slow
def test_a_run_preempted_at_its_end_is_finished_by_the_same_command(tmp_path, monkeypatch, capsys, uninterrupted,
                                                                   preempt):
    with monkeypatch.context() as m:
        preempt(m)
        with pytest.raises(SystemExit) as stop:
            launch(tmp_path)
    assert stop.value.code in (128 + signal.SIGTERM, 128 + signal.SIGKILL)
    (folder,) = (tmp_path / "runs").iterdir()
    assert not (folder / runlog.DONE).exists()
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    if stop.value.code == 128 + signal.SIGTERM:
        assert f"continue with: python train.py --resume {folder}" in out.out

    again, metrics = launch(tmp_path)  # the scheduler requeues the same command
    assert again == str(folder) and len(list((tmp_path / "runs").iterdir())) == 1
    assert metrics == uninterrupted[1]
    assert yaml.safe_load((folder / runlog.DONE).read_text()) == dict(step=4, **metrics)
    whole = saved(uninterrupted[0], checkpoint.BACKBONE)["backbone"]
    for key, value in saved(str(folder), checkpoint.BACKBONE)["backbone"].items():
        assert torch.equal(value, whole[key]), key

    third, _ = launch(tmp_path)  # finished: the same command now starts a new run
    assert third != str(folder) and len(list((tmp_path / "runs").iterdir())) == 2


def test_a_second_signal_stops_at_once_in_one_line_and_the_run_resumes(tmp_path, monkeypatch, capsys, uninterrupted):
    real = train.train_step

    def step(model, net, optimizer, scaler, batch, n):
        if n == 3:
            kill_self()
            kill_self()  # the impatient user: Ctrl-C twice
        return real(model, net, optimizer, scaler, batch, n)
    with monkeypatch.context() as m:
        m.setattr(train, "train_step", step)
        with pytest.raises(SystemExit) as stop:
            launch(tmp_path)
    assert stop.value.code == 128 + signal.SIGTERM
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    line = [s for s in out.out.splitlines() if s.startswith("stopped by signal")]
    assert len(line) == 1 and "at once, in step 3" in line[0] and "the checkpoint of step 2 is intact" in line[0]
    (folder,) = (tmp_path / "runs").iterdir()
    assert saved(str(folder))["step"] == 2
    _, metrics = launch(tmp_path)
    assert metrics == uninterrupted[1]


def test_the_run_restores_the_signal_handlers_it_found(tmp_path, monkeypatch, uninterrupted):
    def mine(signum, frame):
        pass
    before = {sig: signal.signal(sig, mine) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        launch(tmp_path)  # a run that ends
        assert signal.getsignal(signal.SIGINT) is mine and signal.getsignal(signal.SIGTERM) is mine
        with monkeypatch.context() as m:
            in_final_evaluation(m)
            with pytest.raises(SystemExit):
                launch(tmp_path)  # and one that is stopped
        assert signal.getsignal(signal.SIGINT) is mine and signal.getsignal(signal.SIGTERM) is mine
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
