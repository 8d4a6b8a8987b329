"""train.py end to end on a Fashion-MNIST subset: pretrain, evaluate, resume, and refuse bad input."""
import os
import re
import signal
import time

import exman
import pandas as pd
import pytest
import torch
import yaml

import train
from conftest import ROOT, TINY, saved, start_train, train_cli


def test_pretrain_writes_an_exman_run_folder(runs):
    pre = runs["pre"]
    assert sorted(os.listdir(pre)) == ["backbone.pth", "checkpoint.pth.tar", "done.yaml", "log.txt", "logs.csv",
                                       "params.yaml", "train.lock"]
    assert yaml.safe_load(open(os.path.join(pre, "done.yaml"))) == dict(step=6, **runs["pre_metrics"])
    logs = pd.read_csv(os.path.join(pre, "logs.csv"))
    assert logs["iter"].tolist() == [2, 4, 6]
    assert {"epoch", "lr", "train_loss", "img_per_s", "knn_acc1"} <= set(logs.columns)
    assert logs["knn_acc1"].notna().tolist() == [False, True, True]  # eval_freq 4, and at the end
    assert logs["train_loss"].notna().all() and (logs["train_loss"] > 0).all()
    params = yaml.safe_load(open(os.path.join(pre, "params.yaml")))
    assert params["problem"] == "simclr" and params["width"] == 0.125 and params["iters"] == 6
    info = exman.Index(runs["root"]).info()
    assert len(info) == 2 and set(info["problem"]) == {"simclr", "eval"}
    ckpt = saved(pre)
    assert ckpt["step"] == 6 and ckpt["args"]["problem"] == "simclr"
    exported = saved(pre, "backbone.pth")
    assert exported["backbone_spec"]["in_channels"] == 1 and "fc.weight" not in exported["backbone"]


def test_linear_eval_scores_the_encoder(runs):
    m = runs["lin_metrics"]
    assert set(m) == {"test_acc1", "test_acc5", "knn_acc1", "knn_acc5"}
    assert 40 < m["test_acc1"] <= 100 and m["test_acc1"] <= m["test_acc5"]  # ten classes: chance is 10%
    assert 40 < m["knn_acc1"] <= 100
    logs = pd.read_csv(os.path.join(runs["lin"], "logs.csv"))
    assert logs["test_acc1"].iloc[-1] == pytest.approx(m["test_acc1"])
    # --eval_only --ckpt re-scores the trained probe and gets the same numbers
    _, again = train.main(["--problem", "eval", "--eval_only", "true", "--ckpt", runs["lin"], "--root", runs["root"],
                           "--tmp", "true", "--subset", "512", "--knn_k", "20", "--test_subset", "1000"])
    assert again["test_acc1"] == pytest.approx(m["test_acc1"]) and again["knn_acc1"] == pytest.approx(m["knn_acc1"])


def test_raw_pixel_and_random_init_baselines(tmp_path):
    _, pixels = train.main(["--problem", "eval", "--encoder_ckpt", "pixels", "--root", str(tmp_path), "--subset", "512",
                            "--epochs", "2", "--batch_size", "128", "--opt", "sgd", "--lr", "0.1", "--knn_k", "20",
                            "--test_subset", "1000"])
    assert pixels["test_acc1"] > 40
    folder, _ = train.main(["--problem", "simclr", "--iters", "0", "--root", str(tmp_path), "--knn_k", "20"] + TINY)
    assert saved(folder)["step"] == 0


def test_lbfgs_probe_resumed_equals_uninterrupted(tmp_path):
    """The full-batch L-BFGS probe: its curvature history is in the checkpoint, so a resumed probe ends the same."""
    args = ["--problem", "eval", "--encoder_ckpt", "pixels", "--subset", "512", "--batch_size", "512", "--opt", "lbfgs",
            "--lr", "1", "--lr_scaling", "none", "--lr_schedule", "const", "--linear_bn", "true", "--log_freq", "5",
            "--knn_k", "20", "--test_subset", "1000"]
    whole, metrics = train.main(args + ["--iters", "20", "--root", str(tmp_path / "a")])
    half, _ = train.main(args + ["--iters", "10", "--root", str(tmp_path / "b")])
    resumed, again = train.main(["--resume", half, "--iters", "20"])
    a, b = saved(whole), saved(resumed)
    assert b["step"] == 20 and b["optimizer"]["state"][0]["n_iter"] == 20
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert again == metrics and metrics["test_acc1"] > 60
    losses = pd.read_csv(os.path.join(whole, "logs.csv"))["train_loss"].dropna()
    assert (losses.diff().dropna() < 0).all()  # a line search never goes uphill


