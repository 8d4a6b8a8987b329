"""How a run ends before its last step: a stop signal, a non-finite loss or gradient, or a write that fails.

Each raises a `Failure` whose one line names what happened and which checkpoint is intact; a signal stops every
rank after the same step (with a checkpoint), the others exit with code 1 and write nothing non-finite.
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
    """The checks that end a run early. `saved_step` is the step of the newest intact checkpoint (None: none yet);
    `before_exit` runs before a failure is printed (the progress bar closes); `signals` is the run's StopFlag."""

    def __init__(self, problem, folder, device, step, resumed, before_exit, signals):
        self.problem, self.folder, self.before_exit, self.signals = problem, folder, before_exit, signals
        # a non-finite loss or gradient since the last check, kept on the device: reading it costs a GPU a sync
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        self.checked_step, self.saved_step = step, step if resumed else None

    def watch(self, loss, model, scaler):
        """Note whether this step's loss or gradients are non-finite, without reading the result back."""
        self.nonfinite |= ~torch.isfinite(loss.detach())
        if not scaler.is_enabled():  # fp16's scaler skips steps with infinite gradients on purpose
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            if grads:
                self.nonfinite |= ~torch.isfinite(torch.stack(torch._foreach_norm(grads)).sum())

    def poll(self, step, loss, out, check):
        """True when a stop signal reached any rank. With `check`, the steps up to `step` are read for non-finite
        values too (on every rank together), and a bad one ends the process (exit 1)."""
        signalled = self.signals.signal is not None
        bad = check and bool(self.nonfinite)
        if dist.world_size() > 1:  # every rank decides the same: one all-reduce of both flags
            flags = torch.stack([torch.tensor(float(signalled), device=self.nonfinite.device),
                                 (self.nonfinite & check).float()])
            signalled, bad = (dist.all_reduce_sum(flags) > 0).tolist()
        if bad:
            self.fail_nonfinite(step, loss, out)
        if check:
            self.checked_step = step + 1
        return signalled

    def signal_number(self):
        return self.signals.signal or signal.SIGTERM  # a rank that got no signal itself stops with its peers

    def fail_nonfinite(self, step, loss, out):
        """Exit 1; the step's tensors go to the run folder when it is the step that turned bad."""
        if self.checked_step == step:  # every earlier step was checked: this one is the culprit
            dump = os.path.join(self.folder, f"nonfinite_step{step}_rank{dist.rank()}.pt")
            torch.save(out, dump)
            what = f"{self.problem} loss is {loss.item():g} at step {step}"
            if torch.isfinite(loss):
                what = f"{self.problem} gradients are not finite at step {step} (loss {loss.item():.4g})"
            what += f"; that step's tensors are in {dump}"
        else:
            what = f"{self.problem} loss or gradients turned non-finite between steps {self.checked_step} and {step}"
        self.fail(what)

    def check_weights(self, model, step):
        """Exit 1 before a checkpoint would store a non-finite weight."""
        weights = [v for v in model.state_dict().values() if torch.is_tensor(v) and v.is_floating_point()]
        if weights and not bool(torch.stack([torch.isfinite(w).all() for w in weights]).all()):
            self.fail(f"{self.problem} weights are not finite after step {step}")

    def fail_write(self, e):
        """A full or failing disk (an OSError naming the file): exit 1; the last checkpoint stays as it was."""
        self.fail(f"{(e.strerror or str(e)).lower()} while writing {e.filename}")

    def fail(self, what):
        self.before_exit()
        raise Failure(f"{what}; {self.last_checkpoint()}")

    def last_checkpoint(self):
        if self.saved_step is None:
            return "no checkpoint was written"
        return f"the checkpoint of step {self.saved_step} is intact"
