"""Throughput, measured: python -m tools.benchmark MODE [flags]. Each mode prints its rows and appends them to
docs/benchmarks.md with the date, the machine, the commit and the command (--no_record: print only).

- `step --config configs/X.yaml [train.py flags]`: one full optimiser step (augmentation, forward, loss,
  backward, step) on a batch of in-memory images: img/s and crops/s.
- `loader --data_root DIR --workers N [--crops 2x224+6x96]`: the folder pipeline alone, images/s, against a
  baseline written here, the torchvision pipeline of the SwAV/VISSL code (PIL RandomResizedCrop, flip,
  ColorJitter, grayscale, blur, ToTensor and Normalize per crop, in DataLoader workers). DIR is filled with
  ImageNet-like JPEGs when empty. Ends with one JSON line holding baseline_img_s and repo_img_s.
- `scale [--fraction F]`: the method-specific work per step at ImageNet size (F = 1) on this device, in ms:
  NPID's bank scores and update, DeepCluster-v2's k-means, Sinkhorn with a queue, the SimCLR loss.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
import types

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

import train
from data.augment import cut_crops
from data.datasets import STATS, FolderData
from data.loader import TrainBatches
from models.simclr import info_nce_loss
from models.swav import sinkhorn
from models.memory import init_memory_bank, memory_scores, momentum_update, sample_negatives, spherical_kmeans
from utils import dist, optim, seeds
from utils.config import parse_args
from utils.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "docs", "benchmarks.md")


def machine(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    return f"{name}, {os.cpu_count()} cores"


def commit():
    """The short commit of the working tree, marked when tracked files have uncommitted changes; '?' outside git
    or where git is not installed."""
    git = ["git", "-C", ROOT]
    try:
        head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        if head and subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                   text=True).stdout.strip():
            head += " with uncommitted changes"
    except FileNotFoundError:
        return "?"
    return head or "?"


def record(rows, device, command, path=None):
    """Append `rows` (one line of text each) to docs/benchmarks.md under a header naming when, where and how."""
    with open(path or RESULTS, "a") as f:
        f.write(f"\n### {datetime.date.today()}, {machine(device)}, torch {torch.__version__}, commit {commit()}\n"
                f"`{command}`\n\n" + "".join(f"- {row}\n" for row in rows))


def timed(fn, repeats, device, warmup=True):
    """Seconds per call of fn(), after one warm-up call."""
    if warmup:
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


# ---------------------------------------------------------------------------------------------- step

def step_runner(argv):
    """(args, device, model, one_step): the problem of train.py's flags `argv`, built as train.py builds it, and a
    call that takes one optimiser step on a fixed batch of its in-memory data, its crops cut afresh as the loader
    cuts them."""
    args = parse_args(argv, train.PROBLEMS)
    device = dist.pick_device(args.device)
    args, data, model, optimizer, scaler = train.build(args, device)
    model.train()
    if not hasattr(data.train, "images"):
        raise UserError("step times in-memory datasets (fmnist, cifar, stl10); time folder data with `loader`")
    for group in optimizer.param_groups:
        group["lr"] = 1e-4
    idx = (torch.arange(args.batch_size) % len(data.train)).to(data.train.images.device)
    images, labels = data.train.images[idx], data.train.labels[idx]
    gen, counter = seeds.generator(args.seed, "crop boxes", device=images.device), iter(range(10 ** 9))

    def one_step():
        batch = cut_crops(images, model.crops, gen), labels, idx  # as the loader yields it
        train.train_step(model, model, optimizer, scaler, batch, next(counter))
    return args, device, model, one_step


def step(argv, warmup=3):
    """`--steps N` (default 10) is this mode's own flag; the others are train.py's."""
    steps = 10
    if "--steps" in argv:
        at = argv.index("--steps")
        steps, argv = int(argv[at + 1]), argv[:at] + argv[at + 2:]
    args, device, model, one_step = step_runner(argv)
    for _ in range(warmup - 1):
        one_step()
    seconds = timed(one_step, steps, device)
    crops = len(model.augment.crops)
    precision = args.amp_dtype if args.amp else "fp32"
    row = (f"step: {args.problem} {args.arch} width {args.width} batch {args.batch_size} x {crops} crops {precision} on "
           f"{device.type} ({torch.get_num_threads()} threads): {seconds:.3f} s/step, {args.batch_size / seconds:.0f} img/s, "
           f"{crops * args.batch_size / seconds:.0f} crops/s")
    return [row], device, dict(s_per_step=seconds, img_s=args.batch_size / seconds)


# -------------------------------------------------------------------------------------------- loader

def natural_image(rng, height, width):
    """An RGB uint8 image with natural-image statistics: a 1/f^1.15 amplitude spectrum (smooth regions and
    texture) under a few flat-shaded shapes (objects with edges), plus a little sensor noise."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    amplitude = np.maximum(np.hypot(fy, fx), 1.0 / max(height, width)) ** -1.15
    channels = []
    for _ in range(3):
        phase = rng.uniform(0, 2 * np.pi, amplitude.shape)
        field = np.fft.irfft2(amplitude * np.exp(1j * phase), s=(height, width))
        channels.append(field / (field.std() + 1e-8))
    luma = channels[0]
    rgb = np.stack([luma + 0.35 * channels[1], luma + 0.35 * channels[2], luma - 0.35 * (channels[1] + channels[2])], -1)
    img = Image.fromarray(np.clip(128 + 40 * rgb, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(2, 7)):
        x0, y0 = rng.uniform(-0.2, 1.0) * width, rng.uniform(-0.2, 1.0) * height
        box = [x0, y0, x0 + rng.uniform(0.1, 0.6) * width, y0 + rng.uniform(0.1, 0.6) * height]
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(0.8))  # a lens's softness on the edges
    return np.clip(np.asarray(img, np.float32) + rng.normal(0, 3, (height, width, 3)), 0, 255).astype(np.uint8)