@pytest.mark.slow
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path):
    args = ["--problem", "simclr", "--iters", "10", "--log_freq", "1", "--save_freq", "1000", "--width", "0.25",
            "--eval_freq", "-1"] + TINY[:-4] + ["--opt", "lars", "--lr", "0.5", "--warmup", "0.3", "--workers", "0"]
    whole = train_cli(args + ["--root", str(tmp_path / "a")])
    assert whole.returncode == 0, whole.stderr
    proc = start_train(args + ["--root", str(tmp_path / "b")])
    csv = None
    while proc.poll() is None:  # interrupt once three steps are logged
        found = list((tmp_path / "b").glob("runs/*/logs.csv"))
        if found and len(pd.read_csv(found[0])) >= 3:
            csv = found[0]
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.05)
    out, err = proc.communicate(timeout=300)
    assert csv is not None and proc.returncode == 128 + signal.SIGINT, err
    folder = str(csv.parent)
    stopped_at = saved(folder)["step"]
    assert 3 <= stopped_at < 10
    assert f"python train.py --resume {folder}" in out
    resumed = train_cli(["--resume", folder])
    assert resumed.returncode == 0, resumed.stderr
    a, b = saved(str(next((tmp_path / "a").glob("runs/*")))), saved(folder)
    assert b["step"] == 10
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    logs = pd.read_csv(os.path.join(folder, "logs.csv"))
    assert logs["iter"].tolist() == list(range(1, 11))  # no duplicated or missing rows


def help_text(problem, capsys):
    with pytest.raises(SystemExit) as exit:
        train.main(["--problem", problem, "--help"])
    assert exit.value.code == 0
    return capsys.readouterr().out


def test_help_lists_the_flags_of_the_chosen_problem(capsys):
    simclr, evaluation = help_text("simclr", capsys), help_text("eval", capsys)
    assert "--temperature" in simclr and "--num_crops" in simclr
    assert "--encoder_ckpt" in evaluation and "--temperature" not in evaluation
    npid, dcv2 = help_text("npid", capsys), help_text("dcv2", capsys)
    assert "--num_negatives" in npid and "--memory_momentum" in npid and "--num_clusters" not in npid
    assert "--num_clusters" in dcv2 and "--crops_for_mb" in dcv2


def write_yaml(path, values):
    path.write_text(yaml.safe_dump(values))
    return str(path)


