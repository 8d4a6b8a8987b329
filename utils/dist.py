"""Process-group helpers that also work in a plain single process."""
import torch
import torch.distributed as dist


def is_on():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if is_on() else 0


def world_size():
    return dist.get_world_size() if is_on() else 1


def is_main():
    return rank() == 0


def barrier():
    if is_on():
        dist.barrier()


class _Gather(torch.autograd.Function):
    """all_gather whose backward sums the incoming gradient over ranks and keeps this rank's slice."""

    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        n = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * n:(dist.get_rank() + 1) * n]


def gather(x):
    """Rows of every rank's `x`, in rank order; gradients flow back to each rank's own rows."""
    if world_size() == 1:
        return x
    return _Gather.apply(x.contiguous())


def all_reduce_mean(x):
    if world_size() > 1:
        x = x.clone()
        dist.all_reduce(x)
        x /= world_size()
    return x
