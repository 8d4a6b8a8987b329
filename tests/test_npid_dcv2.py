"""NPID and DeepCluster-v2 end to end on a Fashion-MNIST subset: they learn, and resume exactly (bad input: test_train)."""
import os

import pandas as pd
import pytest
import torch

import train
from conftest import TINY, only_run, saved, train_cli as cli

NPID = ["--problem", "npid", "--num_negatives", "256", "--log_freq", "2", "--lr_schedule", "const"] + TINY
DCV2 = ["--problem", "dcv2", "--num_clusters", "20", "30", "--kmeans_iters", "3", "--head_hidden_dims", "64",
        "--log_freq", "2", "--lr_schedule", "const"] + TINY
SMALL = ["--subset", "256"]  # batch 64: 4 steps an epoch; the resumes below start mid-epoch and then cross into the next


def built(flags):
    """(the untrained model of the problem `flags` names, in training mode; its training images), as a run builds them."""
    from utils.config import parse_args
    _, data, model, _, _ = train.build(parse_args(flags, train.PROBLEMS), torch.device("cpu"))
    return model.train(), data.train


def batches(model, data):
    """The batches of every epoch, as the run makes them for `model` on one process."""
    from data.loader import TrainBatches
    return TrainBatches(data, model.args.batch_size, model.args.seed, model.device, crops=model.crops)


def twins(flags):
    """Two identical untrained models (same seed, same data) of the problem `flags` names, in training mode, and
    their training images."""
    (a, data), (b, _) = built(flags), built(flags)
    return a, b, data


def interrupted_equals_uninterrupted(tmp_path, args, stop, total):
    """Run `total` steps at once, and `stop` steps then a resume to `total`; return both final checkpoints."""
    args = args + ["--eval_freq", "-1"]  # no kNN at the end: only the weights matter here
    whole = cli(args + ["--iters", str(total), "--root", str(tmp_path / "a")])
    assert whole.returncode == 0, whole.stderr
    first = cli(args + ["--iters", str(stop), "--root", str(tmp_path / "b")])
    assert first.returncode == 0, first.stderr
    resumed = cli(["--resume", str(only_run(tmp_path / "b")), "--iters", str(total)])
    assert resumed.returncode == 0, resumed.stderr
    a, b = (saved(only_run(tmp_path / r)) for r in "ab")
    for key in a["model"]:
        if key != "_extra_state":
            assert torch.equal(a["model"][key], b["model"][key]), key
    return a, b


@pytest.mark.slow
@pytest.mark.parametrize("flags", [["--nce_z_momentum", "1"], ["--nce_z_momentum", "0.9", "--memory_init", "network"]])
def test_npid_resumed_mid_epoch_equals_uninterrupted_with_its_bank_and_z(tmp_path, flags):
    a, b = interrupted_equals_uninterrupted(tmp_path, NPID + SMALL + ["--loss_type", "nce"] + flags, stop=6, total=10)
    bank_a, bank_b = a["model"]["_extra_state"], b["model"]["_extra_state"]
    assert torch.equal(bank_a["memory_bank"], bank_b["memory_bank"])
    assert bank_a["z_const"] == bank_b["z_const"] > 0
    torch.testing.assert_close(bank_a["memory_bank"].norm(dim=1), torch.ones(256))


@pytest.mark.parametrize("init", ["random", "network"])
def test_memory_init_network_puts_the_initial_networks_embeddings_in_the_bank(fmnist, init):
    """The pass before the first step writes each image's training-mode embedding, with the crops the run draws."""
    filled, twin, data = twins(NPID + SMALL + ["--memory_init", init])
    random_bank = filled.memory_bank.clone()
    filled.on_epoch_start(0, batches(filled, data))
    if init == "random":
        assert torch.equal(filled.memory_bank, random_bank)
        return
    with torch.no_grad():  # the twin draws the same batches and crops and embeds them itself
        for x, _, idx in batches(twin, data).epoch(0):
            torch.testing.assert_close(filled.memory_bank[idx], twin.embed(twin.augment(x)))
    assert (filled.memory_bank * random_bank).sum(1).abs().mean() < 0.2  # nothing of the random rows is left
    bank = filled.memory_bank.clone()
    filled.on_epoch_start(1, batches(filled, data))  # once per run, not per epoch
    assert torch.equal(filled.memory_bank, bank)


