"""SimCLR: backbone -> MLP head -> InfoNCE between all crops of an image, negatives from the whole global batch."""
import torch
import torch.nn.functional as F

from models.base import Pretrain
from utils import config, dist


def info_nce_loss(z, num_crops, temperature):
    """SimCLR's InfoNCE over every pair of crops of an image, with global negatives.

    For anchor crop a of image i and each other crop b of it, one term
    -log(exp(s_ab / T) / (exp(s_ab / T) + sum over all crops k of all other images of exp(s_ak / T))),
    s = cosine similarity; the other crops of image i appear in neither sum. Columns come from every
    rank (`dist.gather`); the loss is the mean over this rank's C*n*(C-1) terms.
    With C = 2 it is NT-Xent over 2N views.
    """
    z = F.normalize(z.to(torch.promote_types(z.dtype, torch.float32)), dim=1)  # fp16/bf16 -> fp32
    n = z.shape[0] // num_crops
    logits = z @ dist.gather(z).T / temperature  # (C*n, W*C*n)
    rows = torch.arange(num_crops * n, device=z.device)
    crop, image = rows // n, rows % n
    offset = dist.rank() * num_crops * n
    same_image = offset + torch.arange(num_crops, device=z.device)[None] * n + image[:, None]  # (C*n, C)
    mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, same_image, True)
    negatives = logits.masked_fill(mask, float("-inf")).logsumexp(dim=1, keepdim=True)
    positives = logits.gather(1, same_image)
    terms = torch.logaddexp(positives, negatives) - positives
    other = torch.arange(num_crops, device=z.device)[None] != crop[:, None]
    return terms[other].mean()


class SimCLR(Pretrain):
    @staticmethod
    def add_args(p):
        Pretrain.add_args(p)
        p.add_argument("--temperature", type=config.POSITIVE, default=0.1, help="InfoNCE temperature")

    def forward(self, batch, step):
        x, _, _ = batch
        h, z = self.encode(self.augment(x), normalize=False)
        return (info_nce_loss(z, self.num_crops, self.args.temperature), {},
                dict(embeddings=z.detach(), features=h.detach()))
