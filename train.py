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
from models.base import NonFinite
from models.dcv2 import DeepClusterV2
from models.eval import LinearEval
from models.npid import NPID
from models.simclr import SimCLR
from models.swav import SwAV
from utils import checkpoint, dist
from utils.config import UserError, parse_args
from utils.optim import build_optimizer, lr_at
from utils.runlog import RunLog, create_run_folder

PROBLEMS = {"simclr": SimCLR, "swav": SwAV, "npid": NPID, "dcv2": DeepClusterV2, "eval": LinearEval}
LAUNCH_FLAGS = ("dist", "dist_address", "node_rank", "world_size", "num_proc_per_node", "dist_timeout", "device")


def resume_args(args):
    """The saved flags of the run to resume, with the flags typed on this command line on top."""
    path = checkpoint.resolve(args.resume)
    saved = checkpoint.load(path)["args"]
    if "problem" in args.explicit and args.problem != saved["problem"]:
        raise UserError(f"--resume {args.resume} is a '{saved['problem']}' run, not '{args.problem}'")
    launch = {k: getattr(args, k) for k in LAUNCH_FLAGS}  # where and how to run: from this command line, not the saved run
    merged = dict(saved, **launch)
    merged.update({k: getattr(args, k) for k in args.explicit if k not in ("resume", "config")})
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


def train_step(model, optimizer, batch, scaler):
    """One optimiser step on one batch: (loss, logs) of the model's forward. `scaler` is a no-op unless --amp_dtype fp16."""
    if isinstance(optimizer, torch.optim.LBFGS):  # its line search evaluates the loss again: a closure
        first = []

        def closure():
            optimizer.zero_grad(set_to_none=True)
            loss, logs = model(batch)
            loss.backward()
            first.append((loss, logs))
            return loss
        optimizer.step(closure)
        return first[0]  # the loss before the step, as for the other optimisers
    loss, logs = model(batch)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    getattr(model, "module", model).after_backward()  # the problem itself, inside DDP or not
    scaler.step(optimizer)
    scaler.update()
    return loss, logs


def check_launch(args):
    """The mistakes of a distributed launch that can be reported once, before any process starts."""
    procs = dist.total_procs(args)
    if args.batch_size % procs and not PROBLEMS[args.problem].replicated(args):
        raise UserError(f"--batch_size {args.batch_size} must divide by the number of processes ({procs})")
    if args.sync_bn and procs > 1:
        if pick_device(args).type == "cpu":
            raise UserError("--sync_bn needs GPUs: torch.nn.SyncBatchNorm has no CPU kernel")
        dist.sync_bn_groups(procs, args.sync_bn_group_size, dist.procs_per_node(args))


