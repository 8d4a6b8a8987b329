"""What does not fit is named in one line: a resumed run whose flags build other shapes, an encoder of an
architecture this repo lacks or that contradicts the flags, odd entries in user files, a DDP port in use."""
import os
import socket

import pytest
import torch

import train
from conftest import TINY, train_cli
from test_bad_data import image_folder, refused_line
from utils import checkpoint, dist
from utils.config import Flags
from utils.errors import UserError

QUICK = TINY + ["--iters", "2", "--log_freq", "1", "--eval_freq", "-1"]


@pytest.mark.parametrize("problem, flags, named, where", [
    ("simclr", ["--width", "0.25"], "--width 0.125 there, 0.25 here", "backbone."),
    ("simclr", ["--head_hidden_dims", "32"], "--head_hidden_dims [-1] there, [32] here", "head.0.weight: [64, 64] there"),
    ("npid", ["--embedding_dim", "64"], "--embedding_dim 128 there, 64 here",
     "_extra_state.memory_bank: [512, 128] there, [512, 64] here"),
])
def test_resume_with_another_shape_names_the_flag_and_both_values(tmp_path, capsys, problem, flags, named, where):
    extra = ["--num_negatives", "64"] if problem == "npid" else []
    folder, _ = train.main(QUICK + extra + ["--problem", problem, "--root", str(tmp_path)])
    capsys.readouterr()
    line = refused_line(["--resume", folder] + flags, capsys)
    assert named in line and where in line, line
    assert torch.load(os.path.join(folder, checkpoint.CHECKPOINT), weights_only=True)["step"] == 2  # untouched


def test_an_encoder_of_an_architecture_this_repo_lacks_is_one_line(tmp_path, capsys, runs):
    exported = torch.load(os.path.join(runs["pre"], checkpoint.BACKBONE), weights_only=True)
    exported["backbone_spec"]["arch"] = "resnet9"
    exported.pop("checksum")  # (a file of another version of this repo, which kept none; an edited one fails it)
    torch.save(exported, tmp_path / "other.pth")
    line = refused_line(["--problem", "eval", "--encoder_ckpt", str(tmp_path / "other.pth"), "--root", str(tmp_path)],
                        capsys, tmp_path)
    assert "its backbone is 'resnet9', which this repo cannot build" in line


def test_finetune_trains_the_encoders_backbone_and_refuses_flags_that_contradict_it(runs, capsys, tmp_path):
    base = ["--problem", "finetune", "--encoder_ckpt", runs["pre"], "--subset", "512", "--root", str(tmp_path)]
    line = refused_line(base + ["--width", "0.5"], capsys, tmp_path)
    assert "--width 0.5 contradicts --encoder_ckpt" in line and "whose backbone has width 0.125" in line
    line = refused_line(base + ["--arch", "resnet50"], capsys, tmp_path)
    assert "--arch resnet50 contradicts" in line
    printed = train.main(base + ["--width", "0.125", "--dry_run", "true"])  # the encoder's own value is no contradiction
    assert any(p.startswith("--arch ") and "'resnet18'" in p and p.endswith("resolved by the problem") for p in printed)
    printed = train.main(["--problem", "finetune", "--encoder_ckpt", "none", "--dry_run", "true"])
    assert any(p.startswith("--arch ") and "'resnet50'" in p for p in printed)  # no encoder: the usual default


def test_a_symlink_loop_among_the_class_folders_is_one_line(tmp_path, capsys):
    data = image_folder(tmp_path / "data", per_class=2, broken={})
    os.symlink("loop", data / "train" / "loop")
    line = refused_line(["--data", "folder", "--data_root", str(data), "--root", str(tmp_path / "logs")], capsys,
                        tmp_path / "logs")
    assert f"{data / 'train' / 'loop'} cannot be followed" in line


def test_a_label_list_line_that_looks_like_a_number_but_is_not_is_one_line(tmp_path, capsys):
    (tmp_path / "list.txt").write_text("1\n2\n²\n", encoding="utf-8")
    line = refused_line(["--problem", "eval", "--encoder_ckpt", "pixels", "--label_subset", str(tmp_path / "list.txt"),
                         "--root", str(tmp_path)], capsys, tmp_path)
    assert "listed by index, not '²'" in line


@pytest.mark.slow
def test_a_ddp_port_in_use_is_one_line_naming_the_address(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        run = train_cli(QUICK + ["--dist", "ddp", "--num_proc_per_node", "2", "--dist_address", address,
                                 "--dist_timeout", "60", "--root", str(tmp_path)])
    assert run.returncode == 2
    err = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"train.py: error: --dist_address {address}: the port is in use"), err


def test_a_rendezvous_on_a_port_in_use_is_one_line_too(tmp_path):
    """Where the launcher's own check cannot look (torchrun, or a port taken in between)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(UserError, match=f"--dist_address {address}: the port is in use"):
            dist._setup(Flags(device="cpu", dist_timeout=10, dist_address=address), 0, 2, 0, 1,
                        f"tcp://{address}")
