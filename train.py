"""Self-supervised pretraining and evaluation: python train.py --config configs/X.yaml [--flag value ...].

One loop for every problem (`Run.loop`, one step of it `train_step`). A method (models/) brings its flags, model,
loss and at most a few hooks (models/base.py states the contract); this file builds the run from the flags (its
data, loaders, evaluation, online probe and files), runs it on one process or many, logs, checkpoints and resumes;
utils/stops.py ends a run early on a signal or a non-finite step, and a failed write ends it here.
"""
import functools
import os
import shlex
import sys
import time

import torch
from tqdm import tqdm

from data.datasets import FeatureData, FolderData, load_data
from data.loader import TrainBatches, dead_worker, steps_per_epoch, total_steps, unreadable_list
from models.dcv2 import DeepClusterV2
from models.eval import LinearEval, lbfgs_step, on_validation, take_labelled, through_batch_norm
from models.finetune import FineTune
from models.knn import extract_features, knn_accuracy
from models.monitors import CollapseWatch, OnlineProbe
from models.npid import NPID
from models.simclr import SimCLR
from models.swav import SwAV
from utils import checkpoint, dist, optim, runlog, seeds
from utils.config import parse_args, run_flags
from utils.errors import Failure, UserError
from utils.optim import lr_at
from utils.runlog import RunLog, create_run_folder
from utils.stops import StopFlag, Stopped, Stops, write_failed

METHODS = {"simclr": SimCLR, "swav": SwAV, "npid": NPID, "dcv2": DeepClusterV2}  # pretraining
EVALUATIONS = {"eval": LinearEval, "finetune": FineTune}  # of a trained encoder, on labelled images
PROBLEMS = {**METHODS, **EVALUATIONS}


def on_features(args):
    """The probe trains on features extracted once (--precompute_features): every rank holds all of them and trains
    the same probe on the whole batch, without DDP, exactly as one process does."""
    return args.problem == "eval" and args.precompute_features


def check_launch(args):
    """The mistakes of a distributed launch that can be reported once, before any process starts."""
    device = dist.pick_device(args.device)
    procs = dist.total_procs(args)
    if args.batch_size % procs and not on_features(args):
        raise UserError(f"--batch_size {args.batch_size} must divide by the number of processes ({procs})")
    if args.decode == "device" and args.interpolation == "bicubic":
        raise UserError("--decode device crops by area averaging (roi_align); --interpolation bicubic needs --decode workers")
    if args.sync_bn and procs > 1:
        if device.type == "cpu":
            raise UserError("--sync_bn needs GPUs: torch.nn.SyncBatchNorm has no CPU kernel")
        dist.sync_bn_groups(procs, args.sync_bn_group_size, dist.procs_per_node(args))


def build(args, device):
    """The run's images and model from the flags: an evaluation's flags completed from its encoder and its images
    narrowed to the labelled ones it uses; the same initial weights on every rank, then per-rank random streams,
    the optimiser and the gradient scaler. Returns (args, data, model, optimizer, scaler), `args` the flags the
    model resolved (the run records them)."""
    torch.backends.cudnn.benchmark = True  # fixed crop sizes: let cuDNN pick its fastest convolutions
    encoder = None
    if args.problem in EVALUATIONS:  # the encoder's data, normalisation and backbone, where the flags leave them unset
        args, encoder = EVALUATIONS[args.problem].resolve(args)
    data = load_data(args, pretrain=args.problem in METHODS, device=device)
    if args.problem in EVALUATIONS:
        data = take_labelled(args, data)
    torch.manual_seed(seeds.seed_of(args.seed, "weights"))
    if args.problem in EVALUATIONS:
        model = EVALUATIONS[args.problem](args, data.train, device, encoder).to(device)
    else:
        model = METHODS[args.problem](args, data.train, device).to(device)
    torch.manual_seed(seeds.seed_of(args.seed, "global", dist.rank()))
    optimizer = optim.build_optimizer(model, model.args, model.lr_scales())
    scaler = torch.amp.GradScaler(device.type, enabled=model.args.amp and model.args.amp_dtype == "fp16")  # fp16 only
    return model.args, data, model, optimizer, scaler


