"""tools/results.py on a tiny budget: every method pretrains and is probed, the table and the figure are written,
and a second run skips what the first finished."""
import json
import os

import pandas as pd
import pytest

from conftest import TINY
from tools import results

PROBE = ["--subset", "512", "--batch_size", "512", "--iters", "3", "--workers", "0", "--knn_k", "20"]
# 1,024 images: configs/fmnist_dcv2.yaml clusters each head's bank into 1,000
PRETRAIN = TINY + ["--subset", "1024", "--iters", "4", "--log_freq", "2", "--knn_k", "20"]


def tool(tmp_path, methods, pretrain=PRETRAIN):
    doc = tmp_path / "results.md"
    if not doc.exists():
        doc.write_text(f"# before\n{results.BEGIN}\nold table\n{results.END}\n# after\n")
    argv = ["--methods", *methods, "--root", str(tmp_path / "logs"), "--eval_every", "2", "--amp", "false",
            "--pretrain_flags", " ".join(pretrain), "--probe_flags", " ".join(PROBE), "--table", str(doc),
            "--plot", str(tmp_path / "fig.png")]
    return results.main(argv), doc


@pytest.fixture(scope="module")
def everything(tmp_path_factory, fmnist):
    tmp_path = tmp_path_factory.mktemp("results")
    rows, doc = tool(tmp_path, ["simclr", "swav", "npid", "dcv2", "random", "pixels"])
    return tmp_path, rows, doc


def test_every_method_gets_a_row_a_curve_and_a_saved_result(everything):
    tmp_path, rows, doc = everything
    assert [r["method"] for r in rows] == ["simclr", "swav", "npid", "dcv2", "random", "pixels"]
    text = doc.read_text()
    assert text.startswith("# before\n") and text.endswith("# after\n") and "old table" not in text
    table = text.split(results.BEGIN)[1].split(results.END)[0].strip().splitlines()
    assert table[0].startswith("| method | config | pretraining (min) | img/s | linear | kNN |")
    assert len(table) == 2 + 6 and all(line.count("|") == 10 for line in table)
    for r, line in zip(rows, table[2:]):
        probe = pd.read_csv(os.path.join(r["probe"], "logs.csv")).iloc[-1]  # what the probe run itself logged
        assert (r["linear"], r["knn"]) == (probe["test_acc1"], probe["knn_acc1"])
        assert f"| {r['linear']:.2f} | {r['knn']:.2f} |" in line
        assert json.loads((tmp_path / "logs" / "results" / f"{r['method']}.json").read_text())["linear"] == r["linear"]
    for r in rows[:4]:  # the pretrained methods: time, rate and a kNN curve with the monitor's points
        assert r["minutes"] > 0 and r["img_per_s"] > 0
        (t_knn, knn), (t_loss, loss) = results.curves(r["pretraining"])
        assert len(knn) == 2 and list(t_knn) == sorted(t_knn) and len(loss) == 2
    assert "minutes" not in rows[5] and rows[4]["minutes"] == 0
    png = (tmp_path / "fig.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10000


def test_a_rerun_trains_nothing_again_and_writes_the_same_table(everything, monkeypatch, capsys):
    tmp_path, rows, doc = everything
    before = doc.read_text()

    def no_training(argv):
        raise AssertionError(f"trained again: {argv}")

    monkeypatch.setattr(results.train, "main", no_training)
    again, _ = tool(tmp_path, ["simclr", "swav", "npid", "dcv2", "random", "pixels"])
    assert again == rows and doc.read_text() == before
    assert capsys.readouterr().out.count("done before") == 6


def test_one_method_redone_keeps_the_other_rows_of_the_table(everything, monkeypatch):
    tmp_path, rows, doc = everything
    before = doc.read_text()
    (tmp_path / "logs" / "results" / "pixels.json").unlink()  # as after a change to what pixels' row measures
    probes = []
    probe = results.train.main

    def count(argv):
        probes.append(argv)
        return probe(argv)

    monkeypatch.setattr(results.train, "main", count)
    again, _ = tool(tmp_path, ["pixels"])
    assert [r["method"] for r in again] == ["pixels"] and len(probes) == 1
    table = doc.read_text().split(results.BEGIN)[1].split(results.END)[0].strip().splitlines()
    assert [line.split("|")[1].strip() for line in table[2:]] == [results.METHODS[r["method"]] for r in rows]
    assert doc.read_text() == before  # the same probe of the same pixels gives the same row


def test_an_interrupted_probe_keeps_the_pretraining_and_changed_flags_redo_it(tmp_path, fmnist, monkeypatch):
    real = results.train.main

    def stop_at_probe(argv):
        if "--encoder_ckpt" in argv:
            raise KeyboardInterrupt
        return real(argv)

    monkeypatch.setattr(results.train, "main", stop_at_probe)
    with pytest.raises(KeyboardInterrupt):
        tool(tmp_path, ["random"])
    saved = json.loads((tmp_path / "logs" / "results" / "random.json").read_text())
    assert "linear" not in saved
    monkeypatch.setattr(results.train, "main", real)
    rows, _ = tool(tmp_path, ["random"])
    assert rows[0]["pretraining"] == saved["pretraining"]
    changed, _ = tool(tmp_path, ["random"], PRETRAIN + ["--width", "0.25"])
    assert changed[0]["pretraining"] != saved["pretraining"]
    runs = [f for f in (tmp_path / "logs" / "runs").iterdir() if f.name.endswith("results_random")]
    assert len(runs) == 2
