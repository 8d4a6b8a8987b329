import math

import pytest
import torch
import torch.nn.functional as F

from models.simclr import info_nce_loss
from models.swav import sinkhorn, swav_loss


def plain_info_nce(z, num_crops, temperature):
    """InfoNCE written term by term from its definition (docs/methods.md), in float64 loops."""
    z = F.normalize(z.double(), dim=1)
    n = z.shape[0] // num_crops
    sim = (z @ z.T).tolist()
    terms = []
    for a in range(num_crops):
        for i in range(n):
            r = a * n + i
            negatives = sum(math.exp(sim[r][k] / temperature) for k in range(len(sim)) if k % n != i)
            for b in range(num_crops):
                if b != a:
                    pos = math.exp(sim[r][b * n + i] / temperature)
                    terms.append(-math.log(pos / (pos + negatives)))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("num_crops", [2, 6])
@pytest.mark.parametrize("temperature", [0.05, 0.1, 0.5, 1.0])
def test_info_nce_matches_plain_implementation(num_crops, temperature):
    z = torch.randn(num_crops * 5, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(num_crops))
    assert info_nce_loss(z, num_crops, temperature).item() == pytest.approx(plain_info_nce(z, num_crops, temperature),
                                                                            rel=1e-10)


def test_info_nce_two_crops_is_nt_xent():
    """C = 2: cross-entropy over the 2N - 1 other views, the positive being the other crop of the image."""
    n, t = 8, 0.2
    z = torch.randn(2 * n, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    zn = F.normalize(z, dim=1)
    logits = (zn @ zn.T / t).fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    assert info_nce_loss(z, 2, t).item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-12)


def test_info_nce_gradient_is_exact():
    z = torch.randn(3 * 4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: info_nce_loss(x, 3, 0.3), (z,))


def test_info_nce_half_precision_input_computes_in_float32():
    z = torch.randn(2 * 16, 64, generator=torch.Generator().manual_seed(3))
    loss = info_nce_loss(z.bfloat16(), 2, 0.1)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(info_nce_loss(z.bfloat16().float(), 2, 0.1).item(), rel=1e-6)


def plain_sinkhorn(scores, epsilon, num_iters):
    """Sinkhorn-Knopp as matrix scaling: Q = diag(u) P diag(v), rows of P^T to 1/K, columns to 1/B, then x B."""
    p = torch.exp(scores.double() / epsilon).T  # (K, B)
    k, b = p.shape
    u, v = torch.ones(k, dtype=torch.float64), torch.ones(b, dtype=torch.float64)
    for _ in range(num_iters):
        u = (1 / k) / (p @ v)
        v = (1 / b) / (p.T @ u)
    return (b * u[:, None] * p * v[None, :]).T


@pytest.mark.parametrize("batch,prototypes", [(8, 5), (32, 100), (5, 40)])
@pytest.mark.parametrize("epsilon", [0.03, 0.05, 0.5])
@pytest.mark.parametrize("num_iters", [1, 3, 10])
def test_sinkhorn_matches_matrix_scaling_and_rows_sum_to_one(batch, prototypes, epsilon, num_iters):
    scores = F.normalize(torch.randn(batch, prototypes, dtype=torch.float64, generator=torch.Generator().manual_seed(batch)), dim=1)
    q = sinkhorn(scores, epsilon, num_iters)
    torch.testing.assert_close(q, plain_sinkhorn(scores, epsilon, num_iters), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(batch, dtype=torch.float64))
    if num_iters == 10 and epsilon == 0.5:  # smooth enough to converge in 10 rounds: every prototype gets B/K
        torch.testing.assert_close(q.sum(dim=0), torch.full((prototypes,), batch / prototypes, dtype=torch.float64),
                                   rtol=2e-2, atol=0)


def plain_swav(scores, num_crops, crops_for_assign, temperature, epsilon, num_iters, queue=None):
    """The swapped prediction written with explicit loops over crops, images and prototypes."""
    n, k = scores.shape[0] // num_crops, scores.shape[1]
    s = scores.double().tolist()
    losses = []
    for j, a in enumerate(crops_for_assign):
        rows = scores[a * n:(a + 1) * n].double()
        if queue is not None:
            rows = torch.cat([queue[j].double(), rows])
        q = plain_sinkhorn(rows, epsilon, num_iters)[-n:].tolist()
        per_crop = []
        for p in range(num_crops):
            if p == a:
                continue
            total = 0.0
            for i in range(n):
                row = [x / temperature for x in s[p * n + i]]
                log_z = math.log(sum(math.exp(x) for x in row))
                total -= sum(q[i][c] * (row[c] - log_z) for c in range(k))
            per_crop.append(total / n)
        losses.append(sum(per_crop) / len(per_crop))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("num_crops,crops_for_assign", [(2, [0, 1]), (6, [0, 1]), (3, [0])])
@pytest.mark.parametrize("temperature,epsilon", [(0.1, 0.05), (0.5, 0.03)])
def test_swav_loss_matches_plain_implementation(num_crops, crops_for_assign, temperature, epsilon):
    g = torch.Generator().manual_seed(num_crops)
    scores = F.normalize(torch.randn(num_crops * 6, 12, dtype=torch.float64, generator=g), dim=1)
    got = swav_loss(scores, num_crops, crops_for_assign, temperature, epsilon, 3)[0].item()
    assert got == pytest.approx(plain_swav(scores, num_crops, crops_for_assign, temperature, epsilon, 3), rel=1e-10)
    queue = [F.normalize(torch.randn(10, 12, dtype=torch.float64, generator=g), dim=1) for _ in crops_for_assign]
    got = swav_loss(scores, num_crops, crops_for_assign, temperature, epsilon, 3, queue_scores=queue)[0].item()
    assert got == pytest.approx(plain_swav(scores, num_crops, crops_for_assign, temperature, epsilon, 3, queue), rel=1e-10)


def test_swav_codes_carry_no_gradient():
    scores = torch.randn(2 * 4, 6, dtype=torch.float64, requires_grad=True)
    swav_loss(scores, 2, [0, 1], 0.1, 0.05, 3)[0].backward()
    # d loss / d scores is only through the log-softmax: each crop's row gradients sum to zero
    torch.testing.assert_close(scores.grad.sum(dim=1), torch.zeros(8, dtype=torch.float64), atol=1e-12, rtol=0)


def test_swav_hard_codes_are_the_one_hot_argmax():
    g = torch.Generator().manual_seed(5)
    scores = F.normalize(torch.randn(2 * 6, 9, dtype=torch.float64, generator=g), dim=1)
    n = 6
    expected = 0.0
    for a, p in [(0, 1), (1, 0)]:
        winner = sinkhorn(scores[a * n:(a + 1) * n], 0.05, 3).argmax(dim=1)
        expected -= F.log_softmax(scores[p * n:(p + 1) * n] / 0.1, dim=1)[torch.arange(n), winner].mean().item() / 2
    assert swav_loss(scores, 2, [0, 1], 0.1, 0.05, 3, hard=True)[0].item() == pytest.approx(expected, rel=1e-12)