def distribute(model, args, device):
    """SyncBatchNorm and DistributedDataParallel around `model`; the model itself when it trains replicated or alone."""
    if dist.world_size() == 1 or model.replicated(args):
        return model
    if args.sync_bn:
        dist.convert_sync_bn(model, args.sync_bn_group_size, dist.procs_per_node(args))
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def run(args):
    device = pick_device(args)
    torch.backends.cudnn.benchmark = True  # fixed crop sizes: let cuDNN pick its fastest convolutions
    Problem = PROBLEMS[args.problem]
    data = Problem.load_data(args)
    for d in (data.train, data.test, data.knn_train):
        d.to(device)
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model = Problem(args, data, device).to(device)
    torch.manual_seed(args.seed * 1000 + dist.rank())
    shards = 1 if Problem.replicated(args) else dist.world_size()  # processes that split each batch
    if args.batch_size > len(model.train_data()):
        raise UserError(f"--batch_size {args.batch_size} is larger than the {len(model.train_data())} training images")
    net = distribute(model, args, device)
    optimizer = build_optimizer(model, args)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and args.amp_dtype == "fp16")
    step = 0
    if args.resume:
        ckpt = checkpoint.load(args.resume)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt.get("scaler", {}))
        step = ckpt["step"]
        states = ckpt["rng"]
        if len(states) == dist.world_size():
            checkpoint.set_rng_state(states[dist.rank()], model.augment.gen)
            model.load_rank_state(ckpt["rank_state"][dist.rank()])
        else:  # another number of processes: fresh streams, still distinct per rank and per resume point
            model.augment.gen.manual_seed((args.seed * 1000 + dist.rank()) * 1000003 + step)
        folder = os.path.dirname(args.resume)
    else:
        folder = dist.broadcast_object(create_run_folder(args) if dist.is_main() else None)
    log = RunLog(folder, resume_step=step if args.resume else None) if dist.is_main() else None
    saved_args = {k: v for k, v in vars(args).items() if k not in ("explicit", "given")}

    def save(step):
        per_rank = dist.all_gather_object((checkpoint.rng_state(model.augment.gen), model.rank_state()))
        if dist.is_main():
            state = dict(args=saved_args, step=step, epoch=step // spe, model=model.state_dict(),
                         optimizer=optimizer.state_dict(), scaler=scaler.state_dict(),
                         rng=[r for r, _ in per_rank], rank_state=[s for _, s in per_rank],
                         backbone_spec=model.backbone_spec)
            checkpoint.save_atomic(state, os.path.join(folder, checkpoint.CHECKPOINT))
            checkpoint.save_atomic(dict(args=saved_args, backbone_spec=model.backbone_spec,
                                        backbone=model.backbone.state_dict()), os.path.join(folder, checkpoint.BACKBONE))
        dist.barrier()  # no rank exits (and gets its peers stopped) while rank 0 writes

    def evaluate(step):
        metrics = model.evaluate()
        if log:
            log.row(iter=step, epoch=step / spe, **metrics)
            log.print(f"step {step}: " + "  ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
        return metrics

    if log:
        log.print(f"{'resuming' if args.resume else 'run folder'} {folder}" + (f" at step {step}" if args.resume else ""))
    train = model.train_data()
    batches = TrainBatches(train, args.batch_size, args.seed, device, crops=model.augment.crops, workers=args.workers,
                           rank=dist.rank() if shards > 1 else 0, world_size=shards)
    spe = steps_per_epoch(len(train), args.batch_size)
    total = 0 if getattr(args, "eval_only", False) else total_steps(args, len(train))
    stop = StopFlag()
    model.train()
    loss_sum, loss_count, tick, images = torch.zeros((), device=device), 0, time.time(), 0
    stopping = False
    while step < total and not stopping:
        epoch = step // spe
        model.on_epoch_start(epoch, batches)
        bar = tqdm(total=min(spe, total - epoch * spe), initial=step % spe, desc=f"epoch {epoch}",
                   disable=not dist.is_main(), leave=False, dynamic_ncols=True)
        for batch in batches.epoch(epoch, start=step % spe):
            lr = lr_at(step, total, spe, args)
            for group in optimizer.param_groups:
                group["lr"] = lr
            model.step = step
            try:
                loss, logs = train_step(net, optimizer, batch, scaler)
            except NonFinite as e:
                dump = os.path.join(folder, f"nonfinite_step{step}_rank{dist.rank()}.pt")
                torch.save(e.tensors, dump)
                print(f"train.py: error: {e}; that step's tensors are in {dump}; the checkpoint of the last saved step is "
                      f"untouched", file=sys.stderr)
                sys.exit(1)
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
            if args.eval_freq > 0 and step % args.eval_freq == 0 and step < total:
                evaluate(step)
                model.train()
                tick = time.time()
            stopping = dist.any_rank(stop.signal is not None, device)  # all ranks stop after the same step
            if step % args.save_freq == 0 or step == total or stopping:
                save(step)
            if step >= total or stopping:
                break
        bar.close()
    if stopping:
        signum = stop.signal or signal.SIGTERM  # a rank that got no signal itself stops with its peers
        if log:
            again = " and the same launch flags (--dist ddp ..., or under torchrun)" if dist.world_size() > 1 else ""
            log.print(f"stopped by signal {signum} at step {step}; continue with: python train.py --resume {folder}{again}")
        sys.exit(128 + signum)
    if step == 0 and not args.resume:
        save(0)
    metrics = evaluate(step) if args.eval_freq >= 0 else {}
    if log:
        log.print(f"done {args.problem} {folder} " + " ".join(f"{k}={v:.2f}" for k, v in metrics.items()))
    return folder, metrics


def main(argv=None):
    try:
        args = parse_args(argv, PROBLEMS)
        if args.resume:
            args = resume_args(args)
        check_launch(args)
        return dist.launch(run, args)
    except UserError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
