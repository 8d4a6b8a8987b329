"""tools/results.py on a tiny budget: every method and seed pretrains, is probed and fine-tuned on all and on a
fraction of the labels, the tables (mean ± std over the seeds) and the figure are written, and a re-run does only
what is missing or stale."""
import argparse
import json

import pytest

from conftest import TINY
from tools import results

PROBE = ["--test_subset", "1000", "--subset", "512", "--iters", "3", "--workers", "0", "--knn_k", "20"]
# 1,024 images: configs/fmnist_dcv2.yaml clusters each head's bank into 1,000
PRETRAIN = TINY + ["--subset", "1024", "--iters", "4", "--log_freq", "2", "--knn_k", "20"]
FINETUNE = ["--test_subset", "1000", "--subset", "512", "--iters", "3", "--batch_size", "32", "--workers", "0",
            "--knn_k", "20", "--amp", "false"]
ALL = ["simclr", "swav", "npid", "dcv2", "random", "pixels"]


def tool(tmp_path, methods, seeds=(0,), pretrain=PRETRAIN, amp="false"):
    doc = tmp_path / "results.md"
    if not doc.exists():
        doc.write_text(f"# before\n{results.BEGIN}\nold table\n{results.END}\n# after\n")
    argv = ["--methods", *methods, "--seeds", *map(str, seeds), "--fractions", "0.1", "--root", str(tmp_path / "logs"),
            "--results", str(tmp_path / "saved"), "--eval_every", "2", "--amp", amp,
            "--pretrain_flags", " ".join(pretrain), "--probe_flags", " ".join(PROBE),
            "--finetune_flags", " ".join(FINETUNE), "--table", str(doc), "--plot", str(tmp_path / "fig.png")]
    return results.main(argv), doc


def table_lines(doc):
    return doc.read_text().split(results.BEGIN)[1].split(results.END)[0].strip().splitlines()


@pytest.fixture(scope="module")
def everything(tmp_path_factory, fmnist):
    tmp_path = tmp_path_factory.mktemp("results")
    (ran, rows), doc = tool(tmp_path, ALL)
    return tmp_path, ran, rows, doc


