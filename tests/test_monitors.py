"""The collapse monitors: effective rank, prototype usage and span, the online probe (which leaves the encoder's
steps bit for bit as they were), the warning on a collapsed run and its silence on a healthy one."""
import math
import os

import pandas as pd
import pytest
import torch
import torch.nn as nn

import nbformat

import train
from conftest import ROOT, TINY, saved
from models.monitors import STRETCH, CollapseWatch, OnlineProbe, effective_rank, prototype_usage, span_share


def orthonormal(n, d, seed=0):
    q, _ = torch.linalg.qr(torch.randn(max(n, d), max(n, d), generator=torch.Generator().manual_seed(seed)))
    return q[:n, :d]


@pytest.mark.parametrize("k", [1, 5, 40])
def test_effective_rank_of_a_rank_k_matrix_is_k(k):
    u, v = orthonormal(256, k, seed=1), orthonormal(k, 128, seed=2)
    assert effective_rank(3.0 * u @ v) == pytest.approx(k, rel=1e-3)


def test_effective_rank_of_identical_rows_is_one_and_of_noise_is_high():
    assert effective_rank(torch.ones(64, 32)) == pytest.approx(1.0, rel=1e-3)
    assert effective_rank(torch.randn(512, 32, generator=torch.Generator().manual_seed(0))) > 28


def test_prototype_usage_on_hand_made_assignments():
    weight = torch.eye(4, 8)  # prototypes e0..e3
    z = torch.eye(8)[[0, 0, 1]]  # two images at prototype 0, one at prototype 1
    used, entropy = prototype_usage(z, weight, temperature=1e-3)  # nearly one-hot codes
    mean_code = torch.tensor([2 / 3, 1 / 3])
    assert used == 0.5
    assert entropy == pytest.approx(float(-(mean_code * mean_code.log()).sum()) / math.log(4), abs=1e-4)
    assert prototype_usage(torch.eye(8)[[2, 2, 2]], weight, 1e-3) == (0.25, pytest.approx(0.0, abs=1e-4))


def test_span_share_is_one_inside_the_prototypes_span_and_zero_outside():
    weight = torch.eye(8)[:3] * 2.0
    inside, outside = torch.eye(8)[[0, 1, 2]], torch.eye(8)[[5, 6]]
    assert span_share(inside, weight) == pytest.approx(1.0)
    assert span_share(outside, weight) == pytest.approx(0.0, abs=1e-7)
    assert span_share(torch.tensor([[1.0, 0, 0, 1, 0, 0, 0, 0]]), weight) == pytest.approx(0.5)


def test_online_probe_learns_separable_features():
    gen = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(5, 16, generator=gen)
    probe = OnlineProbe(16, 5, lr=0.1, device="cpu")
    for _ in range(60):
        y = torch.randint(5, (64,), generator=gen)
        probe.step(centres[y] + torch.randn(64, 16, generator=gen), y)
    probe.accuracy()  # the learning interval
    for _ in range(5):
        y = torch.randint(5, (64,), generator=gen)
        probe.step(centres[y] + torch.randn(64, 16, generator=gen), y)
    assert probe.accuracy() > 95
    y = torch.tensor([0, 1, -1, -1])  # unknown labels are left out
    probe.step(torch.randn(4, 16, generator=gen), y)
    assert float(probe.seen) == 2


@pytest.mark.slow
def test_the_online_probe_leaves_the_encoders_steps_bit_identical(tmp_path, fmnist):
    flags = TINY + ["--problem", "simclr", "--iters", "20", "--log_freq", "5", "--eval_freq", "-1"]
    with_probe, _ = train.main(flags + ["--root", str(tmp_path / "on")])
    without, _ = train.main(flags + ["--root", str(tmp_path / "off"), "--online_probe", "false", "--monitors", "false"])
    a, b = saved(with_probe), saved(without)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    on, off = (pd.read_csv(os.path.join(f, "logs.csv")) for f in (with_probe, without))
    assert on["train_loss"].tolist() == off["train_loss"].tolist()
    assert {"online_acc", "rankme_backbone", "rankme_head"} <= set(on) and not {"online_acc", "rankme_head"} & set(off)
    assert "online_probe" in a and "online_probe" not in b
    assert on["online_acc"].between(0, 100).all() and on["online_acc"].iloc[-1] > 100 / 10  # above chance