def data_sized_state(args, data, model, procs):
    """[(what, bytes on each rank, the flag that shrinks it, on the device or not)] of everything the run holds that
    grows with its images, on each of `procs` ranks: the method's own (Method.state_bytes), a probe's training
    features, the features of an evaluation (each rank its share), an image folder's index (host memory)."""
    d = model.backbone.feat_dim
    states = [(what, size, flag, True) for what, size, flag in type(model).state_bytes(model.args, len(data.train), procs)]
    if on_features(args):
        states.append((f"the probe's training features, {len(data.train)} x {d} float32 on every rank",
                       4 * len(data.train) * d, "--precompute_features false", True))
    if args.eval_freq >= 0:
        rows = -(-len(data.knn_train) // procs) + -(-len(data.test) // procs)
        states.append((f"an evaluation's features, {len(data.knn_train)} training and {len(data.test)} test images x "
                       f"{d} float32 shared by the ranks", 4 * rows * d, "more processes, or --eval_freq -1", True))
    for split, images in (("training", data.train), ("test", data.test)):
        if isinstance(images, FolderData):
            size = images.paths.blob.nbytes + images.paths.offsets.nbytes + 8 * len(images)
            states.append((f"the {split} folder's index of {len(images)} files, host memory of every rank", size, None,
                           False))
    return states


def size_text(size):
    """Bytes as a reader takes them in: 15.5 MB, 1.36 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} B"


def too_big_for(device, states):
    """The warning line when the data-sized state on the device exceeds a GPU's memory, else None."""
    if device.type != "cuda":
        return None
    on_device = [s for s in states if s[3]]
    total, memory = sum(s[1] for s in on_device), torch.cuda.get_device_properties(device).total_memory
    if total <= memory:
        return None
    what, size, flag, _ = max(on_device, key=lambda s: s[1])
    return (f"warning: each rank's data-sized state needs {size_text(total)}, more than the {size_text(memory)} of "
            f"{torch.cuda.get_device_name(device)}, before any activation: the largest is {what} ({size_text(size)}; "
            f"{flag} shrinks it)")


def distribute(model, args, device):
    """SyncBatchNorm and DistributedDataParallel around `model`; the model itself alone, or when every rank trains
    on the whole batch."""
    if dist.world_size() == 1 or on_features(args):
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
    """What a run shows and records of its steps: the progress bar (open inside `with progress:`), and every
    --log_freq steps a logs.csv row of the mean training loss since the last row (over every rank) and the rate.
    Rows go to `log` (rank 0's RunLog)."""

    def __init__(self, args, log, step, total, steps_per_epoch, full_batch, device, uniform_loss=None):
        self.args, self.log, self.step, self.total = args, log, step, total
        self.steps_per_epoch, self.full_batch, self.uniform_loss = steps_per_epoch, full_batch, uniform_loss
        self.bar = None
        self.loss_sum, self.loss_count, self.images, self.tick = torch.zeros((), device=device), 0, 0, time.time()

    def __enter__(self):
        args = self.args
        self.bar = tqdm(total=self.total, initial=self.step, disable=not dist.is_main() or self.step >= self.total,
                        leave=False, desc=f"{args.problem} ({args.opt})" if self.full_batch else args.problem,
                        unit="iter" if self.full_batch else "it", dynamic_ncols=True)
        return self

    def __exit__(self, *exc):
        self.bar.close()

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
    """A run in progress, from `step` (the steps done) to `total`: the loop, the schedule, evaluations, checkpoints
    and the early stops (utils/stops.py); what it shows and logs of its steps is its `progress`. A probe's frozen
    encoder gives its features once, here (`features`): the probe trains on them (--precompute_features) and every
    evaluation scores them."""

    def __init__(self, args, data, model, net, optimizer, scaler, probe, folder, log, step, signals):
        self.args, self.data, self.model, self.net, self.optimizer, self.scaler = args, data, model, net, optimizer, scaler
        self.probe, self.folder, self.log, self.step = probe, folder, log, step
        self.features = self.extract() if args.problem == "eval" else None
        train = data.train
        if on_features(args):  # every rank gets every training feature
            (feats, labels), n = self.features[0], len(data.train)
            train = FeatureData(dist.gather_strided(feats, n), dist.gather_strided(labels, n), data.train.num_classes)
        self.steps_per_epoch = steps_per_epoch(len(train), args.batch_size)
        self.total = total_steps(args, len(train))
        self.trains = not getattr(args, "eval_only", False)  # a re-scored probe is only evaluated
        self.full_batch = args.opt == "lbfgs"  # each step one pass over every training feature
        shards = 1 if on_features(args) else dist.world_size()
        self.batches = TrainBatches(train, args.batch_size, args.seed, model.device, crops=model.crops,
                                    workers=args.workers, rank=dist.rank() if shards > 1 else 0, world_size=shards,
                                    decode=args.decode, listed=unreadable_list(train, folder, args.max_unreadable),
                                    draft=args.draft_decode)
        self.done, self.stopped_by, self.lr = step >= self.total or not self.trains, None, 0.0
        monitored = getattr(args, "monitors", False)  # (eval and finetune have none)
        self.progress = Progress(args, log, step, self.total, self.steps_per_epoch, self.full_batch, model.device,
                                 model.uniform_loss if monitored else None)
        self.watch = CollapseWatch(args.problem, getattr(args, "embedding_dim", 0), model.uniform_loss)
        self.stops = Stops(args.problem, folder, model.device, step, bool(args.resume), signals)

    def extract(self):
        """(train, test): (features, labels) of this rank's share of the labelled training images and of the test
        images, from the backbone in eval mode."""
        if self.log and self.args.problem == "eval":
            self.log.print(f"features of {len(self.data.knn_train)} training and {len(self.data.test)} test images")
        return [extract_features(self.model.backbone, d, self.model.device, workers=self.args.workers,
                                 autocast=self.model.autocast) for d in (self.data.knn_train, self.data.test)]

    def loop(self):
        """The training loop of every problem: epochs of batches, one optimiser step each, until done or stopped;
        the L-BFGS probe's steps are each one pass over every training feature."""
        if self.full_batch:
            return self.full_batch_loop()
        model = self.model
        while not self.done:
            epoch = self.step // self.steps_per_epoch
            model.on_epoch_start(epoch, self.batches)
            for batch in self.batches.epoch(epoch, start=self.step % self.steps_per_epoch):
                self.set_lr()
                loss, logs, out = train_step(model, self.net, self.optimizer, self.scaler, batch, self.step)
                if self.probe:
                    self.probe.step(out["features"], batch[1], self.args.num_crops[0])
                if self.step_done(loss, logs, out, self.args.batch_size):
                    break

    def full_batch_loop(self):
        feats, labels = self.batches.data.images, self.batches.data.labels
        feats = through_batch_norm(self.model.classifier, feats)
        while not self.done:
            self.set_lr()
            loss = lbfgs_step(self.model.classifier[1], self.optimizer, feats, labels)
            self.step_done(loss, {}, {}, len(feats))

    def set_lr(self):
        self.lr = lr_at(self.step, self.total, self.steps_per_epoch, self.args)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * group.get("lr_scale", 1.0)

    def step_done(self, loss, logs, out, images):
        """After an optimiser step, which gave (loss, logs, out) on `images` images: counts it (`self.step` is then the
        number of steps done, this one included), then the checks, log row, evaluation and checkpoint that are due.
        True when the run must stop (its end, or a stop signal); a non-finite step raises Failure."""
        args = self.args
        self.step += 1
        self.stops.watch(loss, self.model, self.scaler)
        self.progress.count(loss, images)
        at_end = self.step >= self.total
        log_due = self.step % args.log_freq == 0 or at_end
        save_due = self.step % args.save_freq == 0 or at_end
        # a GPU reads the non-finite flag only at log and save steps: reading it costs a sync
        signalled = self.stops.poll(self.step, loss, out, check=self.model.device.type == "cpu" or log_due or save_due)
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
        listed = self.batches.listed
        if listed is not None:  # image folders: the files that failed to decode, replaced by stand-ins
            self.note_unreadable(listed)
            logs = dict(logs, unreadable=len(listed))
        monitors = self.model.monitors(out)
        if monitors and dist.world_size() > 1:
            values = dist.all_reduce_mean(torch.tensor(list(monitors.values()), device=self.model.device))
            monitors = dict(zip(monitors, values.tolist()))
        if self.probe:
            monitors["online_acc"] = self.probe.accuracy()
        row = self.progress.row(self.step, self.lr, dict(logs, **monitors))
        warning = self.watch.check(self.step, row) if monitors else None
        if warning and self.log:
            self.log.print(warning)

    def note_unreadable(self, listed):
        """Say which files any rank failed to decode since the last row; past --max_unreadable, stop with a
        checkpoint (the stand-ins make the steps so far valid ones)."""
        new, reason = self.batches.gather_unreadable()
        if new and self.log:
            self.log.print(f"step {self.step}: {len(new)} more images cannot be decoded and were replaced by others "
                           f"({len(listed)} in all), listed in {listed.path}")
        if reason:
            if self.log:
                self.log.row(iter=self.step, epoch=self.step / self.steps_per_epoch, unreadable=len(listed))
            self.save()
            raise UserError(f"{reason}; {self.stops.last_checkpoint()}")

    def save(self):
        """Checkpoint, then the exported backbone, after checking that every weight is finite. A failed write raises
        its OSError (train() makes it the run's stop); once the checkpoint is written it is the intact one."""
        self.stops.check_weights(self.model, self.step)
        checkpoint.save(self.folder, self.step, self.total, self.step // self.steps_per_epoch, self.args, self.model,
                        self.optimizer, self.scaler, self.probe)
        self.stops.saved_step = self.step
        checkpoint.export_backbone(self.folder, self.args, self.model)

    def evaluate(self):
        """The method's own metrics on the test images' features (a probe's accuracy, NPID's bank kNN), then the kNN
        of the backbone's features, test images against the labelled training images; logged and returned."""
        train, test = self.features or self.extract()
        metrics = dict(self.model.evaluate(test))
        k1, k5 = knn_accuracy(*train, *test, self.data.test.num_classes, self.args.knn_k, self.args.knn_t,
                              in_place=self.features is None)  # features extracted for this evaluation alone
        metrics = on_validation(self.args, dict(metrics, knn_acc1=k1, knn_acc5=k5))
        if self.log:
            self.log.row(iter=self.step, epoch=self.step / self.steps_per_epoch, **metrics)
            self.log.print(f"step {self.step}: " + "  ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
        return metrics


def open_run(args, signals, auto=False):
    """The problem built, its run folder made (or the resumed one read back) and its Run at the step to go on from.
    `auto`: a --resume auto launch that found no run to continue (runlog.create_run_folder)."""
    device = dist.pick_device(args.device)
    args, data, model, optimizer, scaler = build(args, device)
    if args.batch_size > len(data.train):
        raise UserError(f"--batch_size {args.batch_size} is larger than the {len(data.train)} training images")
    net = distribute(model, args, device)
    labelled = (data.train.labels >= 0).all()  # STL-10's unlabeled images: nothing for an online probe to learn
    probe = (OnlineProbe(model.backbone.feat_dim, data.train.num_classes, args.online_probe_lr, device)
             if args.problem in METHODS and args.online_probe and labelled else None)
    step = checkpoint.restore(args.resume, model, optimizer, scaler, probe) if args.resume else 0
    if args.resume:
        folder = os.path.dirname(args.resume)
        if dist.is_main():
            checkpoint.remove_stale_temporaries(folder)
    else:
        folder = dist.broadcast_object(create_run_folder(args, auto) if dist.is_main() else None)
    log = RunLog(folder, resume_step=step if args.resume else None) if dist.is_main() else None
    if log and not args.resume:  # a probe's or fine-tuning's labelled and held-out images
        for name, lines in (("label_subset.txt", data.label_subset), ("validation.txt", data.validation_subset)):
            if lines:
                text = "".join(f"{line}\n" for line in lines).encode()
                checkpoint.write_atomic(os.path.join(folder, name), lambda f, text=text: f.write(text))
    if log:
        log.print(f"resuming {folder} at step {step}" if args.resume else f"run folder {folder}")
        big = too_big_for(device, data_sized_state(args, data, model, dist.world_size())) if device.type == "cuda" else None
        for line in model.warnings() + ([big] if big else []):
            log.print(line)
    return Run(args, data, model, net, optimizer, scaler, probe, folder, log, step, signals)


def train(args, auto=False):
    """Train `args.problem` in this process (one of W under DDP): a new run folder, or the resumed one (`auto`: a
    --resume auto launch that found none to continue, so makes one under its name's lock). The run is
    finished once its last evaluation and save are done (runlog.DONE); `--resume` of a run stopped before that,
    in its last step, evaluation or save, finishes it in its own folder. Returns (run folder, final metrics);
    raises Failure when the run stops early: a stop signal, a non-finite step, a failed write."""
    with StopFlag() as signals:  # the run's signal handlers, and the caller's again after it
        run = None
        try:
            run = open_run(args, signals, auto)
            resumed_at_end = run.step >= run.total and bool(args.resume)
            run.model.train()
            with run.progress:
                run.loop()
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
            if run.log:
                phase = "in its final evaluation and save" if signals.at_once else f"at once, in step {run.step}"
                run.log.print(f"stopped by signal {stop.signum} {phase}; {run.stops.last_checkpoint()}; "
                              f"continue with: {resume_command(run.folder)}")
            raise Failure(code=128 + stop.signum)
        except OSError as e:  # a full or failing disk while the run writes its folder
            if e.filename is None:
                raise
            raise (run.stops.write_failed(e) if run is not None else write_failed(e)) from None
        except (RuntimeError, MemoryError) as e:  # out of memory, or a loader worker killed (the OOM killer, say)
            why = out_of_memory(e, args) or dead_worker(e)
            if why is None:
                raise
            where = (f"in step {run.step}; {run.stops.last_checkpoint()}; continue with: {resume_command(run.folder)}"
                     if run is not None else "while the run was being built")
            raise Failure(f"{why} {where}") from None
        finally:
            if run is not None:
                run.batches.close()  # its loader's workers, whatever happened


def out_of_memory(error, args):
    """The one-line account of an allocation that failed, naming what shrinks the run, else None."""
    text = str(error)
    if not (isinstance(error, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in text
            or "out of memory" in text.lower()):
        return None
    procs = dist.world_size()
    device = "the GPU" if "CUDA" in text or isinstance(error, torch.OutOfMemoryError) else "the host"
    crops = " --num_crops / --size_crops," if getattr(args, "num_crops", None) else ""
    return (f"out of memory on {device} (a batch of {args.batch_size // procs} images a process): lower --batch_size "
            f"({args.batch_size}),{crops} --width or --arch, or add processes")


def finish(run, resumed_at_end):
    """After the last step: the final save (again, when a resumed run may have stopped inside it), the final
    evaluation, and the mark that the run is finished. Returns the evaluation's metrics."""
    if (run.step == 0 and not run.args.resume) or resumed_at_end:
        run.save()
    metrics = run.evaluate() if run.args.eval_freq >= 0 else {}
    if run.log:
        runlog.mark_done(run.folder, run.step, metrics)
        run.log.print(f"done {run.args.problem} {run.folder} " + " ".join(f"{k}={v:.2f}" for k, v in metrics.items()))
    return metrics


def resume_command(folder):
    again = " and the same launch flags (--dist ddp ..., or under torchrun)" if dist.world_size() > 1 else ""
    return f"python train.py --resume {shlex.quote(folder)}{again}"


def dry_run(args, sources):
    """--dry_run: the recipe a launch would train, from the problem built as training builds it (its data read, on
    the CPU; no encoder runs, no feature is extracted); nothing is written. Returns the printed lines."""
    parsed, procs = vars(args), dist.total_procs(args)
    args, data, model, optimizer, _ = build(args, torch.device("cpu"))
    images = len(data.train)
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
    for what, size, flag, _ in data_sized_state(args, data, model, procs):
        lines.append(f"memory per rank: {what}: {size_text(size)} ({size} bytes)" + (f"; {flag} shrinks it" if flag else ""))
    lines += model.warnings()
    if model.crops:
        lines.append("crops: " + " + ".join(f"{size} px at scale {lo:g}-{hi:g}" for size, (lo, hi) in model.crops))
    print("\n".join(lines))
    return lines


def main(argv=None):
    try:
        sources, run = {}, run_flags(argv)
        resumed = runlog.resumed_run(run)  # locks the run folder that --resume names, then reads it
        args = parse_args(argv, PROBLEMS, resumed, sources)
        check_launch(args)
        if args.dry_run:
            return dry_run(args, sources)
        auto = args.resume is None and run.resume == "auto"  # found no run to continue: makes one
        return dist.launch(functools.partial(train, auto=auto), args)
    except Failure as e:  # a UserError (exit 2), a failed run (1) or a stop signal (128 + its number)
        if str(e):
            print(f"train.py: error: {e}", file=sys.stderr)
        sys.exit(e.code)
    except KeyboardInterrupt:  # Ctrl-C before a run installs its handlers (waiting on --lock_wait, say)
        print("train.py: error: stopped by signal 2 before training began", file=sys.stderr)
        sys.exit(128 + 2)
    finally:
        runlog.release()  # the run folder's lock, for a caller that goes on (the kernel drops it at exit anyway)


if __name__ == "__main__":
    main()
