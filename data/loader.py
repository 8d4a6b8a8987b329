"""Batches of (crops, labels, indices) for training, and ordered batches of whole images for feature extraction.

The order of epoch e is one permutation drawn from (seed, e), the same on every rank; global
batch b is its slice [b*B, (b+1)*B) and rank r takes the r-th equal part of it. A resumed run
therefore sees exactly the batches the uninterrupted run would have seen.
"""
import contextlib
import io
import math
import os
import re
import signal
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from data.augment import ASPECT, cut_crops, sample_boxes
from data.datasets import ArrayData, FolderData
from utils import dist, seeds
from utils.checkpoint import write_atomic
from utils.errors import UserError

# what PIL and TorchCodec raise for a file they cannot decode: empty, truncated, damaged or not an image at all
UNREADABLE = (OSError, ValueError, SyntaxError, RuntimeError, Image.DecompressionBombError)
RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}  # PIL's filters, antialiased when downsampling
STAND_IN_TRIES = 64


def decode_jpeg(*args, **kw):
    """TorchCodec's decode_jpeg, imported when first needed: in-memory datasets never load it."""
    from torchcodec.decoders import decode_jpeg
    return decode_jpeg(*args, **kw)


def why_unreadable(path):
    """None if the image file decodes in full by PIL and, a JPEG, by TorchCodec too (a run may decode it with
    either), else the reason it does not."""
    try:
        with Image.open(path) as img:
            img.convert("RGB")  # the whole image: a truncated file passes Image.open and fails here
        if path.lower().endswith((".jpg", ".jpeg")):
            decode_jpeg(path, mode="RGB")
    except UNREADABLE as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def ignore_stop_signals(worker_id=None):
    """A loader worker's start: SIGINT and SIGTERM are the training process's to act on. A terminal's Ctrl-C and
    SLURM's or systemd's SIGTERM reach every process of the group; a worker that died of them would end the run with a
    traceback before the training process could stop after its step with a checkpoint. The training process stops its
    workers itself (TrainBatches.close); one whose training process died exits on its own (PyTorch's watchdog)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def dead_worker(error):
    """The one-line account of a RuntimeError that says a loader worker died (killed by the OOM killer, say), else
    None."""
    found = re.search(r"DataLoader worker \(pids? ?\(?s?\)? ?[^)]*\)[^.\n]*", str(error))
    return found.group(0) if found else None


def received(loader):
    """The batches of `loader`. A worker that dies while it hands a batch over (the descriptor of the batch's shared
    memory lost half-way: EOFError or a reset connection, where PyTorch's own check has not yet seen the death) is
    reported as PyTorch reports a dead worker (`dead_worker` reads both)."""
    batches = iter(loader)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (EOFError, ConnectionError) as e:
            dead = [w.pid for w in getattr(batches, "_workers", []) if not w.is_alive()]
            if not dead:
                raise
            raise RuntimeError(f"DataLoader worker (pid(s) {', '.join(map(str, dead))}) exited unexpectedly while "
                               f"handing over a batch") from e
        yield batch


@contextlib.contextmanager
def one_thread():
    """torch's intra-op parallelism off inside the block, as it was after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def epoch_batches(num_samples, batch_size, seed, epoch, rank=0, world_size=1, start=0):
    """Index tensors of this rank's part of each global batch of epoch `epoch`, from batch `start` on."""
    perm = torch.randperm(num_samples, generator=seeds.generator(seed, "order", epoch))
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
    return sample_boxes(len(crops), height, width, scales, ASPECT, gen).tolist()


def decode_for_crops(path, crops, gen, draft=True):
    """(pixels, boxes): the decoded RGB image as a uint8 (H, W, 3) tensor and the boxes (x0, y0, x1, y1) of the
    crops of one image file, in its pixels.

    The boxes are drawn from the header's size first, so that with `draft` a JPEG can be decoded at the smallest DCT
    scale (1/2, 1/4, 1/8) that still gives every box at least as many pixels as its crop (PIL's draft mode): crops
    close to a full decode's (within JPEG error; the DCT's low-pass is not the resize's), from a fraction of its
    cost. A JPEG decoded in full goes through TorchCodec (libjpeg-turbo, the same pixels as PIL's, in less time);
    other formats through PIL.
    """
    with open(path, "rb") as f:
        data = f.read()
    with Image.open(io.BytesIO(data)) as img:
        width, height = img.size
        boxes = crop_boxes(height, width, crops, gen)
        room = min(min(w, h) / size for (_, _, w, h), (size, _) in zip(boxes, crops)) if draft else 1
        if img.format == "JPEG" and room < 2:
            pixels = decode_jpeg(data, mode="RGB").permute(1, 2, 0)  # (H, W, 3) contiguous: a view back
        else:
            if img.format == "JPEG":
                factor = 2 ** min(3, int(math.log2(room)))
                img.draft("RGB", (math.ceil(width / factor), math.ceil(height / factor)))
            pixels = torch.from_numpy(np.array(img.convert("RGB"), dtype=np.uint8))
    sx, sy = pixels.shape[1] / width, pixels.shape[0] / height
    return pixels, [(x0 * sx, y0 * sy, (x0 + w) * sx, (y0 + h) * sy) for x0, y0, w, h in boxes]


def resize_crops(pixels, boxes, sizes, interpolation):
    """The crops of one image: box (x0, y0, x1, y1) of the uint8 (H, W, 3) `pixels` resampled to size x size,
    (size, size, 3) each.

    bilinear: torch's antialiased uint8 kernel on the box rounded to whole pixels (whole already unless the decode
    was DCT-scaled): torchvision's resized_crop of a PIL image within a unit of rounding, in about half PIL's time.
    bicubic: PIL's filter over the exact box.
    """
    if interpolation == "bicubic":
        img = Image.fromarray(pixels.numpy())
        return [torch.from_numpy(np.array(img.resize((size, size), Image.BICUBIC, box=box)))
                for box, size in zip(boxes, sizes)]
    chw = pixels.permute(2, 0, 1)[None]  # a channels-last view: the layout the uint8 kernel is fastest on
    out = []
    for (x0, y0, x1, y1), size in zip(boxes, sizes):
        a, b = round(x0), round(y0)
        c, d = max(a + 1, round(x1)), max(b + 1, round(y1))
        crop = F.interpolate(chw[..., b:d, a:c], size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(crop[0].permute(1, 2, 0))
    return out


class _CropBatches(torch.utils.data.Dataset):
    """Worker side of a folder dataset: a whole batch, each image decoded once and cut into its crops
    (`resize_crops`, the dataset's interpolation), written straight into one uint8 (n, size, size, 3) tensor per
    crop: no per-image tensors, no collate copy.
    Returns (crops, labels, indices, unreadable): the last, the indices of the files that failed to decode."""

    def __init__(self, data, crops, seed, draft=True):
        self.data, self.crops, self.seed, self.draft = data, crops, seed, draft

    def __len__(self):
        return len(self.data)

    def generator(self, index, epoch):
        """One generator per (seed, epoch, image): the crops do not depend on worker count or resume."""
        return seeds.generator(self.seed, "crops", epoch, index)

    def decode(self, path, gen):
        return decode_for_crops(path, self.crops, gen, self.draft)

    def readable(self, index, epoch, unreadable, read):
        """(source, read(path, generator)) for image `index`, where source is `index` itself or, when that file
        cannot be decoded, the first readable stand-in of a sequence fixed by (seed, epoch, index): a resumed run
        gets the same stand-ins. Every file that failed is appended to `unreadable`."""
        source = index
        for attempt in range(1, STAND_IN_TRIES + 1):
            try:
                return source, read(self.data.paths[source], self.generator(index, epoch))  # read(path, generator)
            except UNREADABLE:
                unreadable.append(source)
                source = seeds.seed_of(self.seed, "stand-in", epoch, index, attempt) % len(self.data)
        raise UserError(f"{STAND_IN_TRIES} images of {self.data.root} in a row cannot be decoded, the last "
                        f"{self.data.paths[unreadable[-1]]}: check the folder with python -m tools.check_data")

    def __getitem__(self, keys):
        out = [torch.empty(len(keys), size, size, 3, dtype=torch.uint8) for size, _ in self.crops]
        if torch.utils.data.get_worker_info() is not None:  # in shared memory from the start: sent without a copy
            out = [t.share_memory_() for t in out]
        sources, unreadable, sizes = [], [], [size for size, _ in self.crops]
        for j, (index, epoch) in enumerate(keys):
            source, (pixels, boxes) = self.readable(index, epoch, unreadable, self.decode)
            sources.append(source)
            for c, crop in enumerate(resize_crops(pixels, boxes, sizes, self.data.interpolation)):
                out[c][j].copy_(crop)
        indices = torch.tensor([index for index, _ in keys])
        return out, self.data.labels[sources], indices, torch.tensor(unreadable, dtype=torch.long)


class _ByteBatches(_CropBatches):
    """Worker side of `--decode device`: only the file bytes of a batch and its crop boxes (drawn from the JPEG
    header's size, as the worker-decode path draws them); the training process decodes and crops. A file whose
    header cannot be read is replaced here; one that fails later, in the decode itself, by `decode_and_crop`."""

    def decode(self, path, gen):
        """(file bytes, crop boxes): the header is read for the image's size, the rest is the device's work."""
        with Image.open(path) as img:
            width, height = img.size
        boxes = crop_boxes(height, width, self.crops, gen)
        with open(path, "rb") as f:
            data = np.frombuffer(f.read(), np.uint8)
        return data, boxes

    def __getitem__(self, keys):
        files, boxes, sources, unreadable = [], [], [], []
        for index, epoch in keys:
            source, (data, box) = self.readable(index, epoch, unreadable, self.decode)
            files.append(data)
            boxes.append(box)
            sources.append(source)
        indices = torch.tensor([index for index, _ in keys])
        sizes = torch.tensor([len(f) for f in files])
        # one tensor for the batch's bytes: one shared-memory block on the way to the training process
        return (torch.from_numpy(np.concatenate(files)), sizes, torch.tensor(boxes), self.data.labels[sources], indices,
                torch.tensor(unreadable, dtype=torch.long))


def decode_jpegs(files, device):
    """(images, stand_ins): the batch decoded in one call; a file that fails to decode is replaced by the next file
    of the batch that decodes, so one damaged file costs its batch a duplicate. stand_ins maps the position of each
    failed file to its stand-in's."""
    try:
        return decode_jpeg(files, mode="RGB", device=device), {}  # TorchCodec: one nvJPEG call for the batch on CUDA
    except UNREADABLE:
        pass
    images = []
    for f in files:
        try:
            images.append(decode_jpeg(f, mode="RGB", device=device))
        except UNREADABLE:
            images.append(None)
    good = [j for j, img in enumerate(images) if img is not None]
    if not good:
        raise UserError(f"none of the {len(files)} JPEG files of a batch can be decoded on {device}")
    stand_ins = {j: next((g for g in good if g > j), good[0]) for j, img in enumerate(images) if img is None}
    return [img if img is not None else images[stand_ins[j]] for j, img in enumerate(images)], stand_ins


def decode_and_crop(files, boxes, crops, device):
    """JPEG bytes -> one uint8 (n, 3, size, size) batch per crop, on `device` (nvjpeg on CUDA, batched).

    Each crop is its box resampled by roi_align with as many samples per output pixel as the box has input
    pixels (an area average, like an antialiased resize); boxes are (x0, y0, w, h) per image and crop.
    Returns (crops, the positions in the batch of the files that could not be decoded).
    """
    images, stand_ins = decode_jpegs(files, device)
    if stand_ins:  # the stand-ins' own boxes: a failed file's were drawn for its size
        boxes = boxes.clone()
        boxes[list(stand_ins)] = boxes[list(stand_ins.values())]
    height, width = max(i.shape[1] for i in images), max(i.shape[2] for i in images)
    batch = torch.zeros(len(images), 3, height, width, device=device)
    for j, img in enumerate(images):
        batch[j, :, :img.shape[1], :img.shape[2]] = img
    boxes = boxes.to(device=device, dtype=torch.float32)
    corners = torch.cat([boxes[..., :2], boxes[..., :2] + boxes[..., 2:]], -1)  # (n, crops, 4): x0, y0, x1, y1
    from torchvision.ops import roi_align  # imported here: it costs every other run a second
    out = [None] * len(crops)
    for size in sorted({size for size, _ in crops}):
        which = [c for c, (s, _) in enumerate(crops) if s == size]
        rois = [corners[j, which] for j in range(len(images))]
        cut = roi_align(batch, rois, output_size=size, aligned=True)  # (n * len(which), 3, s, s)
        cut = cut.round_().clamp_(0, 255).to(torch.uint8).view(len(images), len(which), 3, size, size)
        for k, c in enumerate(which):
            out[c] = cut[:, k].contiguous(memory_format=torch.channels_last)
    return out, list(stand_ins)


class _EpochKeys(torch.utils.data.Sampler):
    """The batches of the current epoch, as lists of (index, epoch); set before each pass of the loader."""

    def __init__(self):
        self.batches = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


class _EvalDataset(torch.utils.data.Dataset):
    """Resize the short side to size*256/224 (the dataset's interpolation), centre crop `size`. An image that cannot be decoded is replaced by the
    next one that can; (image, label, index of the unreadable file or -1)."""

    def __init__(self, data, size):
        self.data, self.size = data, size

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        for source in [(index + k) % len(self.data) for k in range(STAND_IN_TRIES)]:
            try:
                img = self.data.load(source)
                break
            except UNREADABLE:
                pass
        else:
            raise UserError(f"{STAND_IN_TRIES} images of {self.data.root} in a row cannot be decoded, from "
                            f"{self.data.paths[index]}: check the folder with python -m tools.check_data")
        short = round(self.size * 256 / 224)
        scale = short / min(img.size)
        img = img.resize((max(short, round(img.width * scale)), max(short, round(img.height * scale))),
                         RESAMPLE[self.data.interpolation])
        left, top = (img.width - self.size) // 2, (img.height - self.size) // 2
        return (_to_uint8(img.crop((left, top, left + self.size, top + self.size))), int(self.data.labels[source]),
                index if source != index else -1)


class TrainBatches:
    """Iterates one epoch of (views, labels, indices) on `device`, whatever the data.

    `views` is a list of float tensors, one per crop of `crops` ((size, (min_scale, max_scale)) each): the
    RandomResizedCrops (n, C, size, size) in [0, 1], cut on the device for in-memory images (`cut_crops`, boxes
    drawn from (seed, epoch, batch)), by the workers for image folders (`decode="workers"`, boxes from (seed, epoch,
    image)), or by `decode_and_crop` on the device from the file bytes the workers read (`decode="device"`). With
    no `crops`, the one view is the in-memory items themselves (the probe's precomputed features).
    """

    def __init__(self, data, batch_size, seed, device, crops=(), workers=0, rank=0, world_size=1, decode="workers",
                 listed=None, draft=True):
        self.data, self.batch_size, self.seed, self.device = data, batch_size, seed, torch.device(device)
        self.crops, self.workers, self.rank, self.world_size, self.decode = crops, workers, rank, world_size, decode
        self.keys = self.loader = None
        self.unreadable = set()  # indices of the files this process failed to decode since take_unreadable()
        self.listed = listed  # the run's UnreadableList (image folders), or None
        self.draft = draft  # a JPEG may be decoded at a reduced DCT scale (decode_for_crops)

    def __len__(self):
        return len(self.data) // self.batch_size

    def close(self):
        """Stop the loader's worker processes, however the run ends: they ignore SIGTERM (ignore_stop_signals), so the
        terminate that Python's exit would send them is not enough."""
        it = getattr(self.loader, "_iterator", None) if self.loader is not None else None
        if it is None:
            return
        workers = list(getattr(it, "_workers", []))
        it._shutdown_workers()  # (a private method: the DataLoader offers no public way to end persistent workers)
        for w in workers:
            if w.is_alive():
                w.kill()
                w.join()
        self.loader._iterator = None

    def take_unreadable(self):
        found, self.unreadable = self.unreadable, set()
        return found

    def gather_unreadable(self):
        """Add the files any rank failed to decode since the last call to the run's list (a write: an OSError on a
        failing disk); returns (the files new to the list, the one-line reason to stop or None)."""
        found = self.take_unreadable()
        if dist.world_size() > 1:
            found = set().union(*dist.all_gather_object(found))
        return self.listed.add(found), self.listed.too_many()

    def epoch(self, epoch, start=0):
        batches = epoch_batches(len(self.data), self.batch_size, self.seed, epoch, self.rank, self.world_size, start)
        if not isinstance(self.data, FolderData):  # in memory, on the device
            items = self.data.images
            for b, idx in enumerate(batches, start):
                idx = idx.to(items.device)
                views = [items[idx]]  # no crops: the items as they are
                if self.crops:
                    gen = seeds.generator(self.seed, "crop boxes", epoch, b, device=items.device)
                    views = cut_crops(views[0], self.crops, gen, self.rank, self.world_size)
                yield views, self.data.labels[idx], idx
            return
        if self.loader is None:  # one loader for the whole run: its workers stay alive from epoch to epoch
            if self.decode == "device" and not all(p.lower().endswith((".jpg", ".jpeg")) for p in self.data.paths):
                raise UserError(f"--decode device decodes JPEG files only; {self.data.root} holds others")
            self.keys = _EpochKeys()
            worker_side = _ByteBatches if self.decode == "device" else _CropBatches
            self.loader = torch.utils.data.DataLoader(
                worker_side(self.data, self.crops, self.seed, self.draft), sampler=self.keys, batch_size=None,
                num_workers=self.workers, persistent_workers=self.workers > 0, prefetch_factor=4 if self.workers else None,
                pin_memory=str(self.device).startswith("cuda"), worker_init_fn=ignore_stop_signals)
        self.keys.batches = [[(int(i), epoch) for i in idx] for idx in batches]
        for batch in received(self.loader):
            if self.decode == "device":
                data, sizes, boxes, labels, idx, unreadable = batch
                crops, failed = decode_and_crop(list(data.split(sizes.tolist())), boxes, self.crops, self.device)
                self.unreadable.update(idx[failed].tolist())
            else:  # (n, H, W, 3) -> (n, 3, H, W) in channels-last memory, the layout the backbones use
                crops, labels, idx, unreadable = batch
                crops = [c.to(self.device, non_blocking=True).permute(0, 3, 1, 2) for c in crops]
            self.unreadable.update(unreadable.tolist())
            # On a CPU the workers hold the other cores: a team of threads here would spin against them (on 2 cores
            # that cost the pipeline a fifth of its images/s); one pass, in place, after the copy to float
            with one_thread() if self.device.type == "cpu" and self.workers else contextlib.nullcontext():
                crops = [c.float().div_(255) for c in crops]
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
                                         pin_memory=str(device).startswith("cuda"), worker_init_fn=ignore_stop_signals)
    unreadable = []
    for x, y, failed in loader:
        unreadable += [data.paths[i] for i in failed.tolist() if i >= 0]
        yield x.to(device, non_blocking=True), y.to(device)
    if unreadable and dist.is_main():
        print(f"warning: {len(unreadable)} images of {data.root} cannot be decoded and were replaced by their "
              f"neighbours in this evaluation: {', '.join(unreadable[:3])}{' ...' if len(unreadable) > 3 else ''}",
              file=sys.stderr)


def unreadable_list(data, folder, max_fraction):
    """The run's list of undecodable training images for image folders (UnreadableList); None for in-memory data,
    which decodes nothing."""
    return UnreadableList(data, folder, max_fraction) if isinstance(data, FolderData) else None


class UnreadableList:
    """The training images a run could not decode: `unreadable.txt` in the run folder, one path a line relative to
    the data root (what --skip_images reads), and the run's limit on their number. A resumed run keeps the files
    of the list that still do not decode: a repaired one leaves it."""

    FILE = "unreadable.txt"

    def __init__(self, data, folder, max_fraction):
        self.data, self.path = data, os.path.join(folder, self.FILE)
        self.root = os.path.dirname(os.path.abspath(data.root))  # the folder holding train/ and val/
        self.max_fraction, self.limit = max_fraction, max_fraction * len(data)
        self.files = set()
        if os.path.exists(self.path):
            try:
                with open(self.path, encoding="utf-8", errors="surrogateescape") as f:
                    self.files = {line.strip() for line in f if line.strip()}
            except (OSError, UnicodeDecodeError) as e:
                raise UserError(f"{self.path} cannot be read ({type(e).__name__}: {e}); remove it to start the list afresh")
            listed, self.files = self.files, {f for f in self.files if why_unreadable(os.path.join(self.root, f))}
            if self.files != listed:
                self.write()

    def __len__(self):
        return len(self.files)

    def add(self, indices):
        """Add the files of these dataset indices and return those that are new; the list is rewritten when one is
        (only the main process writes)."""
        new = {os.path.relpath(os.path.abspath(self.data.paths[i]), self.root) for i in indices} - self.files
        if new:
            self.files |= new
            self.write()
        return new

    def write(self):
        if dist.is_main():
            text = "".join(f"{f}\n" for f in sorted(self.files)).encode("utf-8", "surrogateescape")  # the OS's bytes
            write_atomic(self.path, lambda f: f.write(text))

    def too_many(self):
        """The one-line reason to stop when more images than the limit are unreadable, else None."""
        if len(self.files) <= self.limit:
            return None
        return (f"{len(self.files)} of the {len(self.data)} training images cannot be decoded, more than --max_unreadable "
                f"{self.max_fraction:g} allows; they are listed in {self.path}: repair them or raise "
                f"--max_unreadable and continue with --resume {os.path.dirname(self.path)}, or start a new run with "
                f"--skip_images {self.path}")


def steps_per_epoch(num_samples, batch_size):
    return max(1, num_samples // batch_size)


def total_steps(args, num_samples):
    """The run's optimiser steps: --iters, else --epochs of full batches (--step_count simclr: SimCLR's count of its
    repeating stream of images, floor(N x epochs / batch) + 1)."""
    if args.iters >= 0:
        return args.iters
    if getattr(args, "step_count", "epochs") == "simclr":  # (flags saved before it existed)
        return int(num_samples * args.epochs // args.batch_size) + 1
    return int(math.ceil(args.epochs * steps_per_epoch(num_samples, args.batch_size)))