BAD = {
    "unknown config key": (lambda d: ["--config", write_yaml(d / "c.yaml", {"temprature": 0.2})], "unknown config key 'temprature'"),
    "unknown flag": (lambda d: ["--temprature", "0.2"], "unrecognized arguments: --temprature"),
    "wrong yaml type": (lambda d: ["--config", write_yaml(d / "c.yaml", {"lr": "fast"})], "config key 'lr'"),
    "wrong flag type": (lambda d: ["--batch_size", "many"], "--batch_size"),
    "bad choice": (lambda d: ["--opt", "adam"], "--opt"),
    "unknown problem": (lambda d: ["--problem", "byol"], "unknown problem 'byol'"),
    "missing config": (lambda d: ["--config", str(d / "none.yaml")], "config file not found"),
    "multi-crop lists": (lambda d: ["--num_crops", "2", "6", "--size_crops", "28"], "one value per crop size"),
    "missing data": (lambda d: ["--data", "cifar10", "--data_root", str(d / "nowhere")], "cifar10 not found"),
    "batch larger than data": (lambda d: ["--subset", "100", "--batch_size", "256"], "--batch_size 256"),
    "no encoder": (lambda d: ["--problem", "eval"], "needs --encoder_ckpt"),
    "missing checkpoint": (lambda d: ["--problem", "eval", "--encoder_ckpt", str(d / "run")], "no checkpoint at"),
    "not a checkpoint": (lambda d: ["--problem", "eval", "--encoder_ckpt", write_yaml(d / "x.pth", {"a": 1})],
                         "is not a checkpoint"),
    "resume nothing": (lambda d: ["--resume", str(d)], "no checkpoint at"),
    "batch not split evenly": (lambda d: ["--dist", "ddp", "--num_proc_per_node", "2", "--batch_size", "63"],
                               "--batch_size 63 must divide by the number of processes (2)"),
    "sync_bn on cpu": (lambda d: ["--dist", "ddp", "--num_proc_per_node", "2", "--sync_bn", "true", "--device", "cpu"],
                       "--sync_bn needs GPUs"),
    "node rank": (lambda d: ["--dist", "ddp", "--world_size", "2", "--node_rank", "2"], "--node_rank 2 must be in"),
    "address": (lambda d: ["--dist", "ddp", "--dist_address", "localhost"], "must be host:port"),
    "npid crops": (lambda d: ["--problem", "npid", "--num_crops", "2"], "NPID takes one crop per image, not --num_crops [2]"),
    "too many clusters": (lambda d: ["--problem", "dcv2", "--subset", "512", "--batch_size", "64", "--num_clusters", "600"],
                          "--num_clusters 600 exceeds the 512 images of a rank's memory bank"),
    "crops for the bank": (lambda d: ["--problem", "dcv2", "--crops_for_mb", "0", "2"],
                           "--crops_for_mb [0, 2] names crops beyond the 2 there are"),
    "lbfgs pretraining": (lambda d: ["--subset", "256", "--arch", "resnet18", "--width", "0.125", "--opt", "lbfgs"],
                          "argument --opt: invalid choice: 'lbfgs'"),
    "lbfgs augmented": (lambda d: ["--problem", "eval", "--encoder_ckpt", "pixels", "--subset", "100", "--batch_size", "100",
                                   "--opt", "lbfgs", "--precompute_features", "false"], "--opt lbfgs needs --precompute_features true"),
    "bank kNN without NPID": (lambda d: ["--problem", "eval", "--encoder_ckpt", "pixels", "--knn_memory_bank", "true"],
                              "--knn_memory_bank needs --encoder_ckpt"),
    "bicubic in memory": (lambda d: ["--interpolation", "bicubic"], "--interpolation bicubic is for image folders"),
    "bicubic on the device": (lambda d: ["--data", "folder", "--data_root", str(d), "--decode", "device",
                                         "--interpolation", "bicubic"], "--interpolation bicubic needs --decode workers"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_leaves_no_run_folder(tmp_path, capsys, case):
    make_args, message = BAD[case]
    root = tmp_path / "logs"
    with pytest.raises(SystemExit) as exit:
        train.main(make_args(tmp_path) + ["--root", str(root)])
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 or err[0].startswith("usage:"), err
    assert err[-1].startswith("train.py: error:") and message in err[-1], err[-1]
    assert not (root / "runs").exists() or not os.listdir(root / "runs")


def test_eval_only_refuses_a_pretraining_run(runs, capsys):
    with pytest.raises(SystemExit):
        train.main(["--problem", "eval", "--eval_only", "true", "--ckpt", runs["pre"], "--root", runs["root"]])
    assert "is a 'simclr' run, not a linear (eval) run" in capsys.readouterr().err
    assert len(os.listdir(os.path.join(runs["root"], "runs"))) == 2


@pytest.mark.parametrize("config", sorted(os.listdir(os.path.join(ROOT, "configs"))))
def test_every_config_parses(config):
    from utils.config import parse_args
    path = os.path.join(ROOT, "configs", config)
    args = parse_args(["--config", path], train.PROBLEMS)
    values = yaml.safe_load(open(path))
    assert args.problem in train.PROBLEMS and values
    for key, value in values.items():  # every key reaches args with its type (YAML's 8.0e-3 is a float, 4 an int)
        assert getattr(args, key) == value, key


def test_demo_flags_never_train_the_random_init_backbone(monkeypatch):
    from utils.config import parse_args
    from tools.demo import pretrain_argvs
    monkeypatch.chdir(ROOT)  # the demo names its configs relative to the repository
    simclr, random_init = (parse_args(argv, train.PROBLEMS) for argv in pretrain_argvs(["--iters", "1000", "--seed", "1"]))
    assert (simclr.iters, simclr.seed, simclr.eval_freq, simclr.amp) == (1000, 1, -1, False)
    assert (random_init.iters, random_init.seed, random_init.name) == (0, 1, "random_init")
    # when bf16 is chosen the demo pretrains under bf16 autocast, unless the user's flags say otherwise
    assert parse_args(pretrain_argvs([], bf16=True)[0], train.PROBLEMS).amp is True
    assert parse_args(pretrain_argvs(["--amp", "false"], bf16=True)[0], train.PROBLEMS).amp is False


def test_the_demo_picks_the_precision_its_timed_trial_found_faster(monkeypatch, capsys):
    from tools import demo
    monkeypatch.setattr(demo, "native_bf16", lambda: False)
    assert demo.bf16_is_faster(TINY) is False and capsys.readouterr().out == ""  # emulated bf16: no trial
    monkeypatch.setattr(demo, "native_bf16", lambda: True)  # here the trial runs on any CPU
    chose = demo.bf16_is_faster(TINY, rounds=1, steps=1)
    fp32, bf16, which = re.search(r"fp32 (\d+) img/s, bf16 autocast (\d+) img/s: pretraining in (\w+)",
                                  capsys.readouterr().out).groups()
    assert chose == (int(bf16) > int(fp32)) or int(bf16) == int(fp32)  # the printed rates are rounded
    assert which == ("bf16" if chose else "fp32")


@pytest.mark.parametrize("config", sorted(os.listdir(os.path.join(ROOT, "configs"))))
def test_configs_list_only_what_differs_from_the_defaults(config):
    from utils.config import build_parser
    values = yaml.safe_load(open(os.path.join(ROOT, "configs", config)))
    defaults = vars(build_parser(values["problem"], train.PROBLEMS).parse_args([]))
    assert [k for k, v in values.items() if k != "problem" and defaults[k] == v] == []


def test_dry_run_prints_every_flag_with_its_source_and_the_schedule_and_writes_nothing(tmp_path, capsys):
    config = os.path.join(ROOT, "configs", "fmnist_simclr.yaml")  # 600 steps, warm-up 0.05, T 0.2, batch 256
    train.main(["--config", config, "--lr", "0.2", "--dry_run", "true", "--root", str(tmp_path)])
    out = capsys.readouterr().out
    assert re.search(r"--lr +0\.2 +command line", out) and re.search(r"--temperature +0\.2 +config", out)
    assert re.search(r"--knn_k +200 +default", out)
    assert "steps: 234 per epoch, 600 in all" in out and "0.2 at peak (step 30)" in out
    assert re.search(r"adamw group: \d+ tensors, \d+ parameters, weight decay 1e-05", out)
    assert "crops: 20 px at scale 0.2-1 + 20 px at scale 0.2-1" in out
    assert not (tmp_path / "runs").exists()
    folder, _ = train.main(TINY + ["--iters", "2", "--eval_freq", "-1", "--root", str(tmp_path)])
    capsys.readouterr()
    train.main(["--resume", folder, "--iters", "4", "--dry_run", "true"])
    out = capsys.readouterr().out
    assert re.search(r"--width +0\.125 +resumed run", out) and re.search(r"--iters +4 +command line", out)
    assert saved(folder)["step"] == 2 and len(os.listdir(tmp_path / "runs")) == 1


def test_a_probes_dry_run_reads_sizes_and_runs_no_encoder(runs, capsys, monkeypatch):
    """configs/fmnist_eval.yaml's recipe, printed without extracting a feature: the encoder is only read."""
    def no_forward(*_):
        raise AssertionError("the dry run ran the encoder")
    monkeypatch.setattr(train, "extract_features", no_forward)
    monkeypatch.setattr("models.backbones.ResNet.forward", no_forward)
    config = os.path.join(ROOT, "configs", "fmnist_eval.yaml")
    train.main(["--config", config, "--encoder_ckpt", runs["pre"], "--subset", "512", "--dry_run", "true",
                "--root", runs["root"]])
    out = capsys.readouterr().out
    assert re.search(r"--opt +'lbfgs' +config", out) and re.search(r"--batch_size +512 +resolved by the problem", out)
    assert "data: fmnist, 512 training images" in out  # counted, not embedded