@pytest.mark.parametrize("momentum", [1.0, 0.5])
def test_nce_z_is_the_first_batch_estimate_then_its_moving_average(fmnist, momentum):
    """Z = N mean(exp(scores)) on the first batch; with --nce_z_momentum m < 1 every later batch moves it by (1 - m)."""
    model, data = built(NPID + SMALL + ["--loss_type", "nce", "--nce_z_momentum", str(momentum)])
    images, labels = data.images, data.labels
    estimates = []
    for step, idx in enumerate([torch.arange(64), torch.arange(64, 128), torch.arange(128, 192)]):
        _, logs, out = model(([images[idx].float() / 255], labels[idx], idx), step)  # one view: the whole image
        estimates.append(256 * out["scores"].exp().mean().item())
        model.after_step(step, out)  # the bank moves, so every batch's estimate differs
        expected = estimates[0]
        for e in estimates[1:]:
            expected = momentum * expected + (1 - momentum) * e
        assert float(logs["z_const"]) == pytest.approx(expected, rel=1e-5)
    assert len(set(round(e, 3) for e in estimates)) == 3


def test_dcv2_first_bank_holds_training_mode_embeddings(fmnist):
    """The pass before the first clustering embeds as the training steps do: batch statistics, the run's crops."""
    filled, twin, data = twins(DCV2 + SMALL)
    filled.fill_bank(batches(filled, data), 0)
    with torch.no_grad():
        for slot, (x, _, idx) in enumerate(batches(twin, data).epoch(0)):
            crops = twin.augment(x)
            rows = slice(slot * 64, slot * 64 + 64)
            assert torch.equal(filled.bank_index[rows], idx)
            for b, c in enumerate(twin.args.crops_for_mb):
                torch.testing.assert_close(filled.bank[b, rows], twin.embed([crops[c]]))


@pytest.mark.slow
def test_dcv2_resumed_mid_epoch_equals_uninterrupted_with_its_banks_and_clusters(tmp_path):
    a, b = interrupted_equals_uninterrupted(tmp_path, DCV2 + SMALL, stop=6, total=10)
    assign_a, assign_b = a["model"]["_extra_state"]["assignments"], b["model"]["_extra_state"]["assignments"]
    assert a["model"]["_extra_state"]["clustered_epoch"] == b["model"]["_extra_state"]["clustered_epoch"] == 2
    assert torch.equal(assign_a, assign_b)
    assert assign_a.shape == (2, 256) and (assign_a >= 0).all()  # every image was in the bank at the last clustering
    assert assign_a[0].max() < 20 and assign_a[1].max() < 30
    bank_a, bank_b = a["rank_state"][0], b["rank_state"][0]
    assert torch.equal(bank_a["bank"], bank_b["bank"]) and torch.equal(bank_a["bank_index"], bank_b["bank_index"])
    assert (bank_a["bank_index"] >= 0).all() and bank_a["bank_index"].max() < 256  # every slot holds an image
    torch.testing.assert_close(a["model"]["prototypes.0.weight"].norm(dim=1), torch.ones(20))  # centroids


# 256 images, batch 64: 200 steps are 50 epochs, 50 rounds of k-means and 50 updates of every bank row
LEARN = TINY + ["--subset", "256", "--lr", "4e-3", "--lr_schedule", "const", "--knn_k", "20", "--log_freq", "20"]
METHODS = {"npid": ["--problem", "npid", "--num_negatives", "256", "--loss_type", "cross_entropy"],
           "dcv2": ["--problem", "dcv2", "--num_clusters", "20", "--kmeans_iters", "5", "--head_hidden_dims", "64",
                    "--min_scale_crops", "0.5"]}  # gentler crops: with [0.08, 1] 100 steps on 256 images gain only ~2


@pytest.fixture(scope="module")
def random_init_knn(tmp_path_factory):
    """kNN accuracy of the backbone both methods start from (the same seed builds the same backbone)."""
    _, metrics = train.main(LEARN + METHODS["npid"] + ["--iters", "0", "--root", str(tmp_path_factory.mktemp("init"))])
    return metrics["knn_acc1"]


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_loss_falls_and_knn_beats_the_random_init_backbone(tmp_path, random_init_knn, method):
    folder, metrics = train.main(LEARN + METHODS[method] + ["--iters", "200", "--root", str(tmp_path)])
    loss = pd.read_csv(os.path.join(folder, "logs.csv"))["train_loss"].dropna()
    assert loss.iloc[-1] < 0.8 * loss.iloc[0]
    # measured with seeds 0, 1, 2: +6.8, +4.2, +15.7 (NPID) and +3.1, +8.4, +15.4 (DCv2) over 54.6, 52.0, 48.1 at init;
    # after 100 steps the gain ranged from -3.5 to +7.4: too early to tell learning from the init's luck
    assert metrics["knn_acc1"] > random_init_knn + 2
    if method == "npid":
        assert metrics["bank_knn_acc1"] > 40  # NPID's own kNN against its bank; chance is 10