def make_jpeg_folder(root, images, classes=10, seed=0):
    """`images` JPEGs (quality 90) of ImageNet-like sizes: width about 500 (350-800), aspect 4:3 mostly."""
    rng = np.random.default_rng(seed)
    for i in range(images):
        folder = os.path.join(root, "train", f"class{i % classes:03d}")
        os.makedirs(folder, exist_ok=True)
        width = int(np.clip(rng.normal(500, 90), 350, 800))
        aspect = rng.choice([4 / 3, 4 / 3, 4 / 3, 3 / 4, 1.0, 16 / 9])
        height = int(round(width / aspect))
        Image.fromarray(natural_image(rng, height, width)).save(os.path.join(folder, f"{i:06d}.JPEG"), quality=90)
    os.makedirs(os.path.join(root, "val"), exist_ok=True)


def parse_crops(text):
    """'2x224+6x96' -> [(224, (0.14, 1.0)), (224, ...), (96, (0.05, 0.14)) x 6], SwAV's scales (one size: 0.08-1)."""
    parts = [tuple(int(v) for v in p.split("x")) for p in text.split("+")]
    if len(parts) == 1:
        scales = [(0.08, 1.0)]
    else:
        scales = [(0.14, 1.0)] + [(0.05, 0.14)] * (len(parts) - 1)
    return [(size, scale) for (n, size), scale in zip(parts, scales) for _ in range(n)]


class BaselineMultiCrop(torch.utils.data.Dataset):
    """The SwAV/VISSL multi-crop dataset: decode with PIL, then per crop RandomResizedCrop (bilinear, torchvision's
    default and theirs; or bicubic), flip, ColorJitter(0.8, 0.8, 0.8, 0.2) with p 0.8, grayscale p 0.2, PIL Gaussian
    blur p 0.5, ToTensor, Normalize."""

    def __init__(self, paths, crops, interpolation="bilinear"):
        import torchvision.transforms as T
        self.paths = paths
        mean, std = STATS["imagenet"]
        self.transforms = [T.Compose([
            T.RandomResizedCrop(size, scale=scale, interpolation=T.InterpolationMode(interpolation)),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([T.Lambda(lambda im: im.filter(ImageFilter.GaussianBlur(np.random.uniform(0.1, 2.0))))], p=0.5),
            T.ToTensor(),
            T.Normalize(mean, std)]) for size, scale in crops]

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as img:
            img = img.convert("RGB")
        return [t(img) for t in self.transforms]


