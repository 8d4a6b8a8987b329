import argparse
import math

import pytest
import torch

from utils.optim import LARS, LBFGS, build_optimizer, lr_at, param_groups


def test_lars_step_matches_hand_computation():
    p = torch.tensor([3.0, 4.0], requires_grad=True)  # |p| = 5
    p.grad = torch.tensor([0.6, 0.8])  # |g| = 1
    lr, wd, eta, mu = 0.5, 0.1, 0.01, 0.9
    opt = LARS([p], lr=lr, momentum=mu, weight_decay=wd, trust_coefficient=eta, eps=0.0)
    opt.step()
    a = eta * 5 / (1 + wd * 5)  # 0.05 / 1.5
    v1 = (torch.tensor([0.6, 0.8]) + wd * torch.tensor([3.0, 4.0])) * a
    expected = torch.tensor([3.0, 4.0]) - lr * v1
    assert torch.allclose(p.detach(), expected, atol=1e-7)
    # second step: momentum buffer v <- mu * v + a' * (g + wd p)
    p.grad = torch.tensor([1.0, 0.0])
    q = expected.clone()
    a2 = eta * q.norm() / (1 + wd * q.norm())
    v2 = mu * v1 + (torch.tensor([1.0, 0.0]) + wd * q) * a2
    opt.step()
    assert torch.allclose(p.detach(), q - lr * v2, atol=1e-7)


def test_simclr_rule_takes_the_norm_of_the_decayed_gradient():
    p = torch.tensor([3.0, 4.0], requires_grad=True)  # |p| = 5
    p.grad = torch.tensor([0.6, 0.8])
    lr, wd, eta = 0.5, 0.1, 0.01
    LARS([p], lr=lr, momentum=0.9, weight_decay=wd, trust_coefficient=eta, eps=0.5, clip=True, rule="simclr").step()
    g = torch.tensor([0.6, 0.8]) + wd * torch.tensor([3.0, 4.0])  # (0.9, 1.2): |g + wd p| = 1.5
    a = eta * 5 / 1.5  # no eps, no clip (the larc rule would give 0.05 / 2.0 here)
    assert torch.allclose(p.detach(), torch.tensor([3.0, 4.0]) - lr * a * g, atol=1e-7)


def test_lars_clip_caps_the_adaptive_rate_at_the_global_lr():
    p = torch.tensor([3.0, 4.0], requires_grad=True)
    p.grad = torch.tensor([0.0006, 0.0008])  # tiny gradient -> huge trust ratio
    lr = 0.1
    LARS([p], lr=lr, momentum=0.0, weight_decay=0.0, trust_coefficient=0.001, eps=0.0, clip=True).step()
    # a = eta|p|/|g| = 5 >= lr, so clip gives min(a / lr, 1) = 1: a plain SGD step
    assert torch.allclose(p.detach(), torch.tensor([3.0, 4.0]) - lr * torch.tensor([0.0006, 0.0008]))


def test_lars_excluded_group_is_plain_sgd_and_zero_norm_skips_adaptation():
    b = torch.tensor([1.0, -1.0], requires_grad=True)
    b.grad = torch.tensor([0.5, 0.5])
    w = torch.zeros(2, 2, requires_grad=True)  # |p| = 0: trust ratio 1
    w.grad = torch.ones(2, 2)
    opt = LARS([dict(params=[w]), dict(params=[b], weight_decay=0.0, lars_exclude=True)], lr=0.1, momentum=0.0,
               weight_decay=0.5)
    opt.step()
    assert torch.allclose(b.detach(), torch.tensor([0.95, -1.05]))
    assert torch.allclose(w.detach(), torch.full((2, 2), -0.1))


def test_bias_and_norm_exclusion_is_by_dimension_and_catches_downsample_bn():
    from models.backbones import ResNet
    net = ResNet("resnet18", 0.125, cifar_stem=True, in_channels=1)
    weights, excluded = param_groups(net, 1e-4, True)
    names = {id(p): n for n, p in net.named_parameters()}
    excluded_names = {names[id(p)] for p in excluded["params"]}
    assert "layer2.0.downsample.1.weight" in excluded_names and "bn1.bias" in excluded_names
    assert all(p.ndim > 1 for p in weights["params"]) and excluded["weight_decay"] == 0.0
    assert len(weights["params"]) + len(excluded["params"]) == len(list(net.parameters()))


