"""How a run ends before its last step: a stop signal, a non-finite loss or gradient, or a write that fails.

Each raises a `Failure` whose one line names what happened and which checkpoint is intact; a signal stops every
rank after the same step (with a checkpoint); a non-finite step or weight fails the run (exit 1) before anything
non-finite is written.
"""
import os
import signal

import torch

from utils import dist
from utils.errors import Failure


class Stopped(BaseException):
    """Raised by a signal that must stop the run at once: a second signal, or any signal in the run's final phase
    (its last evaluation and save), where no step is left to finish first. A BaseException, so that nothing
    between the handler and `train()` takes it for an error of its own."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


class StopFlag:
    """SIGINT / SIGTERM ask the loop to stop after the current step, save a checkpoint and exit; a second one, or
    one in the final phase (`at_once`), raises `Stopped` where the process is. A context manager: the handlers
    are the run's only while it runs, and the previous ones are back after it, however it ends."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signal, self.at_once, self.previous = None, False, None

    def __enter__(self):
        self.previous = {sig: signal.signal(sig, self.set) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def stop_at_once(self):
        """From now on a signal stops the run where it is; one that came already stops it now."""
        self.at_once = True
        if self.signal is not None:
            raise Stopped(self.signal)

    def set(self, signum, frame):
        first = self.signal is None
        self.signal = signum
        if self.at_once or not first:
            raise Stopped(signum)


class Stops:
    """The checks that end a run early, each by raising `Failure`. `saved_step` is the step of the newest intact
    checkpoint (None: none yet); `checked` the number of steps known to be finite; `signals` the run's StopFlag."""

    def __init__(self, problem, folder, device, step, resumed, signals):
        self.problem, self.folder, self.signals = problem, folder, signals
        # a non-finite loss or gradient since the last check, kept on the device: reading it costs a GPU a sync
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        self.checked, self.saved_step = step, step if resumed else None

    def watch(self, loss, model, scaler):
        """Note whether this step's loss or gradients are non-finite, without reading the result back."""
        self.nonfinite |= ~torch.isfinite(loss.detach())
        if not scaler.is_enabled():  # fp16's scaler skips steps with infinite gradients on purpose
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            if grads:
                self.nonfinite |= ~torch.isfinite(torch.stack(torch._foreach_norm(grads)).sum())

    def poll(self, done, loss, out, check):
        """True when a stop signal reached any rank; `done` steps have run, the last gave `loss` and `out`. With
        `check`, they are read for non-finite values too (on every rank together): a bad one raises Failure."""
        signalled = self.signals.signal is not None
        bad = check and bool(self.nonfinite)
        if dist.world_size() > 1:  # every rank decides the same: one all-reduce of both flags
            flags = torch.stack([torch.tensor(float(signalled), device=self.nonfinite.device),
                                 (self.nonfinite & check).float()])
            signalled, bad = (dist.all_reduce_sum(flags) > 0).tolist()
        if bad:
            self.fail_nonfinite(done - 1, loss, out)
        if check:
            self.checked = done
        return signalled

    def signal_number(self):
        return self.signals.signal or signal.SIGTERM  # a rank that got no signal itself stops with its peers

    def fail_nonfinite(self, step, loss, out):
        """Raises Failure (exit 1) for step `step` (counted from 0); its tensors go to the run folder when it is the
        step that turned bad."""
        if self.checked == step:  # every earlier step was checked: this one is the culprit
            dump = os.path.join(self.folder, f"nonfinite_step{step}_rank{dist.rank()}.pt")
            torch.save(out, dump)
            what = f"{self.problem} loss is {loss.item():g} at step {step}"
            if torch.isfinite(loss):
                what = f"{self.problem} gradients are not finite at step {step} (loss {loss.item():.4g})"
            what += f"; that step's tensors are in {dump}"
        else:
            what = f"{self.problem} loss or gradients turned non-finite between steps {self.checked} and {step}"
        raise Failure(f"{what}; {self.last_checkpoint()}")

    def check_weights(self, model, step):
        """Raises Failure (exit 1) before a checkpoint would store a non-finite weight."""
        weights = [v for v in model.state_dict().values() if torch.is_tensor(v) and v.is_floating_point()]
        if weights and not bool(torch.stack([torch.isfinite(w).all() for w in weights]).all()):
            raise Failure(f"{self.problem} weights are not finite after step {step}; {self.last_checkpoint()}")

    def write_failed(self, e):
        """The Failure of a full or failing disk (an OSError naming the file): the last checkpoint is as it was."""
        return write_failed(e, self.saved_step)

    def last_checkpoint(self):
        return last_checkpoint(self.saved_step)


def last_checkpoint(saved_step):
    if saved_step is None:
        return "no checkpoint was written"
    return f"the checkpoint of step {saved_step} is intact"


def write_failed(e, saved_step=None):
    """The Failure of a full or failing disk (an OSError naming the file); `saved_step`: the newest intact checkpoint's."""
    return Failure(f"{(e.strerror or str(e)).lower()} while writing {e.filename}; {last_checkpoint(saved_step)}")
