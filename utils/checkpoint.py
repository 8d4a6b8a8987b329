"""Checkpoints: plain dicts of tensors and Python values, loadable with weights_only=True.

`save` writes a run's state (every rank's random streams and own state included), `export_backbone` the backbone
alone; `restore` puts a checkpoint back into a model, its optimiser and its scaler.
"""
import argparse
import hashlib
import os
import pathlib
import pickle
import sys

import numpy as np
import torch

from utils import dist, seeds
from utils.errors import UserError

# where and how a run ran: on --resume these come from the new command line, never from the saved run
LAUNCH_FLAGS = ("dist", "dist_address", "node_rank", "world_size", "num_proc_per_node", "dist_timeout", "device",
                "lock_wait")
CHECKPOINT = "checkpoint.pth.tar"
BACKBONE = "backbone.pth"
TMP = ".tmp"  # a file being written is <name>.tmp<pid>


class _KeepErrors:
    """A file whose write errors are kept: torch.save reports them as a RuntimeError that hides the cause."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self):
        self.f.flush()


def write_atomic(path, write):
    """`write(file)` into a temporary file, fsync it, rename it over `path`, fsync the folder: neither a crash nor
    a power loss leaves a half-written or empty file under the final name. On failure the temporary file is
    removed and a disk error is raised as an OSError naming `path` (no space left on device, say)."""
    tmp = f"{path}{TMP}{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            sink = _KeepErrors(f)
            try:
                write(sink)
            except RuntimeError:
                if sink.error is None:
                    raise
                raise sink.error
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError) and e.errno is not None:
            raise OSError(e.errno, e.strerror, path) from None
        raise
    folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def save_atomic(obj, path):
    write_atomic(path, lambda f: torch.save(obj, f))


def remove_stale_temporaries(folder):
    """Delete the temporary files that processes no longer alive left in `folder` (killed in the middle of a save)."""
    for name in os.listdir(folder):
        stem, _, pid = name.rpartition(TMP)
        if stem and pid.isdigit() and not _alive(int(pid)):
            os.remove(os.path.join(folder, name))


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def resolve(path):
    """A run folder means its checkpoint.pth.tar."""
    if path and os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT)
    if not path or not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}")
    return path


def plain_data():
    """The classes of plain data that the sources' own files pickle besides tensors, each under every name it is
    pickled by, for a weights-only load: argparse Namespaces (simclr-pytorch's and timm's flags), pathlib paths
    (simclr-pytorch's run folder in its flags) and numpy scalars and dtypes (a learning rate from a numpy schedule in
    an optimiser's state: simclr-pytorch, swav, DeepCluster-v2). Building them runs no code of the file's choosing."""
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    named = [(argparse.Namespace, "argparse.Namespace"), (np.dtype, "numpy.dtype"),
             (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]
    for cls in (pathlib.PosixPath, pathlib.PurePosixPath):
        named += [(cls, f"pathlib.{cls.__name__}"), (cls, f"pathlib._local.{cls.__name__}")]  # (Python 3.13's module)
    named += [(cls, f"numpy.dtypes.{name}") for name, cls in vars(np.dtypes).items() if name.endswith("DType")]
    return named


def read(path, mmap=False):
    """Whatever torch.save wrote at `path` (a run folder means its checkpoint.pth.tar), on the CPU, loaded weights-only:
    tensors, plain Python values and the plain data of `plain_data()`; a file that pickles any other class is refused
    in one line naming it, as is a truncated or foreign file. `mmap`: tensors are read only when touched, so reading
    the saved flags of a large checkpoint costs little."""
    path = resolve(path)
    if os.path.getsize(path) == 0:
        raise UserError(f"{path} is empty: not a checkpoint")
    allowed = plain_data()
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        try:
            found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:
            found = []
        found = [g for g in found if g not in {name for _, name in allowed}]
        if found:
            raise UserError(f"{path} pickles Python objects that a weights-only load does not run ({', '.join(found[:4])})"
                            f": from code you trust, save the tensors alone, e.g. torch.save(ckpt['state_dict'], "
                            f"'weights.pth'), and give that file")
        raise UserError(f"{path} is not a checkpoint this repo can read, or is truncated ({str(e).splitlines()[0][:120]})")
    except Exception as e:
        raise UserError(f"{path} is not a checkpoint this repo can read, or is truncated ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:120]})")


def is_ours(ckpt):
    return isinstance(ckpt, dict) and isinstance(ckpt.get("args"), dict)


def load(path, mmap=False):
    """The checkpoint of this repo at `path` (a run folder, checkpoint.pth.tar or backbone.pth) on the CPU."""
    ckpt = read(path, mmap)
    if not is_ours(ckpt):
        raise UserError(f"{resolve(path)} is not a checkpoint of this repo (no saved args)")
    return ckpt


def saved_args(path):
    """The flags of the run a training checkpoint continues; an exported backbone.pth is refused, as is a file whose
    flags name no problem."""
    ckpt = load(path, mmap=True)
    missing = [k for k in ("step", "model") if k not in ckpt]
    if missing:
        raise UserError(f"{resolve(path)} holds no training state ({', '.join(missing)}): --resume takes a run folder "
                        f"or its {CHECKPOINT}, not an exported {BACKBONE}")
    if not isinstance(ckpt["args"].get("problem"), str):
        raise UserError(f"{resolve(path)}: its saved flags name no problem (a pruned or foreign file): it cannot be "
                        f"resumed")
    return ckpt["args"]


def digest(value, h=None):
    """A BLAKE2b checksum of a checkpoint's contents: every tensor's dtype, shape and bytes, every other value's
    repr, dict keys in sorted order. A flipped bit anywhere in a tensor changes it."""
    top = h is None
    h = h or hashlib.blake2b(digest_size=16)
    if torch.is_tensor(value):
        h.update(f"{value.dtype}{tuple(value.shape)}".encode())
        h.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().data)
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            h.update(repr(key).encode())
            digest(value[key], h)
    elif isinstance(value, (list, tuple)):
        h.update(f"{type(value).__name__}{len(value)}".encode())
        for item in value:
            digest(item, h)
    else:
        h.update(repr(value).encode())
    return h.hexdigest() if top else None


def sealed(state):
    """`state` with the checksum of its contents (`digest`), which `verified` checks."""
    return dict(state, checksum=digest(state))


def verified(ckpt, path):
    """`ckpt` after checking its contents against the checksum saved with it: a mismatch (a flipped bit, a damaged
    disk) is one line naming the file. A file saved before checksums were kept has none and passes."""
    saved = ckpt.get("checksum")
    if saved is not None and digest({k: v for k, v in ckpt.items() if k != "checksum"}) != saved:
        raise UserError(f"{resolve(path)} is corrupt: its contents do not match the checksum they were saved with (a "
                        f"damaged disk or copy); restore it from a copy, or start afresh")
    return ckpt


def backbone_weights(ckpt, path):
    """(spec, state_dict) of the backbone of a loaded checkpoint or exported backbone.pth."""
    spec = ckpt.get("backbone_spec")
    if spec is None:
        raise UserError(f"{resolve(path)} holds no backbone (problem '{ckpt['args'].get('problem')}')")
    if "backbone" in ckpt:
        return spec, ckpt["backbone"]
    prefix = "backbone."
    return spec, {k[len(prefix):]: v for k, v in ckpt["model"].items() if k.startswith(prefix)}


def save(folder, step, total, epoch, args, model, optimizer, scaler, probe=None):
    """Rank 0 writes checkpoint.pth.tar; every rank must call it: each sends its random streams and own state to rank
    0 alone (no rank receives another's). `probe`: the online probe (models.monitors.OnlineProbe), alike on every
    rank. A failed write raises the OSError, naming the file; the checkpoint before it stays intact."""
    per_rank = dist.gather_to_0((rng_state(model.generators), model.rank_state()))
    if dist.is_main():
        save_atomic(sealed(dict(args=vars(args), backbone_spec=model.backbone_spec, step=step, total=total, epoch=epoch,
                                model=model.state_dict(), optimizer=optimizer.state_dict(), scaler=scaler.state_dict(),
                                rng=[r for r, _ in per_rank], rank_state=[s for _, s in per_rank],
                                **(dict(online_probe=probe.state_dict()) if probe else {}))),
                    os.path.join(folder, CHECKPOINT))


def export_backbone(folder, args, model):
    """Rank 0 writes backbone.pth, the backbone alone with the spec that rebuilds it; every rank must call it."""
    if dist.is_main():
        save_atomic(sealed(dict(args=vars(args), backbone_spec=model.backbone_spec, backbone=model.backbone.state_dict())),
                    os.path.join(folder, BACKBONE))
    dist.barrier()  # no rank exits (and gets its peers stopped) while rank 0 writes


def restore(path, model, optimizer, scaler, probe=None):
    """Load the checkpoint at `path` into them (and the online probe, when both have one); returns its step. An optimiser other than the checkpoint's (or
    with other parameter groups) starts afresh, with a warning. On another number of processes than it was
    saved with, the random streams start afresh (distinct per rank and per resume point) and per-rank state
    (SwAV's queue, DeepCluster-v2's banks) is rebuilt by the model; so, with a warning, for a file of an older layout
    that lacks them, or its optimiser's or gradient scaler's state. A file whose contents fail their checksum is
    refused in one line."""
    ckpt = verified(load(path, mmap=True), path)  # mapped: ranks on a node share the pages of every rank's state
    check_shapes(ckpt, model, path)
    model.load_state_dict(ckpt["model"])
    saved_opt = ckpt["args"].get("opt")
    try:
        if saved_opt != model.args.opt:
            raise ValueError(f"the checkpoint's optimiser is {saved_opt}")
        if "optimizer" not in ckpt:
            raise ValueError("the checkpoint holds no optimiser state")
        optimizer.load_state_dict(ckpt["optimizer"])
    except ValueError as e:  # another optimiser, or other parameter groups: its state does not carry over
        warn(f"--opt {model.args.opt} starts afresh ({e}); weights, step and schedule continue")
    if "scaler" in ckpt:
        scaler.load_state_dict(ckpt["scaler"])
    elif scaler.is_enabled():
        warn("the checkpoint holds no gradient scaler state: fp16's loss scale starts afresh")
    if probe and "online_probe" in ckpt:
        probe.load_state_dict(ckpt["online_probe"])
    step = ckpt["step"]
    if "rng" not in ckpt or "rank_state" not in ckpt:
        warn(f"{resolve(path)} is of an older layout without every rank's random streams and state: they start afresh "
             f"from the resume step, so the run does not end as an uninterrupted one would")
        reseed(model.generators, model.args.seed, step)
    elif len(ckpt["rng"]) == dist.world_size():
        set_rng_state(ckpt["rng"][dist.rank()], model.generators)
        model.load_rank_state(ckpt["rank_state"][dist.rank()])
    else:
        reseed(model.generators, model.args.seed, step)
    return step


def warn(line):
    if dist.is_main():
        print(f"warning: {line}", file=sys.stderr)


def reseed(generators, seed, step):
    """Fresh streams for a resume on another number of processes: still distinct per rank and resume point."""
    for name, gen in generators.items():
        gen.manual_seed(seeds.seed_of(seed, name, dist.rank(), "resumed at", step))


def shapes(state, prefix=""):
    """{name: shape} of every tensor in a state dict, the tensors of nested dicts (extra state) included."""
    out = {}
    for key, value in state.items():
        if torch.is_tensor(value):
            out[prefix + key] = tuple(value.shape)
        elif isinstance(value, dict):
            out.update(shapes(value, f"{prefix}{key}."))
    return out


def check_shapes(ckpt, model, path):
    """One line, before anything is loaded, when the checkpoint's tensors are not those of the model the flags
    build: the first tensor that differs, and the flags whose values differ from the saved run's."""
    there, here = shapes(ckpt["model"]), shapes(model.state_dict())
    differ = sorted(k for k in there.keys() | here.keys() if there.get(k) != here.get(k))
    if not differ:
        return
    name = differ[0]
    shown = {side: list(d[name]) if name in d else "absent" for side, d in (("there", there), ("here", here))}
    saved = ckpt["args"]
    flags = [f"--{k} {saved[k]} there, {v} here" for k, v in sorted(vars(model.args).items())
             if k in saved and saved[k] != v and k not in LAUNCH_FLAGS + ("resume", "config", "dry_run")]
    raise UserError(f"--resume {path}: the run's weights do not fit the model these flags build ({name}: "
                    f"{shown['there']} there, {shown['here']} here); "
                    + ("flags that differ from the run's: " + "; ".join(flags) if flags else "no flag differs from the run's"))


def rng_state(generators):
    """This process's random streams: torch's, CUDA's and the model's own generators (by name)."""
    state = {"torch": torch.get_rng_state(), "generators": {k: g.get_state() for k, g in generators.items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()  # the current device's
    return state


def set_rng_state(state, generators):
    torch.set_rng_state(state["torch"])
    for name, gen in generators.items():
        if name in state["generators"]:
            gen.set_state(state["generators"][name])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
