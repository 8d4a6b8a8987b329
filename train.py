"""Self-supervised pretraining and evaluation: python train.py --config configs/X.yaml [--flag value ...].

One loop for every problem (`Run.loop`, one step of it `train_step`). A problem class (models/) brings its flags,
data, model and loss and at most a few hooks (models/base.py states the contract); this file runs it on one
process or many, logs, checkpoints and resumes; utils/stops.py ends a run early on a signal, a non-finite step
or a failed write.
"""
import os
import sys
import time

import torch
from tqdm import tqdm

from data.loader import steps_per_epoch, total_steps
from models.dcv2 import DeepClusterV2
from models.eval import LinearEval
from models.finetune import FineTune
from models.monitors import CollapseWatch
from models.npid import NPID
from models.simclr import SimCLR
from models.swav import SwAV
from utils import checkpoint, dist, runlog, seeds
from utils.config import parse_args, run_flags
from utils.errors import Failure, UserError
from utils.optim import lr_at
from utils.runlog import RunLog, create_run_folder
from utils.stops import StopFlag, Stopped, Stops

PROBLEMS = {"simclr": SimCLR, "swav": SwAV, "npid": NPID, "dcv2": DeepClusterV2, "eval": LinearEval,
            "finetune": FineTune}


def check_launch(args):
    """The mistakes of a distributed launch that can be reported once, before any process starts."""
    device = dist.pick_device(args.device)
    procs = dist.total_procs(args)
    if args.batch_size % procs and not PROBLEMS[args.problem].whole_batch_on_every_rank(args):
        raise UserError(f"--batch_size {args.batch_size} must divide by the number of processes ({procs})")
    if args.decode == "device" and args.interpolation == "bicubic":
        raise UserError("--decode device crops by area averaging (roi_align); --interpolation bicubic needs --decode workers")
    if args.sync_bn and procs > 1:
        if device.type == "cpu":
            raise UserError("--sync_bn needs GPUs: torch.nn.SyncBatchNorm has no CPU kernel")
        dist.sync_bn_groups(procs, args.sync_bn_group_size, dist.procs_per_node(args))


def build(args, device):
    """(problem, optimiser, gradient scaler): the same initial weights on every rank, then per-rank random streams.
    The problem's `args` are the flags it resolved (an evaluation's data flags come from its encoder)."""
    torch.backends.cudnn.benchmark = True  # fixed crop sizes: let cuDNN pick its fastest convolutions
    torch.manual_seed(seeds.seed_of(args.seed, "weights"))
    model = PROBLEMS[args.problem].build(args, device).to(device)
    torch.manual_seed(seeds.seed_of(args.seed, "global", dist.rank()))
    optimizer = model.make_optimizer()
    scaler = torch.amp.GradScaler(device.type, enabled=model.args.amp and model.args.amp_dtype == "fp16")  # fp16 only
    return model, optimizer, scaler


def distribute(model, args, device):
    """SyncBatchNorm and DistributedDataParallel around `model`; the model itself alone, or when every rank trains
    on the whole batch."""
    if dist.world_size() == 1 or model.whole_batch_on_every_rank(args):
        return model
    if args.sync_bn:
        dist.convert_sync_bn(model, args.sync_bn_group_size, dist.procs_per_node(args))
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def train_step(model, net, optimizer, scaler, batch, step):
    """One optimiser step, hooks included, in the order they run. `net` is `model`, or DDP around it; `scaler` does
    nothing unless fp16. Returns the forward's (loss, logs, out)."""
    loss, logs, out = net(batch, step)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    model.after_backward(step)  # gradients ready, weights not yet changed
    scaler.step(optimizer)
    scaler.update()
    model.after_step(step, out)  # weights changed: memory banks and queues follow
    return loss, logs, out