def schedule_args(**kw):
    base = dict(lr=0.3, batch_size=512, lr_scaling="linear", warmup=0.1, warmup_start_lr=0.0, final_lr=0.0,
                lr_schedule="cosine", lr_steps=[], lr_gamma=0.1, cosine_time="after_warmup", lr_interval="step")
    return argparse.Namespace(**dict(base, **kw))


def test_warmup_then_cosine_values():
    args = schedule_args()  # peak 0.3 * 512 / 256 = 0.6, 10 warmup steps of 100
    assert lr_at(0, 100, 10, args) == 0.0
    assert lr_at(5, 100, 10, args) == pytest.approx(0.3)
    assert lr_at(10, 100, 10, args) == pytest.approx(0.6)
    assert lr_at(55, 100, 10, args) == pytest.approx(0.3)  # half way through the cosine
    assert lr_at(100, 100, 10, args) == pytest.approx(0.0, abs=1e-12)
    args = schedule_args(final_lr=0.003, warmup=0.0, lr_scaling="sqrt")
    assert lr_at(0, 100, 10, args) == pytest.approx(0.3 * math.sqrt(2))
    assert lr_at(100, 100, 10, args) == pytest.approx(0.003 * math.sqrt(2))


def test_vissl_schedule_global_cosine_after_a_rewritten_warmup_start():
    # VISSL's simclr_8node_resnet at 64 x 64: warm-up 0.6 -> 4.8 over 10% of the steps, then the cosine 4.8 -> 0
    # at the run's overall progress: 4.8 * (1 + cos(0.1 pi)) / 2 = 4.683 just after the warm-up
    args = schedule_args(batch_size=4096, warmup_start_lr=0.0375, cosine_time="global")
    assert lr_at(0, 1000, 10, args) == pytest.approx(0.6)
    assert lr_at(99, 1000, 10, args) == pytest.approx(0.6 + 4.2 * 99 / 100)
    assert lr_at(100, 1000, 10, args) == pytest.approx(4.8 * (1 + math.cos(0.1 * math.pi)) / 2)
    assert lr_at(550, 1000, 10, args) == pytest.approx(4.8 * (1 + math.cos(0.55 * math.pi)) / 2)
    assert lr_at(100, 1000, 10, schedule_args(batch_size=4096)) == pytest.approx(4.8)  # the default: at the peak


def test_linear_decay_and_the_lr_held_for_each_epoch():
    args = schedule_args(lr_schedule="linear", warmup=0.0, lr_scaling="none", final_lr=0.1)
    assert [lr_at(s, 100, 10, args) for s in (0, 50, 100)] == pytest.approx([0.3, 0.2, 0.1])
    per_epoch = schedule_args(warmup=0.0, lr_scaling="none", lr_interval="epoch")
    values = [lr_at(s, 100, 10, per_epoch) for s in range(100)]
    assert values[:10] == [0.3] * 10 and len(set(values)) == 10  # one value an epoch, from the epoch's start
    assert values[15] == pytest.approx(0.15 * (1 + math.cos(0.1 * math.pi)))


def test_decay_bias_leaves_out_only_the_norm_layers():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                              torch.nn.Linear(4, 2), torch.nn.LayerNorm(2))
    names = {id(p): n for n, p in net.named_parameters()}
    weights, excluded = param_groups(net, 1e-4, True, decay_bias=True)
    assert {names[id(p)] for p in weights["params"]} == {"0.weight", "0.bias", "3.weight", "3.bias"}
    assert {names[id(p)] for p in excluded["params"]} == {"1.weight", "1.bias", "4.weight", "4.bias"}


