"""Checkpoints: plain dicts of tensors and Python values, loadable with weights_only=True."""
import os

import torch

from utils.config import UserError

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


def load(path):
    path = resolve(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path} is not a checkpoint this repo can read ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
    if not isinstance(ckpt, dict) or "args" not in ckpt:
        raise UserError(f"{path} is not a checkpoint of this repo (no saved args)")
    return ckpt


def load_backbone(path):
    """(spec, state_dict) of the pretrained backbone in a run folder, checkpoint or exported backbone.pth."""
    ckpt = load(path)
    spec = ckpt.get("backbone_spec")
    if spec is None:
        raise UserError(f"{resolve(path)} holds no backbone (problem '{ckpt['args'].get('problem')}')")
    if "backbone" in ckpt:
        return spec, ckpt["backbone"]
    prefix = "backbone."
    return spec, {k[len(prefix):]: v for k, v in ckpt["model"].items() if k.startswith(prefix)}


def rng_state(augment_gen):
    """This process's random streams (each rank saves its own; the checkpoint holds the list)."""
    state = {"torch": torch.get_rng_state(), "augment": augment_gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()  # the current device's
    return state


def set_rng_state(state, augment_gen):
    torch.set_rng_state(state["torch"])
    augment_gen.set_state(state["augment"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
