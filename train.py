"""Self-supervised pretraining and evaluation: python train.py --config configs/X.yaml [--flag value ...].

One loop for every problem. A problem class (models/) brings its flags, data, model and loss and at
most a few hooks (models/base.py states the contract); this file runs it on one process or many,
logs, checkpoints, resumes, and stops cleanly on a signal or a non-finite step.
"""
import os
import signal
import sys
import time

import torch
from tqdm import tqdm

from data.datasets import FolderData
from data.loader import UnreadableList, steps_per_epoch, total_steps
from models.base import rank_seed
from models.dcv2 import DeepClusterV2
from models.eval import LinearEval
from models.npid import NPID
from models.simclr import SimCLR
from models.swav import SwAV
from utils import checkpoint, dist, runlog
from utils.config import parse_args
from utils.errors import UserError
from utils.optim import lr_at
from utils.runlog import RunLog, create_run_folder

PROBLEMS = {"simclr": SimCLR, "swav": SwAV, "npid": NPID, "dcv2": DeepClusterV2, "eval": LinearEval}


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
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise UserError(f"--device {args.device!r} is not a device: cpu, cuda or cuda:<index>")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: no CUDA GPU is visible on this machine")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {args.device}: only cpu and cuda are supported")
    return device


def train_step(net, optimizer, batch, step, scaler):
    """One optimiser step on one batch: (loss, logs, out) of the problem's forward. `scaler` is a no-op unless fp16."""
    loss, logs, out = net(batch, step)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    getattr(net, "module", net).after_backward(step)  # the problem itself, inside DDP or not
    scaler.step(optimizer)
    scaler.update()
    return loss, logs, out


def check_launch(args):
    """The mistakes of a distributed launch that can be reported once, before any process starts."""
    pick_device(args)
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