def rows(values, every=10):
    return [(every * (i + 1), dict(loss_minus_lnk=v, rankme_head=20.0)) for i, v in enumerate(values)]


def test_collapse_watch_warns_once_after_a_stretch_and_not_on_a_dip():
    watch = CollapseWatch("swav", 128, uniform_loss=math.log(100))
    lines = [watch.check(step, row) for step, row in rows([0.3, 0.005, 0.004, 0.2] + [0.003] * 10)]
    fired = [i for i, line in enumerate(lines) if line]
    # the dip of steps 10-30 is too short; the stretch from step 40 reaches STRETCH steps at row 40 + STRETCH
    assert fired == [(40 + STRETCH) // 10 - 1]
    assert "ln K = 4.605" in lines[fired[0]] and "--num_prototypes" in lines[fired[0]]
    healthy = CollapseWatch("simclr", 128)
    assert not any(healthy.check(step, row) for step, row in rows([-0.5] * 20))  # no ln K for SimCLR


def test_collapse_watch_sees_a_rank_that_fell_to_a_line():
    watch = CollapseWatch("simclr", 128)
    lines = [watch.check(10 * (i + 1), dict(rankme_head=r)) for i, r in enumerate([12.0, 3.5] + [1.1] * 8)]
    assert sum(bool(line) for line in lines) == 1 and "effective rank is 1.10 of 128" in next(filter(None, lines))


def test_a_collapsed_swav_run_warns_once_on_the_terminal_and_in_log_txt(tmp_path, fmnist, capsys):
    """One prototype: every prediction is uniform, the loss is ln 1 = 0 at every step, the trivial solution."""
    folder, _ = train.main(TINY + ["--problem", "swav", "--num_prototypes", "1", "--iters", "60", "--log_freq", "10",
                                   "--eval_freq", "-1", "--head_hidden_dims", "64", "--root", str(tmp_path)])
    printed = capsys.readouterr().out
    logged = open(os.path.join(folder, "log.txt")).read()
    for text in (printed, logged):
        assert text.count("may be collapsing") == 1 and "within 0.01 of ln K = 0.000" in text
        assert text.count("--num_prototypes 1 on a 128-dimensional embedding") == 1  # the start-up warning
    logs = pd.read_csv(os.path.join(folder, "logs.csv"))
    assert (logs["loss_minus_lnk"].abs() < 1e-6).all() and (logs["proto_used"] == 1).all()
    assert len(notebook_monitors()) == 6 and set(notebook_monitors()) <= set(logs)  # what colabs/read_logs plots


def notebook_monitors():
    """The logs.csv columns colabs/read_logs.ipynb plots as monitors: the keys of its MONITORS."""
    nb = nbformat.read(os.path.join(ROOT, "colabs", "read_logs.ipynb"), as_version=4)
    (cell,) = [c.source for c in nb.cells if c.cell_type == "code" and "MONITORS = {" in c.source]
    scope = {}
    exec(cell[cell.index("MONITORS = {"):cell.index("shown =")], scope)
    return list(scope["MONITORS"])


def test_a_healthy_run_stays_silent_and_logs_every_monitor(runs):
    assert "may be collapsing" not in open(os.path.join(runs["pre"], "log.txt")).read()
    logs = pd.read_csv(os.path.join(runs["pre"], "logs.csv")).dropna(subset=["train_loss"])
    assert logs[["rankme_backbone", "rankme_head", "online_acc"]].notna().all().all()
    assert (logs["rankme_head"] > 1.5).all()


@pytest.mark.parametrize("prototypes, warned", [(100, True), (128, False)])
def test_start_up_warning_for_fewer_prototypes_than_embedding_dimensions(fmnist, prototypes, warned, capsys):
    lines = train.main(TINY + ["--problem", "swav", "--num_prototypes", str(prototypes), "--dry_run", "true"])
    found = [line for line in lines if "directions that no prototype points along" in line]
    assert len(found) == warned
    if warned:
        assert found[0].startswith("warning: --num_prototypes 100 on a 128-dimensional embedding leaves 28 directions")
