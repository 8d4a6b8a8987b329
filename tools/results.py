"""Fashion-MNIST results of every method over seeds: python -m tools.results [--methods ...] [--seeds 0 1 2].

For each method and seed: pretrain its `configs/fmnist_<method>.yaml` (under bf16 autocast on CPUs with native bf16,
as the demo does) with the kNN monitor every --eval_every steps; probe the backbone with `configs/fmnist_eval.yaml`
on all the labels and on each --fractions of them; fine-tune it on each fraction with
`configs/fmnist_finetune_<1|10>pct.yaml` (bf16 too). `random` is the SimCLR config with no steps (its fine-tuning is
training from scratch) and `pixels` probes the raw images. Every finished step is saved in
<results>/<method>_seed<S>.json with a fingerprint of its configs' values (not their comments) and flags, so a
re-run skips it (unless they changed) and an interrupted pretraining continues from its last checkpoint. At the end
the tables (mean ± std over the seeds of the methods run and of the others' finished, current results) replace the
ones between the markers of docs/results.md and README.md, and a figure of the kNN curves and of every seed's
figures goes to docs/results_fmnist.png.
"""
import argparse
import datetime
import hashlib
import json
import os
import shlex
import statistics

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
FINETUNE = {0.01: "configs/fmnist_finetune_1pct.yaml", 0.1: "configs/fmnist_finetune_10pct.yaml"}  # per fraction
BEGIN, END = "<!-- results table: python -m tools.results -->", "<!-- end of results table -->"


def config_of(method):
    return None if method == "pixels" else f"configs/fmnist_{'simclr' if method == 'random' else method}.yaml"


def read(path):
    with open(path) as f:
        return f.read()


def fingerprint(*parts):
    """What a saved step was made from (config texts, flags, the step it builds on): a change makes it stale."""
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def config_text(path):
    return read(os.path.join(ROOT, path)) if path else ""


def config_values(path):
    """A config's keys and values, without its comments: editing a header leaves the saved steps current."""
    return json.dumps(yaml.safe_load(config_text(path)), sort_keys=True) if path else ""


def step_minutes(rows, batch_size):
    """(cumulative minutes of optimiser steps, steps) at each logs.csv row; rows without a rate add nothing."""
    rate = rows["img_per_s"] if "img_per_s" in rows else pd.Series(float("nan"), index=rows.index)
    steps = rows["iter"].diff().fillna(rows["iter"]).where(rate.notna(), 0)
    return (steps * batch_size / rate).fillna(0).cumsum() / 60, steps


def train_batch_size(folder):
    with open(os.path.join(folder, "params.yaml")) as f:
        return yaml.safe_load(f)["batch_size"]


CURVES = {"knn": "knn_acc1", "loss": "train_loss", "online_acc": "online_acc", "rankme_head": "rankme_head",
          "loss_minus_lnk": "loss_minus_lnk"}  # saved curve -> logs.csv column (the last three: collapse monitors)


def curves(folder):
    """The curves of a pretraining run, {"knn": [[minutes, %], ...], "loss": [[minutes, loss], ...], and the collapse
    monitors its logs.csv has}, the time counting optimiser steps only (the kNN monitor excluded)."""
    rows = pd.read_csv(os.path.join(folder, "logs.csv"))
    minutes, _ = step_minutes(rows, train_batch_size(folder))
    out = {}
    for key, column in CURVES.items():
        values = rows[column] if column in rows else pd.Series(float("nan"), index=rows.index)
        out[key] = [[float(t), float(v)] for t, v in zip(minutes[values.notna()], values[values.notna()])]
    return out


def pretraining_time(folder):
    """(minutes, img/s) of the optimiser steps alone, from the run's logs.csv."""
    batch = train_batch_size(folder)
    minutes, steps = step_minutes(pd.read_csv(os.path.join(folder, "logs.csv")), batch)
    total = float(minutes.iloc[-1]) if len(minutes) else 0.0
    return total, (float(steps.sum()) * batch / (total * 60) if total else None)


class Result:
    """The saved steps of one method and seed: {step name: {"fingerprint": ..., values...}} in a json file."""

    def __init__(self, method, seed, args):
        self.method, self.seed, self.args = method, seed, args
        self.path = os.path.join(args.results, f"{method}_seed{seed}.json")
        self.steps = json.loads(read(self.path)) if os.path.exists(self.path) else {}
        self.ran = 0

    def step(self, name, key, make):
        """The values of step `name`: saved ones when made from `key` (its fingerprints, the first the one a new
        step saves), else make() run and saved."""
        saved = self.current(name, key)
        if saved:
            return saved
        values = dict(make(), fingerprint=key[0], commit=commit(), date=str(datetime.date.today()),
                      device=machine(dist.pick_device(self.args.device)))
        self.steps[name] = values
        self.ran += 1
        save_json(self.path, self.steps)
        return values

    def current(self, name, key):
        saved = self.steps.get(name)
        return saved if saved and saved.get("fingerprint") in key else None


