"""Checkpoints: plain dicts of tensors and Python values, loadable with weights_only=True.

`save` writes a run's state (every rank's random streams and own state included) and the exported
backbone; `restore` puts a checkpoint back into a model, its optimiser and its scaler.
"""
import os

import torch

from utils import dist
from utils.errors import UserError

CHECKPOINT = "checkpoint.pth.tar"
BACKBONE = "backbone.pth"


def save_atomic(obj, path):
    """Write to a temporary file, then rename: a crash never leaves a half-written checkpoint."""
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def resolve(path):
    """A run folder means its checkpoint.pth.tar."""
    if path and os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT)
    if not path or not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}")
    return path


def load(path, mmap=False):
    """The checkpoint at `path` (a run folder, checkpoint.pth.tar or backbone.pth) on the CPU. `mmap`: tensors
    are read only when touched, so reading the saved flags of a large checkpoint costs little."""
    path = resolve(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:
        raise UserError(f"{path} is not a checkpoint this repo can read ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
    if not isinstance(ckpt, dict) or "args" not in ckpt:
        raise UserError(f"{path} is not a checkpoint of this repo (no saved args)")
    return ckpt


def saved_args(path):
    """The flags a checkpoint's run was started with."""
    return load(path, mmap=True)["args"]


def backbone_weights(ckpt, path):
    """(spec, state_dict) of the backbone of a loaded checkpoint or exported backbone.pth."""
    spec = ckpt.get("backbone_spec")
    if spec is None:
        raise UserError(f"{resolve(path)} holds no backbone (problem '{ckpt['args'].get('problem')}')")
    if "backbone" in ckpt:
        return spec, ckpt["backbone"]
    prefix = "backbone."
    return spec, {k[len(prefix):]: v for k, v in ckpt["model"].items() if k.startswith(prefix)}


def save(folder, step, epoch, args, model, optimizer, scaler):
    """Rank 0 writes checkpoint.pth.tar and backbone.pth; every rank must call it (its streams are gathered)."""
    per_rank = dist.all_gather_object((rng_state(model.generators), model.rank_state()))
    if dist.is_main():
        common = dict(args=vars(args), backbone_spec=model.backbone_spec)
        save_atomic(dict(common, step=step, epoch=epoch, model=model.state_dict(), optimizer=optimizer.state_dict(),
                         scaler=scaler.state_dict(), rng=[r for r, _ in per_rank], rank_state=[s for _, s in per_rank]),
                    os.path.join(folder, CHECKPOINT))
        save_atomic(dict(common, backbone=model.backbone.state_dict()), os.path.join(folder, BACKBONE))
    dist.barrier()  # no rank exits (and gets its peers stopped) while rank 0 writes


def restore(path, model, optimizer, scaler):
    """Load the checkpoint at `path` into them; returns its step. On another number of processes than it was
    saved with, the random streams start afresh (distinct per rank and per resume point) and per-rank state
    (SwAV's queue, DeepCluster-v2's banks) is rebuilt by the model."""
    ckpt = load(path)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt.get("scaler", {}))
    step = ckpt["step"]
    if len(ckpt["rng"]) == dist.world_size():
        set_rng_state(ckpt["rng"][dist.rank()], model.generators)
        model.load_rank_state(ckpt["rank_state"][dist.rank()])
    else:
        model.reseed(step)
    return step


def rng_state(generators):
    """This process's random streams: torch's, CUDA's and the model's own generators (by name)."""
    state = {"torch": torch.get_rng_state(), "generators": {k: g.get_state() for k, g in generators.items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()  # the current device's
    return state


def set_rng_state(state, generators):
    torch.set_rng_state(state["torch"])
    saved = state.get("generators", {"augment": state.get("augment")})  # older checkpoints saved only "augment"
    for name, gen in generators.items():
        if saved.get(name) is not None:
            gen.set_state(saved[name])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
