"""Batches of (images, labels, indices) for training, and ordered batches for feature extraction.

The order of epoch e is one permutation drawn from (seed, e), the same on every rank; global
batch b is its slice [b*B, (b+1)*B) and rank r takes the r-th equal part of it. A resumed run
therefore sees exactly the batches the uninterrupted run would have seen.
"""
import math

import numpy as np
import torch
import torchvision
from PIL import Image

from data.augment import sample_boxes
from data.datasets import ArrayData
from utils.errors import UserError


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


def crop_boxes(height, width, crops, gen):
    """RandomResizedCrop boxes (x0, y0, w, h) of every crop of one image, in one draw."""
    scales = torch.tensor([scale for _, scale in crops], dtype=torch.float64)
    return sample_boxes(len(crops), height, width, scales, (3 / 4, 4 / 3), gen).tolist()


def decode_for_crops(path, crops, gen):
    """(decoded RGB image, boxes in its pixels) for the crops of one image file.

    The boxes are drawn from the header's size first, so a JPEG can be decoded at the smallest DCT scale (1/2,
    1/4, 1/8) that still gives every box at least as many pixels as its crop: the crops come out the same
    (within JPEG error), from a decode that costs a fraction of the full one.
    """
    with Image.open(path) as img:
        width, height = img.size
        boxes = crop_boxes(height, width, crops, gen)
        room = min(min(w, h) / size for (_, _, w, h), (size, _) in zip(boxes, crops))
        if img.format == "JPEG" and room >= 2:
            factor = 2 ** min(3, int(math.log2(room)))
            img.draft("RGB", (math.ceil(width / factor), math.ceil(height / factor)))
        img = img.convert("RGB")
    sx, sy = img.width / width, img.height / height
    return img, [(x0 * sx, y0 * sy, (x0 + w) * sx, (y0 + h) * sy) for x0, y0, w, h in boxes]


class _CropBatches(torch.utils.data.Dataset):
    """Worker side of a folder dataset: a whole batch, each image decoded once and cut into its crops (bicubic),
    written straight into one uint8 (n, size, size, 3) tensor per crop: no per-image tensors, no collate copy."""

    def __init__(self, data, crops, seed):
        self.data, self.crops, self.seed = data, crops, seed

    def __len__(self):
        return len(self.data)

    def generator(self, index, epoch):
        """One generator per (seed, epoch, image): the crops do not depend on worker count or resume."""
        return torch.Generator().manual_seed(hash((self.seed, epoch, index)) & 0x7FFFFFFFFFFFFFFF)

    def __getitem__(self, keys):
        out = [torch.empty(len(keys), size, size, 3, dtype=torch.uint8) for size, _ in self.crops]
        if torch.utils.data.get_worker_info() is not None:  # in shared memory from the start: sent without a copy
            out = [t.share_memory_() for t in out]
        for j, (index, epoch) in enumerate(keys):
            img, boxes = decode_for_crops(self.data.paths[index], self.crops, self.generator(index, epoch))
            for c, (box, (size, _)) in enumerate(zip(boxes, self.crops)):
                out[c][j].numpy()[...] = np.asarray(img.resize((size, size), Image.BICUBIC, box=box))
        indices = torch.tensor([index for index, _ in keys])
        return out, self.data.labels[indices], indices


class _ByteBatches(_CropBatches):
    """Worker side of `--decode device`: only the file bytes of a batch and its crop boxes (drawn from the JPEG
    header's size, as the worker-decode path draws them); the training process decodes and crops."""

    def __getitem__(self, keys):
        files, boxes = [], []
        for index, epoch in keys:
            with Image.open(self.data.paths[index]) as img:
                width, height = img.size
            boxes.append(crop_boxes(height, width, self.crops, self.generator(index, epoch)))
            with open(self.data.paths[index], "rb") as f:
                files.append(np.frombuffer(f.read(), np.uint8))
        indices = torch.tensor([index for index, _ in keys])
        sizes = torch.tensor([len(f) for f in files])
        # one tensor for the batch's bytes: one shared-memory block on the way to the training process
        return torch.from_numpy(np.concatenate(files)), sizes, torch.tensor(boxes), self.data.labels[indices], indices