def keys(method, seed, args):
    """The fingerprints of every step of `method` and `seed`: {step name: (of the configs' values, of their whole
    texts)}. Steps are saved under the first; the second, which comments changed too, is how steps were saved until
    2026-12-06, and still stands. The precision is in neither: like the device, it is the machine's (bf16 where
    native), and each step records its own."""
    values, texts = _keys(method, seed, args, config_values), _keys(method, seed, args, config_text)
    return {name: (values[name], texts[name]) for name in values}


def _keys(method, seed, args, text):
    pre = fingerprint(text(config_of(method)), args.pretrain_flags, seed, args.eval_every)
    out = {} if method == "pixels" else {"pretraining": pre}
    out["probe"] = fingerprint(pre, text(PROBE), args.probe_flags, seed)
    for f in args.fractions:
        out[f"probe {f:g}"] = fingerprint(pre, text(PROBE), args.probe_flags, seed, f)
        if method != "pixels":
            out[f"finetune {f:g}"] = fingerprint(pre, text(FINETUNE[f]), args.finetune_flags, seed, f)
    return out


def run_method(method, seed, args, bf16):
    """Pretrain, probe and fine-tune `method` with `seed` (each step skipped when saved); its Result."""
    r, key = Result(method, seed, args), keys(method, seed, args)
    seed_flags, amp_flags = ["--seed", str(seed)], (["--amp", "true"] if bf16 else [])
    encoder = "pixels"
    if method != "pixels":
        def pretrain():
            argv = ["--config", config_of(method), "--root", args.root, "--name", f"results_{method}_seed{seed}",
                    "--resume", "auto", "--eval_freq", str(args.eval_every)] + amp_flags
            argv += seed_flags + args.pretrain_flags
            if method == "random":
                argv += ["--iters", "0", "--eval_freq", "-1"]
            folder, _ = train.main(argv)
            if method == "random":  # no step, no logs.csv
                return dict(folder=folder, minutes=0.0, img_per_s=None, amp=bf16, curves=None)
            minutes, rate = pretraining_time(folder)
            return dict(folder=folder, minutes=minutes, img_per_s=rate, amp=bf16, curves=curves(folder))
        encoder = r.step("pretraining", key["pretraining"], pretrain)["folder"]

    def probe(fraction):
        def make():
            extra = [] if fraction == 1 else ["--label_fraction", str(fraction)]
            folder, metrics = train.main(["--config", PROBE, "--root", args.root, "--name", f"results_{method}_probe",
                                          "--encoder_ckpt", encoder] + seed_flags + args.probe_flags + extra)
            return dict(folder=folder, linear=metrics["test_acc1"], knn=metrics["knn_acc1"])
        return make

    def finetune(fraction):
        def make():
            folder, metrics = train.main(["--config", FINETUNE[fraction], "--root", args.root, "--name",
                                          f"results_{method}_finetune", "--encoder_ckpt", encoder,
                                          "--label_fraction", str(fraction)] + amp_flags
                                         + seed_flags + args.finetune_flags)
            return dict(folder=folder, top1=metrics["test_acc1"], amp=bf16)
        return make

    r.step("probe", key["probe"], probe(1))
    for f in args.fractions:
        r.step(f"probe {f:g}", key[f"probe {f:g}"], probe(f))
        if method != "pixels":
            r.step(f"finetune {f:g}", key[f"finetune {f:g}"], finetune(f))
    print(f"{method} seed {seed}: " + ("done before, " if not r.ran else f"{r.ran} steps run, ") + r.path)
    return r