class Progress:
    """What a run shows and records of its steps: the progress bar, and every --log_freq steps a logs.csv row of
    the mean training loss since the last row (over every rank) and the rate. Rows go to `log` (rank 0's RunLog);
    a failed write raises the OSError, which the run turns into its stop."""

    def __init__(self, args, log, step, total, steps_per_epoch, full_batch, device, uniform_loss=None):
        self.log, self.steps_per_epoch, self.full_batch = log, steps_per_epoch, full_batch
        self.uniform_loss = uniform_loss
        self.bar = tqdm(total=total, initial=step, disable=not dist.is_main() or step >= total, leave=False,
                        desc=f"{args.problem} ({args.opt})" if full_batch else args.problem,
                        unit="iter" if full_batch else "it", dynamic_ncols=True)
        self.loss_sum, self.loss_count, self.images, self.tick = torch.zeros((), device=device), 0, 0, time.time()

    def count(self, loss, images):
        """After each step: its loss (kept on the device) and its images."""
        self.loss_sum += loss.detach()
        self.loss_count += 1
        self.images += images
        self.bar.update(1)

    def row(self, step, lr, logs):
        """The row of step `step` (iterations and the objective for a full-batch solver), then a new interval.
        Returns the row; with `uniform_loss` (ln K) it holds the mean loss's distance from it too."""
        rate = self.images / (time.time() - self.tick)
        train_loss = dist.all_reduce_mean(self.loss_sum).item() / self.loss_count
        if self.uniform_loss is not None:
            logs = dict(logs, loss_minus_lnk=train_loss - self.uniform_loss)
        if self.full_batch:
            self.bar.set_postfix(objective=f"{train_loss:.6g}")
        else:
            self.bar.set_postfix(epoch=f"{step / self.steps_per_epoch:.2f}", loss=f"{train_loss:.4f}", lr=f"{lr:.4g}",
                                 img_s=f"{rate:.0f}")
        row = dict(iter=step, epoch=step / self.steps_per_epoch, lr=lr, train_loss=train_loss, img_per_s=rate,
                   **{k: float(v) for k, v in logs.items()})
        if self.log:
            self.log.row(**row)
        self.loss_sum.zero_()
        self.loss_count, self.images = 0, 0
        self.restart_clock()
        return row

    def restart_clock(self):
        """The rate leaves out what was not training (an evaluation)."""
        self.tick = time.time()