@pytest.mark.slow
def test_every_method_gets_its_rows_curves_and_saved_steps(everything):
    tmp_path, ran, rows, doc = everything
    assert [r.method for r in ran] == ALL and [m for m, _, _ in rows] == ALL
    text = doc.read_text()
    assert text.startswith("# before\n") and text.endswith("# after\n") and "old table" not in text
    lines = table_lines(doc)
    assert lines[0].startswith("| method | config | pretraining (min) | img/s | seeds | linear | kNN |")
    assert "| on a fraction of the labels (test top-1, %) | linear 10% | fine-tuned 10% |" in lines
    for r in ran:
        saved = json.loads((tmp_path / "saved" / f"{r.method}_seed0.json").read_text())
        assert saved == r.steps
        probe, tenth = saved["probe"], saved["probe 0.1"]
        row = next(line for line in lines if line.startswith(f"| {results.METHODS[r.method]} | "))
        assert f"| 1 | {probe['linear']:.2f} | {probe['knn']:.2f} |" in row
        assert 0 <= tenth["linear"] <= 100 and tenth["linear"] != probe["linear"]  # another probe, on 51 images
        tuned = saved.get("finetune 0.1")
        assert (tuned is None) == (r.method == "pixels")
        labels = (tmp_path / "logs" / "runs").glob(f"*results_{r.method}_finetune")
        assert tuned is None or tuned["folder"] in {str(f) for f in labels}
    for r in ran[:4]:  # the pretrained methods: time, rate and kNN and loss curves with the monitor's points
        pre = r.steps["pretraining"]
        assert pre["minutes"] > 0 and pre["img_per_s"] > 0
        knn = pre["curves"]["knn"]
        assert len(knn) == 2 and [t for t, _ in knn] == sorted(t for t, _ in knn) and len(pre["curves"]["loss"]) == 2
        assert len(pre["curves"]["rankme_head"]) == len(pre["curves"]["loss"]) and pre["curves"]["online_acc"]
        assert bool(pre["curves"]["loss_minus_lnk"]) == (r.method in ("swav", "dcv2"))  # the prototype methods'
    assert "pretraining" not in ran[5].steps and ran[4].steps["pretraining"]["minutes"] == 0
    png = (tmp_path / "fig.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10000


@pytest.mark.slow
def test_a_rerun_trains_nothing_again_and_writes_the_same_tables(everything, monkeypatch, capsys):
    tmp_path, ran, rows, doc = everything
    before = doc.read_text()

    def no_training(argv):
        raise AssertionError(f"trained again: {argv}")

    monkeypatch.setattr(results.train, "main", no_training)
    (again, _), _ = tool(tmp_path, ALL)
    assert [r.steps for r in again] == [r.steps for r in ran] and doc.read_text() == before
    assert capsys.readouterr().out.count("done before") == 6
    # the precision is the machine's, recorded with each step and not in its fingerprint
    (again, _), _ = tool(tmp_path, ALL, amp="true")
    assert capsys.readouterr().out.count("done before") == 6 and doc.read_text() == before
    assert ran[0].steps["pretraining"]["amp"] is False and ran[0].steps["finetune 0.1"]["amp"] is False


def test_the_time_column_says_how_many_seeds_pretrained_under_bf16():
    def steps(amp):
        return dict(pretraining=dict(minutes=2.0, img_per_s=100.0, amp=amp, commit="c", date="d", device="x"),
                    probe=dict(linear=80.0, knn=70.0, commit="c", date="d", device="x"))
    values = dict(linear=[80.0, 80.0], kNN=[70.0, 70.0])
    row = {amps: results.tables([("simclr", values, [steps(a) for a in amps])], []).splitlines()[2]
           for amps in [(True, True), (True, False), (False, False)]}
    assert "| 2.0 (bf16) | 100 |" in row[True, True] and "| 2.0 (bf16 1 of 2) | 100 |" in row[True, False]
    assert "| 2.0 | 100 |" in row[False, False]


@pytest.mark.slow
def test_seeds_give_mean_and_std_and_one_method_redone_keeps_the_other_rows(everything, monkeypatch):
    tmp_path, ran, rows, doc = everything
    calls = []
    real = results.train.main

    def count(argv):
        calls.append(argv)
        return real(argv)

    monkeypatch.setattr(results.train, "main", count)
    (again, rows), _ = tool(tmp_path, ["pixels"], seeds=(0, 1))
    assert len(calls) == 2 and all(a[a.index("--seed") + 1] == "1" for a in calls)  # seed 0 was saved
    tenth = [r.steps["probe 0.1"]["linear"] for r in again]
    assert tenth[0] != tenth[1]  # another seed draws other labelled images
    main, few = [line for line in table_lines(doc) if line.startswith("| raw pixels | ")]
    assert "| 2 |" in main and few == f"| raw pixels | {results.mean_std(tenth)} |  |"
    names = [line.split("|")[1].strip() for line in table_lines(doc)[2:8]]
    assert names == [results.METHODS[m] for m in ALL]  # the others' rows, from their seed 0


def test_mean_std_is_the_sample_standard_deviation():
    assert results.mean_std([]) == "" and results.mean_std([80.0]) == "80.00"
    assert results.mean_std([1.0, 2.0, 3.0]) == "2.00 ± 1.00"


@pytest.mark.slow
def test_an_interrupted_probe_keeps_the_pretraining_and_changed_flags_redo_it(tmp_path, fmnist, monkeypatch):
    real = results.train.main

    def stop_at_probe(argv):
        if "--encoder_ckpt" in argv:
            raise KeyboardInterrupt
        return real(argv)

    monkeypatch.setattr(results.train, "main", stop_at_probe)
    with pytest.raises(KeyboardInterrupt):
        tool(tmp_path, ["random"])
    saved = json.loads((tmp_path / "saved" / "random_seed0.json").read_text())
    assert list(saved) == ["pretraining"]
    monkeypatch.setattr(results.train, "main", real)
    (ran, _), _ = tool(tmp_path, ["random"])
    assert ran[0].steps["pretraining"] == saved["pretraining"]
    (changed, _), _ = tool(tmp_path, ["random"], pretrain=PRETRAIN + ["--width", "0.25"])
    assert changed[0].steps["pretraining"]["folder"] != saved["pretraining"]["folder"]
    runs = [f for f in (tmp_path / "logs" / "runs").iterdir() if f.name.endswith("results_random_seed0")]
    assert len(runs) == 2


def test_a_config_comment_leaves_saved_steps_current_and_a_value_does_not(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    config = tmp_path / "configs" / "fmnist_swav.yaml"
    for name in [results.PROBE, *results.FINETUNE.values()]:
        (tmp_path / name).write_text("lr: 0.1\n")
    monkeypatch.setattr(results, "ROOT", str(tmp_path))
    args = argparse.Namespace(pretrain_flags=[], probe_flags=[], finetune_flags=[], fractions=[0.1], eval_every=400)

    def keys(text):
        config.write_text(text)
        return results.keys("swav", 0, args)

    before = keys("# 13 trials\nnum_prototypes: [1000]\n")
    comment, value = keys("# 17 trials\nnum_prototypes: [1000]\n"), keys("# 13 trials\nnum_prototypes: [300]\n")
    assert set(before) == {"pretraining", "probe", "probe 0.1", "finetune 0.1"}
    for name in before:
        assert comment[name][0] == before[name][0] and comment[name][1] != before[name][1]
        assert value[name][0] != before[name][0] and value[name][1] != before[name][1]
    # a step saved under the whole text's fingerprint (before comments were left out) stands
    saved = tmp_path / "saved" / "swav_seed0.json"
    saved.parent.mkdir()
    saved.write_text(json.dumps({"probe": dict(linear=80.0, fingerprint=before["probe"][1])}))
    r = results.Result("swav", 0, argparse.Namespace(results=str(tmp_path / "saved")))
    assert r.current("probe", before["probe"])["linear"] == 80.0 and r.current("probe", value["probe"]) is None