class Run:
    """A run in progress, from `step` to `total`: the schedule, logs.csv rows, evaluations, checkpoints, stop
    signals and the non-finite check. A problem's `fit` calls `set_lr()` before and `step_done()` after each step."""

    def __init__(self, args, model, net, optimizer, scaler, folder, log, step):
        self.args, self.model, self.net, self.optimizer, self.scaler = args, model, net, optimizer, scaler
        self.folder, self.log, self.step, self.saved_step = folder, log, step, step if args.resume else None
        self.steps_per_epoch = steps_per_epoch(len(model.train_data()), args.batch_size)
        self.total = total_steps(args, len(model.train_data()))
        self.done, self.stopped_by, self.lr = step >= self.total, None, 0.0
        self.stop = StopFlag()
        # non-finite loss or gradients since the last check, kept on the device: reading it costs a GPU a sync
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=model.device)
        self.checked_step = step
        self.loss_sum, self.loss_count, self.images, self.tick = torch.zeros((), device=model.device), 0, 0, time.time()
        self.bar = tqdm(total=self.total, initial=step, desc=args.problem, disable=not dist.is_main() or self.done,
                        leave=False, dynamic_ncols=True)
        self.batches = None
        self.unreadable = None  # image folders: the files that failed to decode, replaced by stand-ins
        if isinstance(model.train_data(), FolderData):
            self.unreadable = UnreadableList(model.train_data(), folder, args.max_unreadable)

    def set_lr(self):
        self.lr = lr_at(self.step, self.total, self.steps_per_epoch, self.args)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * group.get("lr_scale", 1.0)

    def loop(self):
        """The shared training loop: epochs of batches, one optimiser step each, until done or stopped."""
        model = self.model
        batches = self.batches = model.train_batches()
        while not self.done:
            epoch = self.step // self.steps_per_epoch
            model.on_epoch_start(epoch, batches)
            for batch in batches.epoch(epoch, start=self.step % self.steps_per_epoch):
                self.set_lr()
                loss, logs, out = train_step(self.net, self.optimizer, batch, self.step, self.scaler)
                model.after_step(self.step, out)
                if self.step_done(loss, logs, out, self.args.batch_size):
                    break

    def step_done(self, loss, logs, out, images):
        """Bookkeeping after optimiser step `self.step` (loss, logs and out from it); True when the fit must stop."""
        args, taken = self.args, self.step
        self.nonfinite |= ~torch.isfinite(loss.detach())
        if not self.scaler.is_enabled():  # fp16's scaler skips steps with infinite gradients on purpose
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            if grads:
                self.nonfinite |= ~torch.isfinite(torch.stack(torch._foreach_norm(grads)).sum())
        self.step += 1
        self.loss_sum += loss.detach()
        self.loss_count += 1
        self.images += images
        self.bar.update(1)
        at_end = self.step >= self.total
        log_due = self.step % args.log_freq == 0 or at_end
        save_due = self.step % args.save_freq == 0 or at_end
        check = self.model.device.type == "cpu" or log_due or save_due  # a GPU reads the flag only here
        signalled, bad = self.poll(check)
        if bad:
            self.fail_nonfinite(taken, loss, out)
        if check:
            self.checked_step = self.step
        if log_due and self.unreadable is not None:
            self.note_unreadable()
            logs = dict(logs, unreadable=len(self.unreadable))
        if log_due:
            rate = self.images / (time.time() - self.tick)
            train_loss = dist.all_reduce_mean(self.loss_sum).item() / self.loss_count
            self.bar.set_postfix(epoch=f"{self.step / self.steps_per_epoch:.2f}", loss=f"{train_loss:.4f}",
                                 lr=f"{self.lr:.4g}", img_s=f"{rate:.0f}")
            if self.log:
                self.log_row(iter=self.step, epoch=self.step / self.steps_per_epoch, lr=self.lr, train_loss=train_loss,
                             img_per_s=rate, **{k: float(v) for k, v in logs.items()})
            self.loss_sum.zero_()
            self.loss_count, self.images, self.tick = 0, 0, time.time()
        if args.eval_freq > 0 and self.step % args.eval_freq == 0 and not at_end:
            self.evaluate()
            self.model.train()
            self.tick = time.time()
        if save_due or signalled:
            self.save()
        if signalled:
            self.stopped_by = self.stop.signal or signal.SIGTERM  # a rank that got no signal itself stops with its peers
        self.done = at_end or signalled
        return self.done

    def note_unreadable(self):
        """Add the files any rank failed to decode since the last log row to the run's list; past --max_unreadable,
        stop with a checkpoint (the stand-ins make the steps so far valid ones)."""
        found = self.batches.take_unreadable()
        if dist.world_size() > 1:
            found = set().union(*dist.all_gather_object(found))
        try:
            new = self.unreadable.add(found)
        except OSError as e:
            self.fail_write(e)
        if new and self.log:
            self.log.print(f"step {self.step}: {len(new)} more images cannot be decoded and were replaced by others "
                           f"({len(self.unreadable)} in all), listed in {self.unreadable.path}")
        reason = self.unreadable.too_many()
        if reason:
            if self.log:
                self.log_row(iter=self.step, epoch=self.step / self.steps_per_epoch, unreadable=len(self.unreadable))
            self.save()
            self.bar.close()
            raise UserError(f"{reason}; {self.kept()}")

    def poll(self, check):
        """(a stop signal reached any rank, a non-finite step on any rank); the latter only read when `check`."""
        signalled = self.stop.signal is not None
        if dist.world_size() > 1:  # every rank decides the same: one all-reduce of both flags
            signal_flag = torch.tensor(float(signalled), device=self.model.device)
            flags = torch.stack([signal_flag, (self.nonfinite & check).float()])
            signalled, bad = (dist.all_reduce_sum(flags) > 0).tolist()
            return signalled, bad
        return signalled, check and bool(self.nonfinite)

    def fail_nonfinite(self, taken, loss, out):
        """Stop with exit code 1; the step's tensors go to the run folder when it is the step that turned bad."""
        self.bar.close()
        if self.checked_step == taken:  # every earlier step was checked: this one is the culprit
            dump = os.path.join(self.folder, f"nonfinite_step{taken}_rank{dist.rank()}.pt")
            torch.save(out, dump)
            what = f"{self.args.problem} loss is {loss.item():g} at step {taken}"
            if torch.isfinite(loss):
                what = f"{self.args.problem} gradients are not finite at step {taken} (loss {loss.item():.4g})"
            what += f"; that step's tensors are in {dump}"
        else:
            what = f"{self.args.problem} loss or gradients turned non-finite between steps {self.checked_step} and {taken}"
        print(f"train.py: error: {what}; {self.kept()}", file=sys.stderr)
        sys.exit(1)

    def save(self):
        """Checkpoint and exported backbone, after checking that every weight is finite: nothing else is written."""
        weights = [v for v in self.model.state_dict().values() if torch.is_tensor(v) and v.is_floating_point()]
        if weights and not bool(torch.stack([torch.isfinite(w).all() for w in weights]).all()):
            self.bar.close()
            print(f"train.py: error: {self.args.problem} weights are not finite after step {self.step}; "
                  f"{self.kept()}", file=sys.stderr)
            sys.exit(1)
        try:
            checkpoint.save(self.folder, self.step, self.total, self.step // self.steps_per_epoch, self.args, self.model,
                            self.optimizer, self.scaler)
        except OSError as e:
            if os.path.basename(e.filename or "") == checkpoint.BACKBONE:  # the checkpoint itself was written
                self.saved_step = self.step
            self.fail_write(e)
        self.saved_step = self.step

    def kept(self):
        if self.saved_step is None:
            return "no checkpoint was written"
        return f"the checkpoint of step {self.saved_step} is intact"

    def fail_write(self, e):
        """A full or failing disk: one line, exit code 1; the last checkpoint stays as it was."""
        self.bar.close()
        reason = (e.strerror or str(e)).lower()
        print(f"train.py: error: {reason} while writing {e.filename}; {self.kept()}", file=sys.stderr)
        sys.exit(1)

    def log_row(self, **values):
        try:
            self.log.row(**values)
        except OSError as e:
            self.fail_write(e)

    def evaluate(self):
        metrics = self.model.evaluate()
        if self.log:
            self.log_row(iter=self.step, epoch=self.step / self.steps_per_epoch, **metrics)
            self.log.print(f"step {self.step}: " + "  ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
        return metrics


def run(args):
    device = pick_device(args)
    torch.backends.cudnn.benchmark = True  # fixed crop sizes: let cuDNN pick its fastest convolutions
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model = PROBLEMS[args.problem].build(args, device).to(device)
    args = model.args  # with what the problem resolved (an evaluation's data flags come from its encoder)
    torch.manual_seed(rank_seed(args.seed))
    if args.batch_size > len(model.train_data()):
        raise UserError(f"--batch_size {args.batch_size} is larger than the {len(model.train_data())} training images")
    net = distribute(model, args, device)
    optimizer = model.make_optimizer()
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and args.amp_dtype == "fp16")
    step = checkpoint.restore(args.resume, model, optimizer, scaler) if args.resume else 0
    if args.resume:
        folder = os.path.dirname(args.resume)
        if dist.is_main():
            checkpoint.remove_stale_temporaries(folder)
    else:
        folder = dist.broadcast_object(create_run_folder(args) if dist.is_main() else None)
    log = RunLog(folder, resume_step=step if args.resume else None) if dist.is_main() else None
    if log:
        log.print(f"resuming {folder} at step {step}" if args.resume else f"run folder {folder}")
    state = Run(args, model, net, optimizer, scaler, folder, log, step)
    model.train()
    model.fit(state)
    state.bar.close()
    if state.stopped_by:
        if log:
            again = " and the same launch flags (--dist ddp ..., or under torchrun)" if dist.world_size() > 1 else ""
            log.print(f"stopped by signal {state.stopped_by} at step {state.step}; "
                      f"continue with: python train.py --resume {folder}{again}")
        sys.exit(128 + state.stopped_by)
    if state.step == 0 and not args.resume:
        state.save()
    metrics = state.evaluate() if args.eval_freq >= 0 else {}
    if log:
        log.print(f"done {args.problem} {folder} " + " ".join(f"{k}={v:.2f}" for k, v in metrics.items()))
    return folder, metrics


def main(argv=None):
    try:
        args = parse_args(argv, PROBLEMS)
        check_launch(args)
        return dist.launch(run, args)
    except UserError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        runlog.release()  # the run folder's lock, for a caller that goes on (the kernel drops it at exit anyway)


if __name__ == "__main__":
    main()
