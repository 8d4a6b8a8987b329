"""Batches of (images, labels, indices) for training, and ordered batches for feature extraction.

The order of epoch e is one permutation drawn from (seed, e), the same on every rank; global
batch b is its slice [b*B, (b+1)*B) and rank r takes the r-th equal part of it. A resumed run
therefore sees exactly the batches the uninterrupted run would have seen.
"""
import math

import numpy as np
import torch
from PIL import Image

from data.datasets import ArrayData
from data.augment import sample_boxes


def epoch_batches(num_samples, batch_size, seed, epoch, rank=0, world_size=1, start=0):
    """Index tensors of this rank's part of each global batch of epoch `epoch`, from batch `start` on."""
    perm = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
    per_rank = batch_size // world_size
    for b in range(start, num_samples // batch_size):
        lo = b * batch_size + rank * per_rank
        yield perm[lo:lo + per_rank]


def _to_uint8(img):
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


class _CropDataset(torch.utils.data.Dataset):
    """Worker side of a folder dataset: decode, then RandomResizedCrop each crop (bicubic) to uint8."""

    def __init__(self, data, crops, seed):
        self.data, self.crops, self.seed = data, crops, seed

    def __len__(self):
        return len(self.data)

    def __getitem__(self, key):
        index, epoch = key
        img = self.data.load(index)
        # one generator per (seed, epoch, image): the crops do not depend on worker count or resume
        gen = torch.Generator().manual_seed(hash((self.seed, epoch, index)) & 0x7FFFFFFFFFFFFFFF)
        crops = []
        for size, scale in self.crops:
            x0, y0, w, h = sample_boxes(1, img.height, img.width, scale, (3 / 4, 4 / 3), gen)[0].tolist()
            crop = img.resize((size, size), Image.BICUBIC, box=(x0, y0, x0 + w, y0 + h))
            crops.append(_to_uint8(crop))
        return crops, int(self.data.labels[index]), index


class _EvalDataset(torch.utils.data.Dataset):
    """Resize the short side to size*256/224, centre crop `size`."""

    def __init__(self, data, size):
        self.data, self.size = data, size

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        img = self.data.load(index)
        short = round(self.size * 256 / 224)
        scale = short / min(img.size)
        img = img.resize((max(short, round(img.width * scale)), max(short, round(img.height * scale))), Image.BICUBIC)
        left, top = (img.width - self.size) // 2, (img.height - self.size) // 2
        return _to_uint8(img.crop((left, top, left + self.size, top + self.size))), int(self.data.labels[index])


def _collate_crops(samples):
    crops = [torch.stack([s[0][c] for s in samples]) for c in range(len(samples[0][0]))]
    return crops, torch.tensor([s[1] for s in samples]), torch.tensor([s[2] for s in samples])


class TrainBatches:
    """Iterates one epoch of (x, labels, indices) on `device`.

    x is a uint8 (n, C, H, W) batch for in-memory data, or the list of worker-made uint8 crops
    (one tensor per crop) for folder data. `crops` lists (size, (min_scale, max_scale)) per crop.
    """

    def __init__(self, data, batch_size, seed, device, crops=(), workers=0, rank=0, world_size=1):
        self.data, self.batch_size, self.seed, self.device = data, batch_size, seed, device
        self.crops, self.workers, self.rank, self.world_size = crops, workers, rank, world_size

    def __len__(self):
        return len(self.data) // self.batch_size

    def epoch(self, epoch, start=0):
        batches = epoch_batches(len(self.data), self.batch_size, self.seed, epoch, self.rank, self.world_size, start)
        if isinstance(self.data, ArrayData):
            for idx in batches:
                idx = idx.to(self.data.images.device)
                yield self.data.images[idx], self.data.labels[idx], idx
            return
        keys = [[(int(i), epoch) for i in idx] for idx in batches]
        loader = torch.utils.data.DataLoader(_CropDataset(self.data, self.crops, self.seed), batch_sampler=keys,
                                             num_workers=self.workers, collate_fn=_collate_crops,
                                             pin_memory=str(self.device).startswith("cuda"))
        for crops, labels, idx in loader:
            yield [c.to(self.device, non_blocking=True) for c in crops], labels.to(self.device), idx.to(self.device)


def eval_batches(data, batch_size, device, workers=0, size=224, indices=None):
    """(uint8 images, labels) of the images `indices` (default: all), in that order, without augmentation."""
    indices = torch.arange(len(data)) if indices is None else indices
    if isinstance(data, ArrayData):
        for lo in range(0, len(indices), batch_size):
            idx = indices[lo:lo + batch_size].to(data.images.device)
            yield data.images[idx].to(device), data.labels[idx].to(device)
        return
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(_EvalDataset(data, size), indices.tolist()),
                                         batch_size=batch_size, num_workers=workers,
                                         pin_memory=str(device).startswith("cuda"))
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device)


def steps_per_epoch(num_samples, batch_size):
    return max(1, num_samples // batch_size)


def total_steps(args, num_samples):
    if args.iters >= 0:
        return args.iters
    return int(math.ceil(args.epochs * steps_per_epoch(num_samples, args.batch_size)))