def save_json(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = json.dumps(value, indent=1).encode()
    write_atomic(path, lambda f: f.write(text))


def columns(fractions):
    """(column title, step name, value key) of the table's figures."""
    cols = [("linear", "probe", "linear"), ("kNN", "probe", "knn")]
    for f in fractions:
        cols += [(f"linear {f:.0%}", f"probe {f:g}", "linear"), (f"fine-tuned {f:.0%}", f"finetune {f:g}", "top1")]
    return cols


def gather(method, seeds, args):
    """{column title: [value of each seed with it]} and the seeds' steps, from the current saved results."""
    values, steps = {}, []
    for seed in seeds:
        r, key = Result(method, seed, args), keys(method, seed, args)
        current = {name: r.current(name, k) for name, k in key.items()}
        if not current["probe"]:
            continue
        steps.append(current)
        for title, name, field in columns(args.fractions):
            if current.get(name):
                values.setdefault(title, []).append(current[name][field])
    return values, steps


def mean_std(values):
    """'mean ± std' (the sample standard deviation) of a list of figures; the figure alone for one; '' for none."""
    if not values:
        return ""
    mean = statistics.mean(values)
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ± {statistics.stdev(values):.2f}"


def tables(rows, fractions):
    """The markdown tables: the pretraining and full-label figures, then the label fractions'."""
    main = ["| method | config | pretraining (min) | img/s | seeds | linear | kNN | commit | date | device |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    frac_cols = [c[0] for c in columns(fractions)[2:]]
    few = ["| on a fraction of the labels (test top-1, %) | " + " | ".join(frac_cols) + " |", "|---" * (len(frac_cols) + 1) + "|"]
    for method, values, steps in rows:
        config = f"`{os.path.basename(config_of(method))}`" if config_of(method) else "none"
        pre = [s["pretraining"] for s in steps if s.get("pretraining")]
        timed = [p for p in pre if p["minutes"]]
        bf16 = sum(bool(p["amp"]) for p in timed)
        precision = " (bf16)" if bf16 == len(timed) else f" (bf16 {bf16} of {len(timed)})" if bf16 else ""
        # medians: one seed run beside other work would pull a mean far off
        time = f"{statistics.median(p['minutes'] for p in timed):.1f}{precision}" if timed else ""
        rates = [p["img_per_s"] for p in pre if p["img_per_s"]]
        rate = f"{statistics.median(rates):.0f}" if rates else ""
        if method == "random":
            config += " `--iters 0`"
        made = [v for s in steps for v in s.values() if v]
        stamp = [" ".join(sorted({v[k] for v in made})) for k in ("commit", "date", "device")]
        main.append(f"| {METHODS[method]} | {config} | {time} | {rate} | {len(steps)} | {mean_std(values['linear'])} | "
                    f"{mean_std(values['kNN'])} | " + " | ".join(stamp) + " |")
        name = METHODS[method] + (" (fine-tuned: from scratch)" if method == "random" else "")
        few.append(f"| {name} | " + " | ".join(mean_std(values.get(c, [])) for c in frac_cols) + " |")
    text = "\n".join(main) + "\n"
    if fractions:
        text += "\n" + "\n".join(few) + "\n"  # the fractions' labelled images are drawn by each seed
    return text


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


MONITOR_PANELS = [("online_acc", "online probe, training top-1 (%)"), ("rankme_head", "embeddings' effective rank"),
                  ("loss_minus_lnk", "loss - ln K (SwAV, DeepCluster-v2; 0: uniform)")]


def plot(rows, fractions, path):
    """kNN monitor curves (every seed), losses, every seed's figure of each column with the mean, and below, each
    seed's collapse monitors (seeds saved before the monitors existed have none)."""
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.4), gridspec_kw=dict(width_ratios=[1, 1, 1.4]))
    (ax_knn, ax_loss, ax_spread), monitor_axes = axes
    cols = [c[0] for c in columns(fractions)]
    width = 0.8 / len(rows)
    labelled = set()  # (monitor panel, method) pairs already in a legend
    for i, (method, values, steps) in enumerate(rows):
        color = f"C{i}"
        for j, s in enumerate(steps):
            pre = s.get("pretraining")
            if pre and pre["minutes"]:
                label = METHODS[method] if j == 0 else None
                ax_knn.plot(*zip(*pre["curves"]["knn"]), marker="o", ms=3, color=color, label=label, lw=1)
                ax_loss.plot(*zip(*pre["curves"]["loss"]), color=color, label=label, lw=1)
                for ax, (key, _) in zip(monitor_axes, MONITOR_PANELS):
                    if pre["curves"].get(key):  # one line a seed, so an unstable seed stands out
                        first = (ax, method) not in labelled
                        labelled.add((ax, method))
                        ax.plot(*zip(*pre["curves"][key]), color=color, lw=1, alpha=0.8,
                                label=METHODS[method] if first else None)
        if method in ("random", "pixels") and values.get("kNN"):
            mean = sum(values["kNN"]) / len(values["kNN"])
            ax_knn.axhline(mean, ls=":", color=color, lw=1, label=f"{METHODS[method]} ({mean:.1f})")
        for c, title in enumerate(cols):
            v = values.get(title, [])
            if not v:
                continue
            x = c + (i - (len(rows) - 1) / 2) * width
            ax_spread.scatter([x] * len(v), v, s=8, color=color, label=METHODS[method] if c == 0 else None)
            ax_spread.hlines(sum(v) / len(v), x - width / 2, x + width / 2, color=color)
    ax_knn.set(xlabel="pretraining minutes", ylabel="kNN top-1 (%), Fashion-MNIST test", title="kNN monitor")
    ax_loss.set(xlabel="pretraining minutes", ylabel="training loss", yscale="log", title="loss (each method its own)")
    ax_spread.set(xticks=range(len(cols)), xticklabels=cols, ylabel="test top-1 (%)",
                  title="every seed (dots) and their mean (bar)")
    ax_spread.tick_params(axis="x", labelsize=8)
    for ax, (_, title) in zip(monitor_axes, MONITOR_PANELS):
        ax.set(xlabel="pretraining minutes", title=title)
    for ax in (ax_knn, ax_loss, ax_spread, *monitor_axes):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="a run of every step for each seed")
    p.add_argument("--fractions", nargs="*", type=float, choices=list(FINETUNE), default=list(FINETUNE),
                   help="fractions of the labels for the probe and fine-tuning, each with its fine-tuning config "
                        "(none: all the labels only)")
    p.add_argument("--root", default=os.path.join(ROOT, "logs"), help="exman root of the runs")
    p.add_argument("--results", default=os.path.join(ROOT, "docs", "results_fmnist"),
                   help="folder of the saved results (<method>_seed<S>.json) the tables are made from")
    p.add_argument("--data_root", default=None, help="Fashion-MNIST's folder, if not the Debian package's")
    p.add_argument("--eval_every", type=int, default=400, help="steps between kNN evaluations while pretraining")
    p.add_argument("--pretrain_flags", type=shlex.split, default=[], help='extra train.py flags for every pretraining, '
                   'e.g. "--iters 100"')
    p.add_argument("--probe_flags", type=shlex.split, default=[], help="extra train.py flags for every probe")
    p.add_argument("--finetune_flags", type=shlex.split, default=[], help="extra train.py flags for every fine-tuning")
    p.add_argument("--amp", choices=["auto", "true", "false"], default="auto",
                   help="bf16 autocast while pretraining and fine-tuning; auto: on CPUs with native bf16. Each step "
                   "records its precision, which is not in its fingerprint: a saved step stands whichever made it")
    p.add_argument("--device", default=None, help="cuda, cpu (default: cuda when available)")
    p.add_argument("--report", action="store_true",
                   help="train nothing: write the tables and the figure from the saved results that are current")
    p.add_argument("--table", nargs="*", default=[os.path.join(ROOT, "docs", "results.md"), os.path.join(ROOT, "README.md")],
                   help="files whose results tables (between the markers) are replaced")
    p.add_argument("--plot", default=os.path.join(ROOT, "docs", "results_fmnist.png"), help="the figure's path")
    args = p.parse_args(argv)
    if args.data_root:
        args.pretrain_flags = ["--data_root", args.data_root] + args.pretrain_flags
        args.probe_flags = ["--data_root", args.data_root] + args.probe_flags
        args.finetune_flags = ["--data_root", args.data_root] + args.finetune_flags
    if args.device:
        for name in ("pretrain_flags", "probe_flags", "finetune_flags"):
            setattr(args, name, ["--device", args.device] + getattr(args, name))
    bf16 = native_bf16() if args.amp == "auto" else args.amp == "true"
    # seed by seed, so that an interrupted run leaves whole seeds; train.py's errors exit with its one-line message
    ran = [] if args.report else [run_method(m, s, args, bf16) for s in args.seeds for m in args.methods]
    # the tables also keep the other methods' finished, current results: `--methods npid` redoes one row
    rows = []
    for m in METHODS:
        values, steps = gather(m, args.seeds, args)
        if steps:
            rows.append((m, values, steps))
    text = tables(rows, args.fractions)
    print("\n" + text)
    for path in args.table:
        if not replace_table(path, text):
            print(f"{path} has no results-table markers; left as it is")
    plot(rows, args.fractions, args.plot)
    print(f"figure: {args.plot}")
    return ran, rows


if __name__ == "__main__":
    main()
