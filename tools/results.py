"""Fashion-MNIST results of every method: python -m tools.results [--methods simclr swav npid dcv2 random pixels].

Each method pretrains its `configs/fmnist_<method>.yaml` (under bf16 autocast on CPUs with native bf16, as the
demo does) with the kNN monitor every --eval_every steps, then `configs/fmnist_eval.yaml` probes its backbone;
`random` is the SimCLR config with no steps and `pixels` probes the raw images. Each finished method is saved to
<root>/results/<method>.json, so a re-run skips it (unless its config or flags changed) and continues an
interrupted pretraining from its last checkpoint. At the end the table (the methods run, and the finished,
current results of the others) replaces the one between the markers of docs/results.md and README.md, and one
figure of kNN accuracy and training loss against pretraining time goes to docs/results_fmnist.png.
"""
import argparse
import datetime
import hashlib
import json
import os
import shlex

import matplotlib
import pandas as pd
import yaml

import train
from utils import dist
from utils.checkpoint import write_atomic
from tools.benchmark import commit, machine
from tools.demo import native_bf16

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = {"simclr": "SimCLR", "swav": "SwAV", "npid": "NPID", "dcv2": "DeepCluster-v2",
           "random": "random-init backbone", "pixels": "raw pixels"}
PROBE = "configs/fmnist_eval.yaml"
BEGIN, END = "<!-- results table: python -m tools.results -->", "<!-- end of results table -->"


def config_of(method):
    return None if method == "pixels" else f"configs/fmnist_{'simclr' if method == 'random' else method}.yaml"


def read(path):
    with open(path) as f:
        return f.read()


def fingerprint(method, pretrain_flags, probe_flags):
    """What a saved result was made from: a changed config or flag makes it stale."""
    text = "".join(read(os.path.join(ROOT, path)) for path in (config_of(method), PROBE) if path)
    return hashlib.sha256(json.dumps([text, pretrain_flags, probe_flags]).encode()).hexdigest()[:16]


def step_minutes(rows, batch_size):
    """(cumulative minutes of optimiser steps, steps) at each logs.csv row; rows without a rate add nothing."""
    rate = rows["img_per_s"] if "img_per_s" in rows else pd.Series(float("nan"), index=rows.index)
    steps = rows["iter"].diff().fillna(rows["iter"]).where(rate.notna(), 0)
    return (steps * batch_size / rate).fillna(0).cumsum() / 60, steps


def pretraining_time(folder):
    """(minutes, img/s) of the optimiser steps alone (the kNN monitor excluded), from the run's logs.csv."""
    batch = train_batch_size(folder)
    minutes, steps = step_minutes(pd.read_csv(os.path.join(folder, "logs.csv")), batch)
    total = float(minutes.iloc[-1]) if len(minutes) else 0.0
    return total, (float(steps.sum()) * batch / (total * 60) if total else None)


def pretrain(method, root, flags, eval_every, bf16):
    """The pretraining run's folder; continues the newest unfinished one of this method when there is one."""
    argv = ["--config", config_of(method), "--root", root, "--name", f"results_{method}", "--resume", "auto"]
    argv += ["--eval_freq", str(eval_every)] + (["--amp", "true"] if bf16 else []) + flags
    if method == "random":
        argv += ["--iters", "0", "--eval_freq", "-1"]
    folder, _ = train.main(argv)
    return folder


def result_path(method, args):
    return os.path.join(args.root, "results", f"{method}.json")


def saved_result(method, args):
    """The saved result of `method` if made from the current config and flags ("linear" in it once finished);
    otherwise a fresh start holding only the current fingerprint."""
    path = result_path(method, args)
    saved = json.loads(read(path)) if os.path.exists(path) else {}
    key = fingerprint(method, args.pretrain_flags, args.probe_flags)
    return saved if saved.get("fingerprint") == key else dict(fingerprint=key)


def run_method(method, args, bf16):
    """Pretrain and probe `method`, or read its saved result; the result as a dict."""
    path = result_path(method, args)
    saved = saved_result(method, args)
    if "linear" in saved:
        print(f"{method}: done before, {path}")
        return saved
    if method != "pixels" and "pretraining" not in saved:
        folder = pretrain(method, args.root, args.pretrain_flags, args.eval_every, bf16)
        minutes, rate = (0.0, None) if method == "random" else pretraining_time(folder)
        saved.update(pretraining=folder, minutes=minutes, img_per_s=rate, amp=bf16)
        save_json(path, saved)  # a stop during the probe keeps the pretraining
    encoder = saved.get("pretraining", "pixels")
    folder, metrics = train.main(["--config", PROBE, "--root", args.root, "--name", f"results_{method}_probe",
                                  "--encoder_ckpt", encoder] + args.probe_flags)
    saved.update(method=method, config=config_of(method), probe=folder, linear=metrics["test_acc1"],
                 knn=metrics["knn_acc1"], commit=commit(), date=str(datetime.date.today()),
                 device=machine(dist.pick_device(args.device)))
    save_json(path, saved)
    return saved