def images_per_second(batches, batch_size, count, device=torch.device("cpu")):
    """Images/s over `count` batches of an iterator, after its first batch (workers starting) is discarded."""
    it = iter(batches)
    next(it)
    start = time.perf_counter()
    for _ in range(count):
        next(it)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return count * batch_size / (time.perf_counter() - start)


def loader(argv):
    p = argparse.ArgumentParser(prog="python -m tools.benchmark loader")
    p.add_argument("--data_root", required=True, help="folder with train/<class>/*.JPEG; generated when empty")
    p.add_argument("--images", type=int, default=640, help="JPEGs to generate when the folder is empty")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes of both pipelines")
    p.add_argument("--crops", default="2x224+6x96", help="crop recipe: NxSIZE[+NxSIZE...]")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--batches", type=int, default=16, help="batches timed (after one discarded)")
    p.add_argument("--only", choices=["both", "baseline", "repo"], default="both")
    p.add_argument("--decode", choices=["workers", "device"], default="workers", help="the repo's --decode")
    p.add_argument("--device", default="cpu", help="the training device (--decode device decodes there)")
    p.add_argument("--interpolation", choices=["bilinear", "bicubic"], default="bilinear",
                   help="the crops' filter, in both pipelines")
    args = p.parse_args(argv)
    if not os.path.isdir(os.path.join(args.data_root, "train")):
        make_jpeg_folder(args.data_root, args.images)
    data = FolderData("imagenet", os.path.join(args.data_root, "train"), interpolation=args.interpolation)
    needed = (args.batches + 1) * args.batch_size
    if len(data) < needed:
        raise UserError(f"{args.data_root} holds {len(data)} images; {needed} are needed (--batches, --batch_size)")
    crops = parse_crops(args.crops)
    result = dict(workers=args.workers, crops=args.crops, batch_size=args.batch_size, interpolation=args.interpolation)
    rows = []
    torch.manual_seed(0)
    if args.only in ("both", "baseline"):
        baseline = torch.utils.data.DataLoader(BaselineMultiCrop(data.paths, crops, args.interpolation),
                                               batch_size=args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True)
        result["baseline_img_s"] = images_per_second(baseline, args.batch_size, args.batches)
        rows.append(f"loader: baseline (torchvision PIL transforms per crop, {args.interpolation}), {args.crops}, "
                    f"{args.workers} workers: {result['baseline_img_s']:.1f} img/s")
    if args.only in ("both", "repo"):
        device = torch.device(args.device)
        batches = TrainBatches(data, args.batch_size, 0, device, crops=crops, workers=args.workers, decode=args.decode)
        result["repo_img_s"] = images_per_second(batches.epoch(0), args.batch_size, args.batches, device)
        how = "decode and crop to uint8 in workers" if args.decode == "workers" else f"decode and crop on {device}"
        rows.append(f"loader: repo ({how}, {args.interpolation}; colour on the device), {args.crops}, "
                    f"{args.workers} workers: {result['repo_img_s']:.1f} img/s")
    if "baseline_img_s" in result and "repo_img_s" in result:
        result["ratio"] = result["repo_img_s"] / result["baseline_img_s"]
        rows.append(f"loader: repo / baseline = {result['ratio']:.2f}")
    return rows, torch.device("cpu"), result


# --------------------------------------------------------------------------------------------- scale

