"""tools/benchmark.py's modes on tiny sizes: each prints its rows, records them and ends with one JSON line."""
import json

import pytest

from conftest import TINY
from tools import benchmark


@pytest.fixture
def recorded(tmp_path, monkeypatch):
    path = tmp_path / "benchmarks.md"
    monkeypatch.setattr(benchmark, "RESULTS", str(path))
    return path


def last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_loader_mode_times_the_baseline_and_the_repo_on_generated_jpegs(tmp_path, recorded, capsys):
    argv = ["loader", "--data_root", str(tmp_path / "jpegs"), "--images", "24", "--workers", "0", "--batch_size", "4",
            "--batches", "2", "--crops", "2x32+2x16"]
    benchmark.main(argv)
    out = last_json(capsys)
    assert out["mode"] == "loader"
    assert out["ratio"] == pytest.approx(out["repo_img_s"] / out["baseline_img_s"])
    assert len(list((tmp_path / "jpegs" / "train").glob("*/*.JPEG"))) == 24
    text = recorded.read_text()
    assert "python -m tools.benchmark loader --data_root" in text and "repo / baseline" in text


def test_step_mode_times_a_config(recorded, capsys):
    benchmark.main(["step"] + TINY + ["--no_record"])
    out = last_json(capsys)
    assert out["mode"] == "step" and not recorded.exists()
    assert out["img_s"] == pytest.approx(64 / out["s_per_step"])  # TINY's batch of 64, in the time of one step


def test_scale_mode_times_each_methods_own_work(recorded, capsys):
    benchmark.main(["scale", "--fraction", "0.001", "--repeats", "1"])
    out = last_json(capsys)
    names = [k for k in out if k != "mode"]
    assert len(names) == 7 and all(out[k] > 0 for k in names)  # every one timed
    assert sum(k.startswith("NPID") for k in names) == 2 and sum(k.startswith("DCv2") for k in names) == 2
    assert "scale: Sinkhorn" in recorded.read_text()


def test_crop_recipes_parse_as_swav_does():
    assert benchmark.parse_crops("2x224+6x96") == [(224, (0.14, 1.0))] * 2 + [(96, (0.05, 0.14))] * 6
    assert benchmark.parse_crops("2x224") == [(224, (0.08, 1.0))] * 2


def test_fingerprint_digest_is_stable_and_sees_one_changed_weight(runs, tmp_path):
    import shutil
    import torch
    from tools.fingerprint import digest
    copy = tmp_path / "copy"
    shutil.copytree(runs["pre"], copy)
    assert digest(copy) == digest(runs["pre"])
    ckpt = torch.load(copy / "checkpoint.pth.tar", weights_only=True)
    name = next(k for k, v in ckpt["model"].items() if torch.is_tensor(v) and v.is_floating_point())
    ckpt["model"][name].view(-1)[0] += 1e-6  # one weight, barely moved
    torch.save(ckpt, copy / "checkpoint.pth.tar")
    weights, logs = digest(copy)
    assert weights != digest(runs["pre"])[0] and logs == digest(runs["pre"])[1]