def train_batch_size(folder):
    with open(os.path.join(folder, "params.yaml")) as f:
        return yaml.safe_load(f)["batch_size"]


def save_json(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = json.dumps(value, indent=1).encode()
    write_atomic(path, lambda f: f.write(text))


def table(results):
    """The markdown table of the results, one row per method."""
    lines = ["| method | config | pretraining (min) | img/s | linear | kNN | commit | date | device |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        config = f"`{os.path.basename(r['config'])}`" if r["config"] else "none"
        if r["method"] == "random":
            config += " `--iters 0`"
        minutes = f"{r['minutes']:.1f}" if r.get("minutes") else ""
        rate = f"{r['img_per_s']:.0f}" if r.get("minutes") else ""
        precision = " (bf16)" if r.get("amp") and r.get("minutes") else ""
        lines.append(f"| {METHODS[r['method']]} | {config} | {minutes}{precision} | {rate} | {r['linear']:.2f} | "
                     f"{r['knn']:.2f} | {r['commit']} | {r['date']} | {r['device']} |")
    return "\n".join(lines) + "\n"


def replace_table(path, text):
    """Put `text` between the markers of the file at `path`; False when the file has no markers."""
    if not os.path.exists(path):
        return False
    body = read(path)
    if BEGIN not in body or END not in body:
        return False
    head, rest = body.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    with open(path, "w") as f:
        f.write(f"{head}{BEGIN}\n{text}{END}{tail}")
    return True


def curves(folder):
    """(minutes, kNN) and (minutes, loss) of a pretraining run, the time counting optimiser steps only."""
    rows = pd.read_csv(os.path.join(folder, "logs.csv"))
    minutes, _ = step_minutes(rows, train_batch_size(folder))
    knn = rows["knn_acc1"] if "knn_acc1" in rows else pd.Series(float("nan"), index=rows.index)
    loss = rows["train_loss"] if "train_loss" in rows else pd.Series(float("nan"), index=rows.index)
    return (minutes[knn.notna()], knn[knn.notna()]), (minutes[loss.notna()], loss[loss.notna()])


def plot(results, path):
    fig, (ax_knn, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        if not r.get("minutes"):
            if r["method"] in ("random", "pixels"):
                ax_knn.axhline(r["knn"], ls=":", color="gray" if r["method"] == "random" else "black", lw=1,
                               label=f"{METHODS[r['method']]} ({r['knn']:.1f})")
            continue
        (t_knn, knn), (t_loss, loss) = curves(r["pretraining"])
        line, = ax_knn.plot(t_knn, knn, marker="o", label=f"{METHODS[r['method']]} ({r['knn']:.1f})")
        ax_loss.plot(t_loss, loss, color=line.get_color(), label=METHODS[r["method"]])
    ax_knn.set(xlabel="pretraining minutes", ylabel="kNN top-1 (%), Fashion-MNIST test", title="kNN monitor")
    ax_loss.set(xlabel="pretraining minutes", ylabel="training loss", yscale="log", title="loss (each method its own)")
    for ax in (ax_knn, ax_loss):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--root", default=os.path.join(ROOT, "logs"), help="exman root of the runs; results/ holds the saved results")
    p.add_argument("--eval_every", type=int, default=400, help="steps between kNN evaluations while pretraining")
    p.add_argument("--pretrain_flags", type=shlex.split, default=[], help='extra train.py flags for every pretraining, '
                   'e.g. "--iters 100"')
    p.add_argument("--probe_flags", type=shlex.split, default=[], help="extra train.py flags for every probe")
    p.add_argument("--amp", choices=["auto", "true", "false"], default="auto",
                   help="bf16 autocast while pretraining; auto: on CPUs with native bf16")
    p.add_argument("--device", default=None, help="cuda, cpu (default: cuda when available)")
    p.add_argument("--table", nargs="*", default=[os.path.join(ROOT, "docs", "results.md"), os.path.join(ROOT, "README.md")],
                   help="files whose results table (between the markers) is replaced")
    p.add_argument("--plot", default=os.path.join(ROOT, "docs", "results_fmnist.png"), help="the figure's path")
    args = p.parse_args(argv)
    if args.device:
        args.pretrain_flags = ["--device", args.device] + args.pretrain_flags
        args.probe_flags = ["--device", args.device] + args.probe_flags
    bf16 = native_bf16() if args.amp == "auto" else args.amp == "true"
    results = [run_method(m, args, bf16) for m in args.methods]  # train.py's errors exit with its one-line message
    # the table also keeps the other methods' finished, current results: `--methods npid` redoes one row
    done = {r["method"]: r for r in results}
    others = {m: saved_result(m, args) for m in METHODS if m not in done}
    rows = [done.get(m) or others[m] for m in METHODS if m in done or "linear" in others[m]]
    text = table(rows)
    print("\n" + text)
    for path in args.table:
        if not replace_table(path, text):
            print(f"{path} has no results-table markers; left as it is")
    plot(rows, args.plot)
    print(f"figure: {args.plot}")
    return results


if __name__ == "__main__":
    main()
