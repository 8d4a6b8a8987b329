"""Projection heads."""
import torch.nn as nn


class ScaleBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm with a learned scale and its shift held at 0 (simclr-pytorch's BatchNorm1dNoBias)."""

    def __init__(self, dim):
        super().__init__(dim)
        self.bias.requires_grad_(False)


class MLP(nn.Sequential):
    """Linear layers through `dims`; after every layer but the last, BatchNorm (use_bn) and ReLU (use_relu);
    with out_bn, the last Linear has no bias and a ScaleBatchNorm1d follows it.

    dims [2048, 2048, 128] with both flags is SimCLR's head: Linear -> BN -> ReLU -> Linear.
    """

    def __init__(self, dims, use_bn=True, use_relu=True, out_bn=False):
        layers = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == len(dims) - 2
            layers.append(nn.Linear(d_in, d_out, bias=(last and not out_bn) or (not last and not use_bn)))
            if not last and use_bn:
                layers.append(nn.BatchNorm1d(d_out))
            if not last and use_relu:
                layers.append(nn.ReLU(inplace=True))
        if out_bn:
            layers.append(ScaleBatchNorm1d(dims[-1]))
        super().__init__(*layers)


def prototype_layers(dim, counts):
    """One bias-free Linear(dim, k) per head: its k rows are the prototypes (SwAV) or the centroids
    (DeepCluster-v2), and layer(z) the scores of embeddings z against them."""
    return nn.ModuleList(nn.Linear(dim, k, bias=False) for k in counts)


def head_from_args(args, feat_dim):
    """The MLP of the head flags on features of width `feat_dim`: hidden widths (-1 = feat_dim), then embedding_dim."""
    hidden = [feat_dim if d == -1 else d for d in args.head_hidden_dims]
    return MLP([feat_dim] + hidden + [args.embedding_dim], args.head_use_bn, args.head_use_relu,
               getattr(args, "head_out_bn", False))  # getattr: runs saved before the flag existed