class Run:
    """A run in progress, from `step` to `total`: the loop, the schedule, evaluations, checkpoints and the early
    stops (utils/stops.py); what it shows and logs of its steps is its `progress`."""

    def __init__(self, args, model, net, optimizer, scaler, probe, folder, log, step, signals):
        self.args, self.model, self.net, self.optimizer, self.scaler = args, model, net, optimizer, scaler
        self.probe, self.folder, self.log, self.step = probe, folder, log, step
        data = model.train_data()
        self.steps_per_epoch = steps_per_epoch(len(data), args.batch_size)
        self.total = total_steps(args, len(data))
        self.done, self.stopped_by, self.lr = step >= self.total, None, 0.0
        # a full-batch step is one pass over the data: the bar shows iterations and the objective
        monitored = getattr(args, "monitors", False)  # (eval and finetune have none)
        self.progress = Progress(args, log, step, self.total, self.steps_per_epoch, model.full_batch, model.device,
                                 model.uniform_loss if monitored else None)
        self.watch = CollapseWatch(args.problem, getattr(args, "embedding_dim", 0), model.uniform_loss)
        self.stops = Stops(args.problem, folder, model.device, step, bool(args.resume), self.progress.bar.close, signals)
        self.batches = None

    def full_batch_loop(self):
        """The loop of a problem without batches (the L-BFGS probe): each step one pass over every training image."""
        while not self.done:
            self.set_lr()
            loss, images = self.model.full_batch_step(self.optimizer)
            self.step_done(loss, {}, {}, images)

    def loop(self):
        """The training loop of every problem: epochs of batches, one optimiser step each, until done or stopped."""
        model = self.model
        batches = self.batches = model.train_batches(self.folder)
        while not self.done:
            epoch = self.step // self.steps_per_epoch
            model.on_epoch_start(epoch, batches)
            for batch in batches.epoch(epoch, start=self.step % self.steps_per_epoch):
                self.set_lr()
                loss, logs, out = train_step(model, self.net, self.optimizer, self.scaler, batch, self.step)
                if self.probe:
                    self.probe.step(*model.probe_batch(batch, out))
                if self.step_done(loss, logs, out, self.args.batch_size):
                    break

    def set_lr(self):
        self.lr = lr_at(self.step, self.total, self.steps_per_epoch, self.args)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * group.get("lr_scale", 1.0)

    def step_done(self, loss, logs, out, images):
        """After optimiser step `self.step`, which gave (loss, logs, out) on `images` images: the checks, log row,
        evaluation and checkpoint that are due. True when the run must stop (its end, or a stop signal)."""
        step, args = self.step, self.args
        self.stops.watch(loss, self.model, self.scaler)
        self.step += 1
        self.progress.count(loss, images)
        at_end = self.step >= self.total
        log_due = self.step % args.log_freq == 0 or at_end
        save_due = self.step % args.save_freq == 0 or at_end
        # a GPU reads the non-finite flag only at log and save steps: reading it costs a sync
        signalled = self.stops.poll(step, loss, out, check=self.model.device.type == "cpu" or log_due or save_due)
        if log_due:
            self.log_progress(logs, out)
        if args.eval_freq > 0 and self.step % args.eval_freq == 0 and not at_end:
            self.evaluate()
            self.model.train()
            self.progress.restart_clock()
        if save_due or signalled:
            self.save()
        if signalled:
            self.stopped_by = self.stops.signal_number()
        self.done = at_end or signalled
        return self.done

    def log_progress(self, logs, out):
        """The logs.csv row: the step's `logs`, the monitors of its tensors `out` (the mean over the ranks) and the
        online probe's accuracy; and the collapse warning when the row shows one."""
        listed = self.batches.listed if self.batches is not None else None
        if listed is not None:  # image folders: the files that failed to decode, replaced by stand-ins
            self.note_unreadable(listed)
            logs = dict(logs, unreadable=len(listed))
        monitors = self.model.monitors(out)
        if monitors and dist.world_size() > 1:
            values = dist.all_reduce_mean(torch.tensor(list(monitors.values()), device=self.model.device))
            monitors = dict(zip(monitors, values.tolist()))
        if self.probe:
            monitors["online_acc"] = self.probe.accuracy()
        row = self.writing(self.progress.row, self.step, self.lr, dict(logs, **monitors))
        warning = self.watch.check(self.step, row) if row and monitors else None
        if warning and self.log:
            self.writing(self.log.print, warning)

    def note_unreadable(self, listed):
        """Say which files any rank failed to decode since the last row; past --max_unreadable, stop with a
        checkpoint (the stand-ins make the steps so far valid ones)."""
        new, reason = self.writing(self.batches.gather_unreadable)
        if new and self.log:
            self.log.print(f"step {self.step}: {len(new)} more images cannot be decoded and were replaced by others "
                           f"({len(listed)} in all), listed in {listed.path}")
        if reason:
            if self.log:
                self.writing(self.log.row, iter=self.step, epoch=self.step / self.steps_per_epoch, unreadable=len(listed))
            self.save()
            self.progress.bar.close()
            raise UserError(f"{reason}; {self.stops.last_checkpoint()}")

    def save(self):
        """Checkpoint and exported backbone, after checking that every weight is finite: nothing else is written."""
        self.stops.check_weights(self.model, self.step)
        try:
            checkpoint.save(self.folder, self.step, self.total, self.step // self.steps_per_epoch, self.args, self.model,
                            self.optimizer, self.scaler, self.probe)
        except OSError as e:
            if os.path.basename(e.filename or "") == checkpoint.BACKBONE:  # the checkpoint itself was written
                self.stops.saved_step = self.step
            self.stops.fail_write(e)
        self.stops.saved_step = self.step

    def writing(self, write, *args, **kw):
        """write(*args, **kw) into the run folder; a full or failing disk stops the run (Stops.fail_write)."""
        try:
            return write(*args, **kw)
        except OSError as e:
            self.stops.fail_write(e)

    def evaluate(self):
        metrics = self.model.evaluate()
        if self.log:
            self.writing(self.log.row, iter=self.step, epoch=self.step / self.steps_per_epoch, **metrics)
            self.log.print(f"step {self.step}: " + "  ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
        return metrics


def open_run(args, signals):
    """The problem built, its run folder made (or the resumed one read back) and its Run at the step to go on from."""
    device = dist.pick_device(args.device)
    model, optimizer, scaler = build(args, device)
    args = model.args
    if args.batch_size > len(model.train_data()):
        raise UserError(f"--batch_size {args.batch_size} is larger than the {len(model.train_data())} training images")
    net = distribute(model, args, device)
    probe = model.online_probe()
    step = checkpoint.restore(args.resume, model, optimizer, scaler, probe) if args.resume else 0
    if args.resume:
        folder = os.path.dirname(args.resume)
        if dist.is_main():
            checkpoint.remove_stale_temporaries(folder)
    else:
        folder = dist.broadcast_object(create_run_folder(args) if dist.is_main() else None)
    log = RunLog(folder, resume_step=step if args.resume else None) if dist.is_main() else None
    if log and not args.resume:
        for name, text in model.run_files().items():
            checkpoint.write_atomic(os.path.join(folder, name), lambda f, text=text: f.write(text.encode()))
    if log:
        log.print(f"resuming {folder} at step {step}" if args.resume else f"run folder {folder}")
        for line in model.warnings():
            log.print(line)
    return Run(args, model, net, optimizer, scaler, probe, folder, log, step, signals)


def train(args):
    """Train `args.problem` in this process (one of W under DDP): a new run folder, or the resumed one. The run is
    finished once its last evaluation and save are done (runlog.DONE); `--resume` of a run stopped before that,
    in its last step, evaluation or save, finishes it in its own folder."""
    with StopFlag() as signals:  # the run's signal handlers, and the caller's again after it
        run = None
        try:
            run = open_run(args, signals)
            resumed_at_end = run.done and bool(args.resume)
            run.model.train()
            if run.model.trains and run.model.full_batch:
                run.full_batch_loop()
            elif run.model.trains:
                run.loop()
            run.progress.bar.close()
            if run.stopped_by:
                if run.log:
                    run.log.print(f"stopped by signal {run.stopped_by} at step {run.step}; continue with: "
                                  f"{resume_command(run.folder)}")
                raise Failure(code=128 + run.stopped_by)
            signals.stop_at_once()  # the final phase: no step is left to finish before stopping
            return run.folder, finish(run, resumed_at_end)
        except Stopped as stop:
            if run is None:  # nothing was trained yet
                raise Failure(f"stopped by signal {stop.signum} before the first step", 128 + stop.signum)
            run.progress.bar.close()
            if run.log:
                phase = "in its final evaluation and save" if signals.at_once else f"at once, in step {run.step}"
                run.log.print(f"stopped by signal {stop.signum} {phase}; {run.stops.last_checkpoint()}; "
                              f"continue with: {resume_command(run.folder)}")
            raise Failure(code=128 + stop.signum)
        finally:
            if run is not None:
                run.progress.bar.close()  # however the run ends: a caller that goes on gets no stale progress bar


def finish(run, resumed_at_end):
    """After the last step: the final save (again, when a resumed run may have stopped inside it), the final
    evaluation, and the mark that the run is finished. Returns the evaluation's metrics."""
    if (run.step == 0 and not run.args.resume) or resumed_at_end:
        run.save()
    metrics = run.evaluate() if run.args.eval_freq >= 0 else {}
    if run.log:
        try:
            runlog.mark_done(run.folder, run.step, metrics)
        except OSError as e:
            run.stops.fail_write(e)
        run.log.print(f"done {run.args.problem} {run.folder} " + " ".join(f"{k}={v:.2f}" for k, v in metrics.items()))
    return metrics


def resume_command(folder):
    again = " and the same launch flags (--dist ddp ..., or under torchrun)" if dist.world_size() > 1 else ""
    return f"python train.py --resume {folder}{again}"


def dry_run(args, sources):
    """--dry_run: the recipe a launch would train, from the problem built as training builds it (data included,
    on the CPU); nothing is written. Returns the printed lines."""
    model, optimizer, _ = build(args, torch.device("cpu"))
    parsed, args, images, procs = vars(args), model.args, len(model.train_data()), dist.total_procs(args)
    per_epoch, total = steps_per_epoch(images, args.batch_size), total_steps(args, images)
    width = max(len(k) for k in vars(args))
    lines = [f"--{k:{width}s} {v!r:32s} "
             f"{sources.get(k, '') if k in parsed and parsed[k] == v else 'resolved by the problem'}"
             for k, v in sorted(vars(args).items())]
    lines.append(f"data: {args.data}, {images} training images; {procs} processes, {args.batch_size // procs} images "
                 f"each of a global batch of {args.batch_size}")
    lines.append(f"steps: {per_epoch} per epoch, {total} in all ({total / per_epoch:g} epochs)")
    warmup = int(round(args.warmup * total))
    lr = {name: lr_at(step, total, per_epoch, args) for name, step in
          (("warm-up start", 0), ("peak", warmup), ("last step", max(0, total - 1)))}
    lines.append(f"lr ({args.lr_schedule}, --lr {args.lr:g} scaled {args.lr_scaling} to the batch): " +
                 ", ".join(f"{v:.6g} at {name}" + (f" (step {warmup})" if name == "peak" else "") for name, v in lr.items()))
    for g in optimizer.param_groups:
        adapted = "LARS-adapted" if args.opt == "lars" and not g.get("lars_exclude") else "not LARS-adapted"
        lines.append(f"{args.opt} group: {len(g['params'])} tensors, {sum(p.numel() for p in g['params'])} parameters, "
                     f"weight decay {g.get('weight_decay', args.weight_decay):g}, lr x {g.get('lr_scale', 1.0):g}, "
                     f"{adapted}")
    lines += model.warnings()
    if model.crops():
        lines.append("crops: " + " + ".join(f"{size} px at scale {lo:g}-{hi:g}" for size, (lo, hi) in model.crops()))
    print("\n".join(lines))
    return lines


def main(argv=None):
    try:
        sources = {}
        resumed = runlog.resumed_run(run_flags(argv))  # locks the run folder that --resume names, then reads it
        args = parse_args(argv, PROBLEMS, resumed, sources)
        check_launch(args)
        if args.dry_run:
            return dry_run(args, sources)
        return dist.launch(train, args)
    except Failure as e:  # a UserError (exit 2), a failed run (1) or a stop signal (128 + its number)
        if str(e):
            print(f"train.py: error: {e}", file=sys.stderr)
        sys.exit(e.code)
    finally:
        runlog.release()  # the run folder's lock, for a caller that goes on (the kernel drops it at exit anyway)


if __name__ == "__main__":
    main()