def test_multistep_values():
    args = schedule_args(lr_schedule="multistep", warmup=0.0, lr_steps=[2, 3], lr_scaling="none")
    values = [lr_at(s, 50, 10, args) for s in (0, 19, 20, 29, 30, 49)]
    assert values == pytest.approx([0.3, 0.3, 0.03, 0.03, 0.003, 0.003])


def test_build_optimizer_groups():
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    args = argparse.Namespace(opt="adamw", weight_decay=0.05, exclude_bias_and_norm=True, decay_bias=False, momentum=0.9)
    opt = build_optimizer(net, args)
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert [len(g["params"]) for g in opt.param_groups] == [1, 3]


def logistic_problem(seed=0, n=400, d=6, classes=4):
    """Features and noisy labels of a linear rule: not separable, so the regularised and plain optima exist."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.2, 5, d, dtype=torch.float64)
    y = (x @ torch.randn(d, classes, generator=g, dtype=torch.float64) + 2 * torch.randn(n, classes, generator=g,
                                                                                          dtype=torch.float64)).argmax(1)
    return x, y


def closure_of(opt, objective):
    """The closure L-BFGS re-evaluates: gradients of objective() from zero."""
    def closure():
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss
    return closure


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_lbfgs_reaches_the_optimum_of_the_regularised_logistic_regression(wd):
    torch.manual_seed(0)  # the two nets' inits, whichever tests ran before in this worker
    x, y = logistic_problem()
    net = torch.nn.Linear(x.shape[1], 4).double()
    args = argparse.Namespace(opt="lbfgs", problem="eval", weight_decay=wd, exclude_bias_and_norm=True, decay_bias=False, momentum=0.9)
    opt = build_optimizer(net, args)
    assert isinstance(opt, LBFGS) and opt.decayed == ([net.weight] if wd else [])
    closure = closure_of(opt, lambda: torch.nn.functional.cross_entropy(net(x), y))
    for step in range(1, 201):
        opt.step(closure)
        assert opt.state[net.weight]["n_iter"] == step  # one iteration per step
    # convex objective: a vanishing gradient of loss + wd/2 |W|^2 (bias not decayed) certifies the optimum
    def objective(model):
        return torch.nn.functional.cross_entropy(model(x), y) + 0.5 * wd * model.weight.pow(2).sum()
    grads = torch.autograd.grad(objective(net), [net.weight, net.bias])
    assert max(g.abs().max().item() for g in grads) < 1e-4
    # and the same minimum as torch's L-BFGS run the usual way: 500 iterations in one call
    ref = torch.nn.Linear(x.shape[1], 4).double()
    once = torch.optim.LBFGS(ref.parameters(), max_iter=500, line_search_fn="strong_wolfe")
    once.step(closure_of(once, lambda: objective(ref)))
    # ill-conditioned features (scales 0.2 to 5): a gradient under 1e-4 leaves up to 4e-8 of objective over 20 inits
    assert objective(net).item() == pytest.approx(objective(ref).item(), abs=1e-6)
    if wd:
        return
    # with torch's default max_eval (1 for max_iter 1) the line search gets no evaluation and stalls far from it
    stalled = torch.nn.Linear(x.shape[1], 4).double()
    torch.nn.utils.vector_to_parameters(torch.zeros(4 * x.shape[1] + 4, dtype=torch.float64), stalled.parameters())
    plain = torch.optim.LBFGS(stalled.parameters(), max_iter=1, line_search_fn="strong_wolfe")
    plain_closure = closure_of(plain, lambda: torch.nn.functional.cross_entropy(stalled(x), y))
    for _ in range(200):
        plain.step(plain_closure)
    assert objective(stalled).item() > objective(net).item() + 1e-3


def test_lbfgs_is_for_linear_probes_only():
    import train
    from utils.config import parse_args
    from utils.errors import UserError
    with pytest.raises(UserError, match="argument --opt: invalid choice: 'lbfgs'"):
        parse_args(["--problem", "simclr", "--opt", "lbfgs"], train.PROBLEMS)
    assert parse_args(["--problem", "eval", "--opt", "lbfgs"], train.PROBLEMS).opt == "lbfgs"