def decode_and_crop(files, boxes, crops, device):
    """JPEG bytes -> one uint8 (n, 3, size, size) batch per crop, on `device` (nvjpeg on CUDA, batched).

    Each crop is its box resampled by roi_align with as many samples per output pixel as the box has input
    pixels (an area average, like an antialiased resize); boxes are (x0, y0, w, h) per image and crop.
    """
    images = torchvision.io.decode_jpeg(files, mode=torchvision.io.ImageReadMode.RGB, device=device)
    height, width = max(i.shape[1] for i in images), max(i.shape[2] for i in images)
    batch = torch.zeros(len(images), 3, height, width, device=device)
    for j, img in enumerate(images):
        batch[j, :, :img.shape[1], :img.shape[2]] = img
    boxes = boxes.to(device=device, dtype=torch.float32)
    corners = torch.cat([boxes[..., :2], boxes[..., :2] + boxes[..., 2:]], -1)  # (n, crops, 4): x0, y0, x1, y1
    out = [None] * len(crops)
    for size in sorted({size for size, _ in crops}):
        which = [c for c, (s, _) in enumerate(crops) if s == size]
        rois = [corners[j, which] for j in range(len(images))]
        cut = torchvision.ops.roi_align(batch, rois, output_size=size, aligned=True)  # (n * len(which), 3, s, s)
        cut = cut.round_().clamp_(0, 255).to(torch.uint8).view(len(images), len(which), 3, size, size)
        for k, c in enumerate(which):
            out[c] = cut[:, k].contiguous(memory_format=torch.channels_last)
    return out


class _EpochKeys(torch.utils.data.Sampler):
    """The batches of the current epoch, as lists of (index, epoch); set before each pass of the loader."""

    def __init__(self):
        self.batches = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


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


class TrainBatches:
    """Iterates one epoch of (x, labels, indices) on `device`.

    x is a uint8 (n, C, H, W) batch for in-memory data, or for folder data the list of uint8 crops (one tensor
    per crop), cut by the workers (`decode="workers"`) or by `decode_and_crop` on the training device from the
    file bytes the workers read (`decode="device"`). `crops` lists (size, (min_scale, max_scale)) per crop.
    """

    def __init__(self, data, batch_size, seed, device, crops=(), workers=0, rank=0, world_size=1, decode="workers"):
        self.data, self.batch_size, self.seed, self.device = data, batch_size, seed, device
        self.crops, self.workers, self.rank, self.world_size, self.decode = crops, workers, rank, world_size, decode
        self.keys = self.loader = None

    def __len__(self):
        return len(self.data) // self.batch_size

    def epoch(self, epoch, start=0):
        batches = epoch_batches(len(self.data), self.batch_size, self.seed, epoch, self.rank, self.world_size, start)
        if isinstance(self.data, ArrayData):
            for idx in batches:
                idx = idx.to(self.data.images.device)
                yield self.data.images[idx], self.data.labels[idx], idx
            return
        if self.loader is None:  # one loader for the whole run: its workers stay alive from epoch to epoch
            if self.decode == "device" and not all(p.lower().endswith((".jpg", ".jpeg")) for p in self.data.paths):
                raise UserError(f"--decode device decodes JPEG files only; {self.data.root} holds others")
            self.keys = _EpochKeys()
            worker_side = _ByteBatches if self.decode == "device" else _CropBatches
            self.loader = torch.utils.data.DataLoader(
                worker_side(self.data, self.crops, self.seed), sampler=self.keys, batch_size=None,
                num_workers=self.workers, persistent_workers=self.workers > 0, prefetch_factor=4 if self.workers else None,
                pin_memory=str(self.device).startswith("cuda"))
        self.keys.batches = [[(int(i), epoch) for i in idx] for idx in batches]
        for batch in self.loader:
            if self.decode == "device":
                data, sizes, boxes, labels, idx = batch
                crops = decode_and_crop(list(data.split(sizes.tolist())), boxes, self.crops, self.device)
            else:  # (n, H, W, 3) -> (n, 3, H, W) in channels-last memory, the layout the backbones use
                crops, labels, idx = batch
                crops = [c.to(self.device, non_blocking=True).permute(0, 3, 1, 2) for c in crops]
            yield crops, labels.to(self.device), idx.to(self.device)


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
