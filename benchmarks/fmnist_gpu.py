"""Every method at a GPU budget on Fashion-MNIST: python benchmarks/fmnist_gpu.py --root DIR [--minutes 17] [--epochs 100]

A full-width ResNet-18 (CIFAR stem) pretrained on 28 px crops under bf16 autocast, the four methods side by side
on one GPU for the same number of epochs. A short calibration (the four methods' step benchmarks run at once)
gives each method's rate while it shares the GPU; the epochs are the most that fit --minutes of pretraining for
the slowest of them, capped at --epochs. Then one `tools.results` process per method (random and pixels too)
pretrains and probes it under DIR, and a last one writes the table to DIR/table.md and the figure to
DIR/results_gpu.png. Kept outside the package and CI; docs/results.md records what it gave.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tools.results import BEGIN, END  # noqa: E402  (the table's markers)

METHODS = ["simclr", "swav", "npid", "dcv2"]
TRAIN_IMAGES, BATCH = 60000, 256


def launch(cmd, log, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def wait_all(procs):
    failed = [name for name, p in procs.items() if p.wait() != 0]
    if failed:
        sys.exit(f"fmnist_gpu: {', '.join(failed)} failed; see their logs")


def calibrate(args):
    """img/s of each method's training step while the four run at once."""
    procs = {m: launch([sys.executable, "-m", "tools.benchmark", "step", "--config", f"configs/fmnist_{m}.yaml",
                        "--device", args.device, "--amp", "true", "--steps", str(args.steps), "--no_record"] + args.flags,
                       os.path.join(args.root, f"calibrate_{m}.log"), args.threads) for m in METHODS}
    wait_all(procs)
    rates = {}
    for m in METHODS:
        with open(os.path.join(args.root, f"calibrate_{m}.log")) as f:
            rates[m] = json.loads(f.read().strip().splitlines()[-1])["img_s"]
    return rates


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="exman root of the runs, the logs, the table and the figure")
    p.add_argument("--minutes", type=float, default=17.0, help="pretraining minutes the slowest method may take")
    p.add_argument("--epochs", type=int, default=100, help="at most this many epochs")
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=60, help="timed steps of the calibration")
    p.add_argument("--threads", type=int, default=3, help="CPU threads per process")
    p.add_argument("--flags", type=shlex.split, default=["--width", "1", "--size_crops", "28"],
                   help="train.py flags for every pretraining, before the epochs")
    p.add_argument("--probe_flags", default="", help="train.py flags for every probe (a quick check: \"--iters 5\")")
    args = p.parse_args()
    os.makedirs(args.root, exist_ok=True)
    start = time.time()
    rates = calibrate(args)
    slowest = max(TRAIN_IMAGES / rate for rate in rates.values())  # seconds per epoch
    epochs = max(1, min(args.epochs, int(args.minutes * 60 / slowest)))
    steps_per_epoch = TRAIN_IMAGES // BATCH
    flags = args.flags + ["--iters", "-1", "--epochs", str(epochs), "--save_freq", str(steps_per_epoch * epochs)]
    common = ["--root", args.root, "--device", args.device, "--amp", "true", "--pretrain_flags", shlex.join(flags),
              "--eval_every", str(max(1, steps_per_epoch * epochs // 10)), "--probe_flags", args.probe_flags]
    plan = dict(rates_img_s=rates, epochs=epochs, calibration_s=round(time.time() - start), common=common)
    print(json.dumps(plan), flush=True)
    with open(os.path.join(args.root, "plan.json"), "w") as f:
        json.dump(plan, f, indent=1)
    procs = {m: launch([sys.executable, "-m", "tools.results", "--methods", m, "--table", "--plot",
                        os.path.join(args.root, f"plot_{m}.png")] + common, os.path.join(args.root, f"{m}.log"),
                       args.threads) for m in METHODS + ["random", "pixels"]}
    wait_all(procs)
    table = os.path.join(args.root, "table.md")
    with open(table, "w") as f:
        f.write(f"{BEGIN}\n{END}\n")
    subprocess.run([sys.executable, "-m", "tools.results", "--table", table, "--plot",
                    os.path.join(args.root, "results_gpu.png")] + common, cwd=ROOT, check=True)
    print(f"fmnist_gpu: done in {(time.time() - start) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