def scale(argv):
    """Per-step cost of each method's own work at ImageNet size; `--fraction` shrinks every size (for tests)."""
    p = argparse.ArgumentParser(prog="python -m tools.benchmark scale")
    p.add_argument("--fraction", type=float, default=1.0, help="multiply every size by this (1: ImageNet)")
    p.add_argument("--device", default=None)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    device = dist.pick_device(args.device)
    f = args.fraction

    def n(x):
        return max(2, int(round(x * f)))
    gen = torch.Generator(device).manual_seed(0)
    rows, result = [], {}

    def measure(name, fn, expensive=False, times=1):
        """ms of `times` calls of fn; an expensive fn is timed once, without a warm-up call."""
        ms = 1000 * times * timed(fn, 1 if expensive else args.repeats, device, warmup=not expensive)
        result[name] = ms
        rows.append(f"scale: {name}: {ms:.1f} ms")

    bank = init_memory_bank(n(1_281_167), 128, gen)
    v = torch.nn.functional.normalize(torch.randn(n(32), 128, device=device, generator=gen), dim=1)
    idx = torch.randperm(len(bank), device=device, generator=gen)[:len(v)]
    for k in (4096, 32000):
        def npid(k=k):
            rows_ = torch.cat([idx[:, None], sample_negatives(len(v), n(k), len(bank), gen)], 1)
            memory_scores(bank, v, rows_)
            momentum_update(bank, idx, v, 0.5)
        measure(f"NPID bank {len(bank)} x 128, local batch {len(v)}, K = {n(k)}: scores + update", npid)
    for rows_per_rank in (20_000, 160_000):
        z = torch.nn.functional.normalize(torch.randn(n(rows_per_rank), 128, device=device, generator=gen), dim=1)

        measure(f"DCv2 k-means, 3 heads x {n(3000)} clusters, 10 iterations, {len(z)} rows (once an epoch; one head "
                f"timed, x 3)", lambda z=z: spherical_kmeans(z, z[:n(3000)], 10), expensive=True, times=3)
    scores = torch.randn(n(4096) + n(3840), n(3000), device=device, generator=gen)
    measure(f"Sinkhorn, {n(4096)} x {n(3000)} scores + a {n(3840)}-row queue, 3 iterations", lambda: sinkhorn(scores, 0.05, 3))
    for batch in (512, 4096):
        z = torch.randn(2 * n(batch), 128, device=device, generator=gen, requires_grad=True)
        measure(f"SimCLR loss, batch {n(batch)} x 2 crops, forward + backward",
                lambda z=z: info_nce_loss(z, 2, 0.1).backward())
    return rows, device, result


# -------------------------------------------------------------------------------------------- memory

def rss_and_peak():
    """(resident bytes now, peak resident bytes since the last reset_peak) of this process (Linux)."""
    status = open("/proc/self/status").read()
    kb = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in status.splitlines()) if k in ("VmRSS", "VmHWM")}
    return 1024 * kb["VmRSS"], 1024 * kb["VmHWM"]


def reset_peak():
    """Start the peak resident memory afresh (Linux: `echo 5 > /proc/self/clear_refs`)."""
    import gc
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def growth(fn):
    """The peak resident memory fn() adds to this process, in bytes."""
    reset_peak()
    before, _ = rss_and_peak()
    fn()
    return rss_and_peak()[1] - before


