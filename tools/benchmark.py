"""Training throughput of a problem's model: python -m tools.benchmark --config configs/X.yaml [--flag value ...].

Times full optimiser steps (augmentation, forward, loss, backward, step) on one batch of real images,
after a few warm-up steps, and prints images/s and crops/s. Writes no run folder.
"""
import sys
import time

import torch

import train
from utils.config import parse_args
from utils.errors import UserError


def benchmark(argv, steps=10, warmup=3):
    args = parse_args(argv, train.PROBLEMS)
    device = train.pick_device(args)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)
    model = train.PROBLEMS[args.problem].build(args, device).to(device).train()
    data = model.data
    if not hasattr(data.train, "images"):
        raise UserError("the benchmark times in-memory datasets (fmnist, cifar, stl10); folder data is bound by its loader")
    optimizer = model.make_optimizer()
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and args.amp_dtype == "fp16")
    for group in optimizer.param_groups:
        group["lr"] = 1e-4
    idx = torch.arange(args.batch_size) % len(data.train)
    batch = data.train.images[idx.to(data.train.images.device)], data.train.labels[idx], idx
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.time()
        train.train_step(model, optimizer, batch, i, scaler)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.time() - start) / steps
    crops = len(getattr(model.augment, "crops", [None]))
    precision = args.amp_dtype if args.amp else "fp32"
    print(f"{args.problem} {args.arch} width {args.width} batch {args.batch_size} {precision} on {device} "
          f"({torch.get_num_threads()} threads): {seconds:.3f} s/step, {args.batch_size / seconds:.0f} img/s, "
          f"{crops * args.batch_size / seconds:.0f} crops/s")


if __name__ == "__main__":
    try:
        benchmark(sys.argv[1:])
    except UserError as e:
        print(f"benchmark: error: {e}", file=sys.stderr)
        sys.exit(2)
