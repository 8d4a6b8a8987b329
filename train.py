"""Self-supervised pretraining and evaluation: python train.py --config configs/X.yaml [--flag value ...].

One loop for every problem. A problem class (models/) brings its flags, its data, its model and
loss (`forward(batch) -> (loss, logs)`), and optionally two hooks: `on_epoch_start` and `after_step`.
"""
import argparse
import os
import signal
import sys
import time

import torch
from tqdm import tqdm

from data.loader import TrainBatches, steps_per_epoch, total_steps
from models.eval import LinearEval
from models.simclr import SimCLR
from utils import checkpoint, dist
from utils.config import UserError, parse_args
from utils.optim import build_optimizer, lr_at
from utils.runlog import RunLog, create_run_folder

PROBLEMS = {"simclr": SimCLR, "eval": LinearEval}


def resume_args(args):
    """The saved flags of the run to resume, with the flags typed on this command line on top."""
    path = checkpoint.resolve(args.resume)
    saved = checkpoint.load(path)["args"]
    if "problem" in args.explicit and args.problem != saved["problem"]:
        raise UserError(f"--resume {args.resume} is a '{saved['problem']}' run, not '{args.problem}'")
    merged = dict(saved, **{k: getattr(args, k) for k in args.explicit if k not in ("resume", "config")})
    merged.update(resume=path, explicit=[], given=sorted(saved))
    return argparse.Namespace(**merged)


class StopFlag:
    """SIGINT / SIGTERM ask the loop to stop after the current step, save a checkpoint and exit."""

    def __init__(self):
        self.signal = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.set)

    def set(self, signum, frame):
        if self.signal is not None:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.signal = signum


def pick_device(args):
    return torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def train_step(model, optimizer, batch):
    """One optimiser step on one batch: (loss, logs) of the model's forward."""
    loss, logs = model(batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, logs


def run(args):
    if args.resume:
        args = resume_args(args)
    device = pick_device(args)
    torch.manual_seed(args.seed * 1000 + dist.rank())
    Problem = PROBLEMS[args.problem]
    data = Problem.load_data(args)
    if args.batch_size % dist.world_size():
        raise UserError(f"--batch_size {args.batch_size} must divide by the number of processes ({dist.world_size()})")
    if args.batch_size > len(data.train):
        raise UserError(f"--batch_size {args.batch_size} is larger than the {len(data.train)} training images")
    for d in (data.train, data.test, data.knn_train):
        d.to(device)
    model = Problem(args, data, device).to(device)
    optimizer = build_optimizer(model, args)
    step = 0
    if args.resume:
        ckpt = checkpoint.load(args.resume)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        checkpoint.set_rng_state(ckpt["rng"], model.augment.gen)
        step = ckpt["step"]
        folder = os.path.dirname(args.resume)
    else:
        folder = create_run_folder(args) if dist.is_main() else None
    log = RunLog(folder, resume_step=step if args.resume else None) if dist.is_main() else None
    saved_args = {k: v for k, v in vars(args).items() if k not in ("explicit", "given")}

    def save(step):
        if not dist.is_main():
            return
        state = dict(args=saved_args, step=step, epoch=step // spe, model=model.state_dict(),
                     optimizer=optimizer.state_dict(), rng=checkpoint.rng_state(model.augment.gen),
                     backbone_spec=model.backbone_spec)
        checkpoint.save_atomic(state, os.path.join(folder, checkpoint.CHECKPOINT))
        checkpoint.save_atomic(dict(args=saved_args, backbone_spec=model.backbone_spec, backbone=model.backbone.state_dict()),
                               os.path.join(folder, checkpoint.BACKBONE))

    def evaluate(step):
        metrics = model.evaluate()
        if log:
            log.row(iter=step, epoch=step / spe, **metrics)
            log.print(f"step {step}: " + "  ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
        return metrics

    if log:
        log.print(f"{'resuming' if args.resume else 'run folder'} {folder}" + (f" at step {step}" if args.resume else ""))
    train = model.train_data()
    batches = TrainBatches(train, args.batch_size, args.seed, device, crops=model.augment.crops,
                           workers=args.workers, rank=dist.rank(), world_size=dist.world_size())
    spe = steps_per_epoch(len(train), args.batch_size)
    total = 0 if getattr(args, "eval_only", False) else total_steps(args, len(train))
    stop = StopFlag()
    model.train()
    loss_sum, loss_count, tick, images = torch.zeros((), device=device), 0, time.time(), 0
    while step < total and stop.signal is None:
        epoch = step // spe
        model.on_epoch_start(epoch)
        bar = tqdm(total=min(spe, total - epoch * spe), initial=step % spe, desc=f"epoch {epoch}",
                   disable=not dist.is_main(), leave=False, dynamic_ncols=True)
        for batch in batches.epoch(epoch, start=step % spe):
            lr = lr_at(step, total, spe, args)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, logs = train_step(model, optimizer, batch)
            model.after_step(batch, logs)
            step += 1
            loss_sum += loss.detach()
            loss_count += 1
            images += args.batch_size
            bar.update(1)
            if step % args.log_freq == 0 or step == total:
                rate = images / (time.time() - tick)
                train_loss = dist.all_reduce_mean(loss_sum).item() / loss_count
                bar.set_postfix(loss=f"{train_loss:.4f}", lr=f"{lr:.4g}", img_s=f"{rate:.0f}")
                if log:
                    log.row(iter=step, epoch=step / spe, lr=lr, train_loss=train_loss, img_per_s=rate,
                            **{k: float(v) for k, v in logs.items()})
                loss_sum.zero_()
                loss_count, tick, images = 0, time.time(), 0
            if args.eval_freq and step % args.eval_freq == 0 and step < total:
                evaluate(step)
                model.train()
                tick = time.time()
            if step % args.save_freq == 0 or step == total or stop.signal is not None:
                save(step)
            if step >= total or stop.signal is not None:
                break
        bar.close()
    if stop.signal is not None:
        if log:
            log.print(f"stopped by signal {stop.signal} at step {step}; continue with: python train.py --resume {folder}")
        sys.exit(128 + stop.signal)
    if step == 0 and not args.resume:
        save(0)
    metrics = evaluate(step)
    if log:
        log.print(f"done {args.problem} {folder} " + " ".join(f"{k}={v:.2f}" for k, v in metrics.items()))
    return folder, metrics


def main(argv=None):
    try:
        args = parse_args(argv, PROBLEMS)
        return run(args)
    except UserError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