def _memory_rank(rank, world, init, method, sizes, test_images, channels, side, out):
    """One of `world` gloo ranks: for each N of `sizes`, the method built on N synthetic images with a raw-pixel
    backbone of channels x side x side features, its per-rank state filled; the peak memory a final evaluation and a
    checkpoint add to this process."""
    import tempfile
    from data.datasets import ArrayData
    from models.backbones import Pixels, head_from_args
    from utils.stops import StopFlag
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.set_num_threads(1)
    rows = []
    for n in [sizes[0]] + list(sizes):  # the first a warm-up: one-time buffers (gloo's, BLAS's) are not N's
        gen = torch.Generator().manual_seed(n)
        train_set, test = (ArrayData("fmnist", torch.randint(0, 256, (m, channels, side, side), dtype=torch.uint8,
                                                             generator=gen), torch.randint(0, 10, (m,), generator=gen), 10)
                           for m in (n, test_images))
        data = types.SimpleNamespace(train=train_set, test=test, knn_train=train_set)
        flags = ["--problem", method, "--arch", "resnet18", "--width", "0.125", "--batch_size", str(64 * world),
                 "--knn_k", "20"]
        flags += {"swav": ["--queue_length", str(3840 * world), "--head_hidden_dims", "64"],
                  "dcv2": ["--num_clusters", "30", "--head_hidden_dims", "64"]}.get(method, [])
        args = parse_args(flags, train.PROBLEMS)
        torch.manual_seed(0)
        model = train.METHODS[method](args, train_set, torch.device("cpu"))
        model.backbone = Pixels(channels, side)  # a wide feature at no cost: the raw pixels
        model.head = head_from_args(args, model.backbone.feat_dim)
        for value in model.rank_state().values():  # banks and queues as full as a run's
            if torch.is_tensor(value):
                value.copy_(torch.randint(0, len(train_set), value.shape, generator=gen).to(value.dtype))
        optimizer = optim.build_optimizer(model, args)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        with tempfile.TemporaryDirectory() as folder, StopFlag() as signals:
            run = train.Run(args, data, model, model, optimizer, scaler, None, folder, None, 0, signals)
            evaluation = growth(run.evaluate)
            saving = growth(run.save)
        rows.append(dict(rank=rank, world=world, method=method, n=n, dim=model.backbone.feat_dim, evaluation=evaluation,
                         checkpoint=saving))
        del run, model, optimizer, data, train_set, test
    torch.save(rows[1:], os.path.join(out, f"{method}_{world}_{rank}.pt"))
    torch.distributed.barrier()
    dist.shutdown()


def slope(points):
    """The least-squares slope of y over x of (x, y) points."""
    x, y = np.array(points, dtype=np.float64).T
    return float(np.polyfit(x, y, 1)[0])


def memory(argv):
    p = argparse.ArgumentParser(prog="python -m tools.benchmark memory")
    p.add_argument("--methods", nargs="+", default=["simclr", "swav", "npid", "dcv2"])
    p.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4], help="gloo processes")
    p.add_argument("--sizes", type=int, nargs="+", default=[16_000, 32_000, 64_000], help="training images N")
    p.add_argument("--test_images", type=int, default=1000, help="test images, the same for every N")
    p.add_argument("--channels", type=int, default=1, help="synthetic image channels: features of channels x side^2")
    p.add_argument("--side", type=int, default=32)
    args = p.parse_args(argv)
    import tempfile
    import torch.multiprocessing as mp
    rows, result = [], {}
    dim = args.channels * args.side ** 2
    # every large block from mmap and back to the system when freed: glibc's moving threshold would otherwise keep
    # freed blocks resident and hide what the next phase adds (the ranks inherit this)
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
    for method in args.methods:
        for world in args.worlds:
            with tempfile.TemporaryDirectory() as out:
                init = f"file://{out}/init"
                mp.spawn(_memory_rank, args=(world, init, method, args.sizes, args.test_images, args.channels, args.side,
                                             out), nprocs=world)
                found = [row for r in range(world) for row in torch.load(os.path.join(out, f"{method}_{world}_{r}.pt"))]
            for phase in ("evaluation", "checkpoint"):
                for who, ranks in (("rank 0", [0]), ("other ranks", list(range(1, world)))):
                    if not ranks:
                        continue
                    peaks = {n: max(r[phase] for r in found if r["n"] == n and r["rank"] in ranks) for n in args.sizes}
                    per_image = slope(list(peaks.items()))
                    ideal = 4 * dim / world  # the rank's share of the N training images' features: N D 4 / W
                    key = f"{method} W={world} {phase} {who}"
                    result[key] = dict(peaks=peaks, bytes_per_image=per_image, of_the_share=per_image / ideal)
                    rows.append(f"memory: {key}: peak added {', '.join(f'{size_text(v)} at N={n}' for n, v in peaks.items())}"
                                f"; slope {per_image:.0f} B per image per rank"
                                + (f" = {per_image / ideal:.2f} x the rank's share of the features" if phase == "evaluation"
                                   else ""))
    return rows, torch.device("cpu"), result


