import math

import pytest
import torch
import torch.nn.functional as F

from models.losses import info_nce_loss


def plain_info_nce(z, num_crops, temperature):
    """InfoNCE written term by term from its definition (METHODS.md), in float64 loops."""
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
