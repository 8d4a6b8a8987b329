"""NPID's NCE loss and memory bank, DeepCluster-v2's k-means: against plain implementations and known answers."""
import math

import pytest
import torch
import torch.nn.functional as F

from models.npid import nce_loss
from models.memory import assign, init_memory_bank, memory_scores, momentum_update, sample_negatives, spherical_kmeans


def plain_nce(scores, z_const, num_data, eps=1e-7):
    """The NCE loss term by term, as written in docs/methods.md."""
    batch, k = scores.shape[0], scores.shape[1] - 1
    k_pn = k / num_data
    total = 0.0
    for b in range(batch):
        p = [math.exp(s) / z_const for s in scores[b].tolist()]
        total += math.log(p[0] / (p[0] + k_pn + eps))
        total += sum(math.log(k_pn / (p[j] + k_pn + eps)) for j in range(1, k + 1))
    return -total / batch


@pytest.mark.parametrize("batch,negatives,num_data,z_const", [(4, 7, 50, 30.0), (3, 16, 1000, 5e3), (2, 5, 10, 2.0)])
def test_nce_loss_matches_plain_implementation(batch, negatives, num_data, z_const):
    scores = torch.randn(batch, negatives + 1, dtype=torch.float64, generator=torch.Generator().manual_seed(negatives)) * 4
    got = nce_loss(scores, z_const, num_data)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(plain_nce(scores, z_const, num_data), rel=1e-12)


def test_nce_loss_stays_finite_where_exp_overflows_float32():
    scores = torch.full((2, 9), 100.0)  # exp(100) is inf in float32
    scores[:, 0] = 95.0
    loss = nce_loss(scores, 1e3, 100)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(plain_nce(scores.double(), 1e3, 100), rel=1e-5)


def test_memory_bank_starts_unit_norm_from_the_stated_uniform_range():
    raw_bound = 1 / math.sqrt(128 / 3)
    gen = torch.Generator().manual_seed(0)
    raw = torch.rand(1000, 128, generator=gen) * 2 * raw_bound - raw_bound
    bank = init_memory_bank(1000, 128, torch.Generator().manual_seed(0))
    torch.testing.assert_close(bank, F.normalize(raw, dim=1))
    torch.testing.assert_close(bank.norm(dim=1), torch.ones(1000))


def test_momentum_update_keeps_rows_unit_norm_and_touches_only_its_rows():
    bank = init_memory_bank(20, 8, torch.Generator().manual_seed(1))
    before = bank.clone()
    index = torch.tensor([3, 11, 7])
    v = F.normalize(torch.randn(3, 8), dim=1)
    momentum_update(bank, index, v, 0.5)
    torch.testing.assert_close(bank[index], F.normalize(0.5 * before[index] + 0.5 * v, dim=1))
    torch.testing.assert_close(bank.norm(dim=1), torch.ones(20))
    untouched = torch.ones(20, dtype=torch.bool)
    untouched[index] = False
    assert torch.equal(bank[untouched], before[untouched])


@pytest.mark.parametrize("size", [10, 1000])  # K x D above and below the bank size: the two ways of computing
def test_memory_scores_are_the_dot_products_with_the_drawn_rows_and_reach_only_v(size):
    bank = init_memory_bank(size, 8, torch.Generator().manual_seed(0)).double().requires_grad_()
    v = F.normalize(torch.randn(3, 8, dtype=torch.float64), dim=1).requires_grad_()
    rows = sample_negatives(3, 20, size, torch.Generator().manual_seed(1))
    scores = memory_scores(bank, v, rows)
    expected = torch.stack([torch.stack([bank[r] @ v[b] for r in rows[b].tolist()]) for b in range(3)])
    torch.testing.assert_close(scores, expected, rtol=1e-12, atol=1e-14)
    scores.sum().backward()
    torch.testing.assert_close(v.grad, bank.detach()[rows].sum(dim=1))
    assert bank.grad is None


def test_negatives_cover_every_index_uniformly_with_replacement():
    neg = sample_negatives(64, 500, 10, torch.Generator().manual_seed(0))
    assert neg.shape == (64, 500) and neg.dtype == torch.long
    counts = torch.bincount(neg.flatten(), minlength=10)
    assert len(counts) == 10  # nothing outside 0..9
    assert counts.min() > 0.9 * 3200 and counts.max() < 1.1 * 3200  # 32000 draws, 3200 expected per index
    assert (neg[:, :11].sort(dim=1).values.diff(dim=1) == 0).any(dim=1).all()  # 11 draws of 10 values repeat one


def clusters(num, per, dim, spread, seed):
    gen = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(num, dim, generator=gen), dim=1)
    labels = torch.arange(num).repeat_interleave(per)
    points = F.normalize(centres[labels] + spread * torch.randn(num * per, dim, generator=gen), dim=1)
    perm = torch.randperm(num * per, generator=gen)
    return points[perm], labels[perm], centres


def test_kmeans_recovers_well_separated_clusters():
    points, labels, centres = clusters(5, 40, 16, 0.05, seed=0)
    start = torch.stack([points[(labels == c).nonzero()[0, 0]] for c in torch.randperm(5)])  # one point of each
    centroids, members = spherical_kmeans(points, start, 10)
    for c in range(5):
        found = members[labels == c]
        assert (found == found[0]).all()  # each true cluster is one k-means cluster
        assert F.cosine_similarity(centroids[found[0]], centres[c], dim=0) > 0.99
    assert len(members.unique()) == 5
    torch.testing.assert_close(centroids.norm(dim=1), torch.ones(5))
    assert torch.equal(members, assign(points, centroids))  # the last step is an assignment


def test_kmeans_centroid_is_the_normalized_mean_of_its_members():
    points, _, _ = clusters(3, 10, 4, 0.5, seed=1)
    start = points[:3].clone()
    centroids, _ = spherical_kmeans(points, start, 1)
    members = assign(points, start)
    for c in range(3):
        torch.testing.assert_close(centroids[c], F.normalize(points[members == c].sum(0), dim=0))


def test_an_empty_cluster_keeps_its_centroid():
    points, _, centres = clusters(2, 20, 8, 0.05, seed=2)
    far = -F.normalize(centres.sum(0), dim=0)  # on the far side of the sphere from both clusters
    start = torch.cat([points[:2], far[None]])
    centroids, members = spherical_kmeans(points, start, 4)
    assert (members != 2).all()
    assert torch.equal(centroids[2], far)