def size_text(size):
    return train.size_text(size)


# --------------------------------------------------------------------------------------------- index

class _PathLengths(torch.utils.data.Dataset):
    """A stand-in for decoding: each item reads its path, as the loader's workers do, and returns its length."""

    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return len(self.paths[i])


def private_and_pss(pid):
    """(private bytes, proportional set size) of process `pid` (Linux smaps_rollup)."""
    fields = {}
    for line in open(f"/proc/{pid}/smaps_rollup").read().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = 1024 * int(value.split()[0])
    return fields["Private_Clean"] + fields["Private_Dirty"], fields["Pss"]


def index(argv):
    p = argparse.ArgumentParser(prog="python -m tools.benchmark index")
    p.add_argument("--paths", type=int, default=1_000_000, help="empty image files to make and index")
    p.add_argument("--root", default="/dev/shm/ssl_index", help="where to make them (a tmpfs: no disk in the timing)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers that read every path once")
    args = p.parse_args(argv)
    train_dir = os.path.join(args.root, "train")
    per_class = 1000
    classes = -(-args.paths // per_class)
    if not os.path.isdir(train_dir) or len(os.listdir(train_dir)) != classes:
        for c in range(classes):
            folder = os.path.join(train_dir, f"n{c:08d}")
            os.makedirs(folder, exist_ok=True)
            for i in range(min(per_class, args.paths - c * per_class)):
                open(os.path.join(folder, f"n{c:08d}_{i}.JPEG"), "wb").close()
    start = time.perf_counter()
    data = FolderData("folder", train_dir)
    seconds = time.perf_counter() - start
    rows = [f"index: {len(data)} files in {classes} class folders indexed in {seconds:.1f} s "
            f"({len(data) / seconds:.0f} files/s); the index holds {size_text(data.paths.blob.nbytes + data.paths.offsets.nbytes + 8 * len(data))}"]
    result = dict(files=len(data), index_seconds=seconds)
    for holder, paths in (("a list of str", list(data.paths)), ("PathIndex", data.paths)):
        loader = torch.utils.data.DataLoader(_PathLengths(paths), batch_size=1024, shuffle=True,
                                             num_workers=args.workers, persistent_workers=True)
        for _ in loader:  # one epoch: every path read once, in random order
            pass
        workers = [w.pid for w in loader._iterator._workers]
        main_private, main_pss = private_and_pss(os.getpid())
        mine = [private_and_pss(pid) for pid in workers]
        worker_private = sum(m[0] for m in mine)
        pss = main_pss + sum(m[1] for m in mine)
        rows.append(f"index: paths as {holder}, after an epoch with {args.workers} workers: the workers' private memory "
                    f"{size_text(worker_private)} ({size_text(worker_private / max(1, args.workers))} each), the "
                    f"rank and its workers {size_text(pss)} in all (PSS)")
        result[holder] = dict(worker_private=worker_private, pss=pss)
        del loader
    return rows, torch.device("cpu"), result


MODES = {"step": step, "loader": loader, "scale": scale, "memory": memory, "index": index}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    mode, rest = (argv[0], argv[1:]) if argv and argv[0] in MODES else ("step", argv)
    no_record = "--no_record" in rest
    rest = [a for a in rest if a != "--no_record"]
    try:
        rows, device, result = MODES[mode](rest)
    except UserError as e:
        print(f"benchmark: error: {e}", file=sys.stderr)
        sys.exit(2)
    for row in rows:
        print(row)
    if not no_record:
        record(rows, device, "python -m tools.benchmark " + " ".join([mode] + rest))
    print(json.dumps(dict(mode=mode, **result)))
    return result


if __name__ == "__main__":
    main()
