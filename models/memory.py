"""Memory banks and spherical k-means as functions of tensors: NPID's bank and DeepCluster-v2's clustering."""
import torch
import torch.nn.functional as F

from utils import dist


def init_memory_bank(size, dim, generator, mean_of=1):
    """NPID's bank: rows uniform in [-s, s], s = 1/sqrt(dim/3), then L2-normalized. `mean_of` N > 1: the mean of N
    such banks, not normalized again (rows of norm about 1/sqrt(N)), as VISSL's N GPUs each draw one and average."""
    s = 1.0 / (dim / 3) ** 0.5
    bank = F.normalize(torch.rand(size, dim, generator=generator, device=generator.device) * (2 * s) - s, dim=1)
    for _ in range(mean_of - 1):
        bank += F.normalize(torch.rand(size, dim, generator=generator, device=generator.device) * (2 * s) - s, dim=1)
    return bank / mean_of if mean_of > 1 else bank


def sample_negatives(batch, num_negatives, size, generator):
    """(batch, num_negatives) indices drawn uniformly from 0 .. size-1, with replacement."""
    return torch.randint(size, (batch, num_negatives), generator=generator, device=generator.device)


def memory_scores(bank, v, rows):
    """(B, K) dot products of each v (B, D) with its bank rows `rows` (B, K); gradients reach v only.

    Gathering B x K x D bank values costs more than one B x N product with the whole bank when
    K x D > N (a small dataset, as Fashion-MNIST with 4096 negatives); then the product is taken
    and its columns picked. Both give the same numbers.
    """
    bank = bank.detach()
    if rows.shape[1] * bank.shape[1] > bank.shape[0]:
        return (v @ bank.T).gather(1, rows)
    return torch.einsum("bkd,bd->bk", bank[rows], v)


@torch.no_grad()
def momentum_update(bank, index, v, momentum):
    """M[y] <- normalize(momentum * M[y] + (1 - momentum) * v), in place; rows of `index` are distinct."""
    rows = momentum * bank[index] + (1 - momentum) * v.to(bank.dtype)
    bank.index_copy_(0, index, F.normalize(rows, dim=1))


@torch.no_grad()
def assign(bank, centroids, chunk=8192):
    """Index of the most similar centroid (dot product) for every row of `bank`, in chunks of rows."""
    return torch.cat([(bank[lo:lo + chunk] @ centroids.T).argmax(dim=1) for lo in range(0, len(bank), chunk)])


@torch.no_grad()
def spherical_kmeans(bank, centroids, iters):
    """(centroids, assignments) of DeepCluster-v2's k-means from the given start, over every rank's `bank`.

    Each of `iters` rounds assigns every row to its most similar centroid, then sets each centroid
    to the normalized sum of its members; the sums and counts are all-reduced, so W ranks give what
    one process gives on all their rows. An empty cluster keeps its centroid. A last assignment follows.
    """
    centroids = centroids.clone()
    for _ in range(iters):
        members = assign(bank, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, members, bank.to(centroids.dtype))
        counts = torch.bincount(members, minlength=len(centroids))
        sums, counts = dist.all_reduce_sum(sums), dist.all_reduce_sum(counts)
        filled = counts > 0
        centroids[filled] = F.normalize(sums[filled], dim=1)
    return centroids, assign(bank, centroids)
