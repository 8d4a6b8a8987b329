"""The README's main job: SimCLR on Fashion-MNIST, then the linear probe and kNN of its backbone next to
a randomly initialised backbone and raw pixels. Run as `python -m tools.demo [pretraining flags]`."""
import argparse
import os
import sys
import time

import torch

import train
from tools.benchmark import step_runner, timed

PRETRAIN, EVAL = "configs/fmnist_simclr.yaml", "configs/fmnist_eval.yaml"


def native_bf16():
    """A CPU run on hardware with bf16 arithmetic (AVX-512 BF16 or AMX); elsewhere the CPU would emulate it, slowly."""
    if torch.cuda.is_available() or not os.path.exists("/proc/cpuinfo"):
        return False
    flags = open("/proc/cpuinfo").read()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_is_faster(argv, rounds=2, steps=3):
    """Whether the pretraining step of train.py's flags `argv` is faster under bf16 autocast than in fp32, by a timed
    trial of both, interleaved (a few seconds), on a CPU with native bf16: the flag alone does not tell (the demo's
    step was 1.45x faster in bf16 on an AMD EPYC, slower on a Xeon with AVX-512 BF16). Prints what it measured."""
    if not native_bf16():
        return False
    args, device, model, one_step = step_runner(argv + ["--amp", "false"])
    seconds = {False: [], True: []}
    for _ in range(rounds):
        for amp in (False, True):
            model.args = model.args.replace(amp=amp)  # read by the problem's autocast at every step
            one_step()  # a warm-up step of this precision
            seconds[amp].append(timed(one_step, steps, device, warmup=False))
    fp32, bf16 = (args.batch_size / min(seconds[amp]) for amp in (False, True))
    print(f"precision trial, best of {rounds}: fp32 {fp32:.0f} img/s, bf16 autocast {bf16:.0f} img/s: pretraining in "
          f"{'bf16' if bf16 > fp32 else 'fp32'}", flush=True)
    return bf16 > fp32


def pretrain_argvs(extra, bf16=False):
    """The SimCLR run's and the random-init run's command lines; the user's flags go to both, but never
    give the random-init backbone training steps (`--iters 0` comes last, so it wins)."""
    # no kNN at the end of pretraining (about a minute): the probes compute it on the same features
    quiet = ["--eval_freq", "-1"] + (["--amp", "true"] if bf16 else [])
    return (["--config", PRETRAIN, "--name", "simclr"] + quiet + extra,
            ["--config", PRETRAIN, "--name", "random_init"] + quiet + extra + ["--iters", "0"])


def main(argv=None):
    extra = list(sys.argv[1:] if argv is None else argv)
    # flags every run of the demo shares; the rest only go to the pretraining runs
    pick = argparse.ArgumentParser(add_help=False)
    for flag in ("--root", "--data_root", "--device", "--seed"):
        pick.add_argument(flag)
    shared = [x for k, v in vars(pick.parse_known_args(extra)[0]).items() if v is not None for x in (f"--{k}", v)]
    chosen = any(a == "--amp" or a.startswith("--amp=") for a in extra)  # the user's --amp wins
    bf16 = not chosen and bf16_is_faster(["--config", PRETRAIN] + extra)
    simclr_argv, random_init_argv = pretrain_argvs(extra, bf16)
    start = time.time()
    simclr, _ = train.main(simclr_argv)
    minutes = (time.time() - start) / 60
    random_init, _ = train.main(random_init_argv)
    rows = []
    for label, encoder in [("SimCLR", simclr), ("random init", random_init), ("raw pixels", "pixels")]:
        folder, m = train.main(["--config", EVAL, "--encoder_ckpt", encoder, "--name", "linear"] + shared)
        rows.append((label, m, folder))
    print(f"\nFashion-MNIST test accuracy (%), SimCLR pretraining took {minutes:.1f} min; pretraining run: {simclr}")
    print(f"{'features':<12} {'linear top-1':>12} {'kNN top-1':>10}   linear run")
    for label, m, folder in rows:
        print(f"{label:<12} {m['test_acc1']:>12.2f} {m['knn_acc1']:>10.2f}   {folder}")


if __name__ == "__main__":
    main()
