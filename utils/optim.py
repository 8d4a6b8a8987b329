"""LARS (the Apex LARC rule), full-batch L-BFGS for linear probes, optimiser construction and the learning-rate schedule."""
import math

import torch
import torch.nn as nn


def _norms(tensors):
    return torch.stack(torch._foreach_norm(tensors))


def larc_ratio(group, p_norms, grads, decayed):
    """Apex's LARC (VISSL, swav): a = eta |p| / (|g| + wd |p| + eps); with clip, a = min(a / lr, 1)."""
    g_norms = _norms(grads)
    ratio = group["trust_coefficient"] * p_norms / (g_norms + group["weight_decay"] * p_norms + group["eps"])
    if group["clip"]:
        ratio = torch.clamp(ratio / group["lr"], max=1.0)
    return ratio, g_norms


def simclr_ratio(group, p_norms, grads, decayed):
    """SimCLR's LARS (simclr-pytorch): a = eta |p| / |g + wd p|, the norm of the decayed gradient; no eps, no clip."""
    g_norms = _norms(decayed)
    return group["trust_coefficient"] * p_norms / g_norms, g_norms


TRUST_RATIOS = {"larc": larc_ratio, "simclr": simclr_ratio}  # --lars_rule


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose gradient is rescaled per parameter by a trust ratio a (`rule`, TRUST_RATIOS):
    g <- (g + wd * p) * a;  v <- mu * v + g;  p <- p - lr * v, with a = 1 where |p| or |g| is 0.
    A param group with `lars_exclude: True` skips the adaptation (a = 1) and uses its own weight decay.
    """

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, trust_coefficient=0.001, eps=1e-8, clip=False,
                 rule="larc"):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
                        eps=eps, clip=clip, lars_exclude=False, rule=rule)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            wd, lr = group["weight_decay"], group["lr"]
            decayed = torch._foreach_add(grads, params, alpha=wd) if wd != 0 else grads
            if not group["lars_exclude"]:
                p_norms = _norms(params)
                ratio, g_norms = TRUST_RATIOS[group.get("rule", "larc")](group, p_norms, grads, decayed)
                ratio = torch.where((p_norms > 0) & (g_norms > 0), ratio, torch.ones_like(ratio))
                decayed = torch._foreach_mul(decayed, list(ratio.unbind()))
            bufs = []
            for p, g in zip(params, decayed):
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = g.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(g)
                bufs.append(state["momentum_buffer"])
            torch._foreach_add_(params, bufs, alpha=-lr)
        return loss


class LBFGS(torch.optim.LBFGS):
    """L-BFGS with a strong-Wolfe line search, one iteration per `step(closure)`; the history carries over steps.

    For a convex probe on features held in memory, with the whole training set as one batch: it reaches the
    optimum in a few hundred steps, where SGD stops short. `lr` is the first step length the line search tries.
    Weight decay is an L2 term wd/2 * |w|^2 added to the loss, on the parameters in `decayed`.
    """

    def __init__(self, params, decayed, weight_decay=0.0, history_size=20):
        # max_eval: torch's default (max_iter * 5 // 4 = 1) would leave the line search no evaluation of its own
        super().__init__(params, lr=1.0, max_iter=1, max_eval=26, history_size=history_size, line_search_fn="strong_wolfe")
        self.decayed, self.weight_decay = list(decayed), weight_decay

    def step(self, closure):
        def regularised():
            loss = closure()
            if self.weight_decay:
                penalty = 0.5 * self.weight_decay * sum(p.pow(2).sum() for p in self.decayed)
                penalty.backward()
                loss = loss + penalty.detach()
            return loss
        return super().step(regularised)


NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(model, weight_decay, exclude_bias_and_norm, lr_scales=None, decay_bias=False):
    """Weights, and (when excluded) biases and norm parameters, found by ndim, not by name (with `decay_bias`,
    only the parameters of normalisation layers are excluded); each split again by `lr_scales` ({parameter:
    factor of the schedule's lr}, 1 for the rest), kept in the group as `lr_scale`."""
    params = [p for p in model.parameters() if p.requires_grad]
    norms = {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)}

    def excluded(p):
        return p.ndim <= 1 and (not decay_bias or id(p) in norms)

    if not exclude_bias_and_norm:
        groups = [dict(params=params, weight_decay=weight_decay)]
    else:
        groups = [dict(params=[p for p in params if not excluded(p)], weight_decay=weight_decay),
                  dict(params=[p for p in params if excluded(p)], weight_decay=0.0, lars_exclude=True)]
    scales = lr_scales or {}
    split = []
    for g in groups:
        for factor in sorted({scales.get(p, 1.0) for p in g["params"]}, key=lambda f: f != 1.0):
            split.append(dict(g, params=[p for p in g["params"] if scales.get(p, 1.0) == factor], lr_scale=factor))
    return split


def build_optimizer(model, args, lr_scales=None):
    groups = param_groups(model, args.weight_decay, args.exclude_bias_and_norm, lr_scales, args.decay_bias)
    if args.opt == "lbfgs":  # offered by --problem eval only: a full-batch fit on features held in memory
        return LBFGS([p for g in groups for p in g["params"]], [p for g in groups if g["weight_decay"] for p in g["params"]],
                     args.weight_decay)
    if args.opt == "lars":
        return LARS(groups, lr=0.0, momentum=args.momentum, weight_decay=args.weight_decay,
                    trust_coefficient=args.larc_trust_coefficient, eps=args.larc_eps, clip=args.larc_clip,
                    rule=args.lars_rule)
    for g in groups:
        g.pop("lars_exclude", None)
    if args.opt == "sgd":
        return torch.optim.SGD(groups, lr=0.0, momentum=args.momentum, nesterov=args.nesterov)
    return torch.optim.AdamW(groups, lr=0.0, betas=(args.momentum, 0.999))


def scale_lr(base, batch_size, rule):
    if rule == "linear":
        return base * batch_size / 256
    if rule == "sqrt":
        return base * math.sqrt(batch_size / 256)
    return base


def epoch_start(step, steps_per_epoch):
    """--lr_interval epoch (VISSL's update_interval): the lr of a step is that of its epoch's first step."""
    return step // steps_per_epoch * steps_per_epoch


def after_warmup(step, warmup_steps, total_steps):
    """--cosine_time after_warmup: the cosine runs from the peak at the warm-up's end to the last step."""
    return (step - warmup_steps) / max(1, total_steps - warmup_steps)


def global_time(step, warmup_steps, total_steps):
    """--cosine_time global (VISSL's interval_scaling [rescaled, fixed]): the cosine is taken at the run's overall
    progress, so the lr just after the warm-up is already below the peak."""
    return step / max(1, total_steps)


LR_STEP = {"step": lambda step, steps_per_epoch: step, "epoch": epoch_start}  # --lr_interval
COSINE_TIME = {"after_warmup": after_warmup, "global": global_time}  # --cosine_time


def lr_at(step, total_steps, steps_per_epoch, args):
    """Learning rate of optimiser step `step` (0-based): warmup, then cosine / linear / multistep / const."""
    peak = scale_lr(args.lr, args.batch_size, args.lr_scaling)
    start = scale_lr(args.warmup_start_lr, args.batch_size, args.lr_scaling)
    final = scale_lr(args.final_lr, args.batch_size, args.lr_scaling)
    warmup_steps = int(round(args.warmup * total_steps))
    step = LR_STEP[args.lr_interval](step, steps_per_epoch)
    if step < warmup_steps:
        return start + (peak - start) * step / warmup_steps
    if args.lr_schedule == "cosine":
        t = COSINE_TIME[args.cosine_time](step, warmup_steps, total_steps)
        return final + 0.5 * (peak - final) * (1 + math.cos(math.pi * t))
    if args.lr_schedule == "linear":
        return peak + (final - peak) * after_warmup(step, warmup_steps, total_steps)
    if args.lr_schedule == "multistep":
        passed = sum(step >= round(e * steps_per_epoch) for e in args.lr_steps)
        return peak * args.lr_gamma ** passed
    return peak
