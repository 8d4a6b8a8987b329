"""Datasets in their usual on-disk formats.

Small datasets (Fashion-MNIST, CIFAR, STL-10) load whole into one uint8 tensor, `ArrayData`, that the
training device crops and augments itself. Folder datasets (ImageNet, any ImageFolder) are
`FolderData`: worker processes decode and crop to uint8, the device does the rest.
Every sample is addressed by its dataset index, which NPID and DeepCluster-v2 rely on.
"""
import gzip
import importlib.util
import os
import pickle
import re
import types
import zlib

import numpy as np
import torch
from PIL import Image

from utils import dist, seeds
from utils.errors import UserError

FMNIST_DEBIAN = "/usr/share/datasets/fashion-mnist"
STATS = {  # per-channel mean and std of the training images, in [0, 1]
    "fmnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
STATS["folder"] = STATS["imagenet"]


class ArrayData:
    """Images as one uint8 tensor (N, C, H, W), labels (N,) with -1 for unlabeled images."""

    def __init__(self, name, images, labels, num_classes):
        self.name, self.images, self.labels, self.num_classes = name, images, labels, num_classes
        self.channels, self.image_size = images.shape[1], images.shape[2]
        self.mean, self.std = STATS[name]

    def __len__(self):
        return len(self.labels)

    def subset(self, indices):
        out = ArrayData(self.name, self.images[indices], self.labels[indices], self.num_classes)
        out.mean, out.std = self.mean, self.std  # as normalised, with --norm_mean / --norm_std too
        return out

    def to(self, device):
        self.images, self.labels = self.images.to(device), self.labels.to(device)
        return self


class FeatureData:
    """Precomputed features in place of images: the loader batches their rows as it batches in-memory images, one
    view of no crops (`data.loader.TrainBatches`)."""

    def __init__(self, features, labels, num_classes):
        self.images, self.labels, self.num_classes = features, labels, num_classes

    def __len__(self):
        return len(self.labels)


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")


def class_folders(root):
    """The class folder names under `root`, sorted; an entry that cannot be looked at (a symlink loop, a dangling
    or unreadable link) is refused: were it a class, every label after it would shift."""
    try:
        entries = list(os.scandir(root))
    except OSError as e:
        raise UserError(f"{root} cannot be listed: {e.strerror}")
    names = []
    for entry in entries:
        try:
            if entry.is_dir():
                names.append(entry.name)
        except OSError as e:
            raise UserError(f"{entry.path} cannot be followed ({e.strerror}): point it at a class folder or remove it")
    return sorted(names)


class PathIndex:
    """File paths as two arrays, their bytes end to end and where each starts: two objects however many paths. The
    data loader's worker processes read them without copying (a list of str is written to by every read, through
    its reference counts, so each worker ends up with its own copy of every page). A path is the bytes the OS gave
    (os.fsencode), so a name that is not UTF-8 round-trips exactly."""

    def __init__(self, blob, offsets):
        self.blob, self.offsets = blob, offsets  # uint8 (total bytes,), int64 (n + 1,)

    @classmethod
    def of(cls, paths):
        encoded = [os.fsencode(p) for p in paths]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets)

    def __len__(self):
        return len(self.offsets) - 1

    def __getitem__(self, i):
        return os.fsdecode(self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes())

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def take(self, indices):
        """The index of the paths at `indices`, in that order."""
        starts, ends = self.offsets[indices], self.offsets[np.asarray(indices) + 1]
        return PathIndex.of([self.blob[a:b].tobytes() for a, b in zip(starts, ends)])


class FolderData:
    """An ImageFolder: `root/<class>/<image>`. Images are decoded in worker processes; the files in `skip` (a set of
    absolute paths, e.g. the unreadable ones tools.check_data found) are left out. Under W processes one rank walks
    the folder and the others receive its index (`share`)."""

    def __init__(self, name, root, image_size=224, skip=frozenset(), classes=None, interpolation="bilinear",
                 index=None):
        if index is None:
            classes, paths, labels = walk(root, classes, skip)
            index = classes, PathIndex.of(paths), torch.tensor(labels)
        self.name, self.root = name, root
        self.classes, self.paths, self.labels = index
        self.num_classes, self.channels, self.image_size = len(self.classes), 3, image_size
        self.mean, self.std = STATS[name]
        self.interpolation = interpolation  # of the training crops and the evaluation resize: bilinear or bicubic

    def __len__(self):
        return len(self.labels)

    def subset(self, indices):
        out = object.__new__(FolderData)
        out.__dict__.update(self.__dict__)
        out.paths = self.paths.take(indices.cpu().numpy())
        out.labels = self.labels[indices]
        return out

    def to(self, device):
        return self

    def load(self, i):
        with Image.open(self.paths[i]) as img:
            return img.convert("RGB")


def walk(root, classes=None, skip=frozenset()):
    """(class names, image paths, their labels) of the folder `root/<class>/...`, in sorted order."""
    classes = classes or class_folders(root)
    if not classes:
        raise UserError(f"no class folders in {root}: expected {root}/<class>/<image files>")
    paths, labels = [], []
    for label, cls in enumerate(classes):
        for dirpath, _, files in sorted(os.walk(os.path.join(root, cls))):
            found = [os.path.join(dirpath, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
            if skip:
                found = [p for p in found if os.path.abspath(p) not in skip]
            paths += found
            labels += [label] * len(found)
    if not paths:
        raise UserError(f"no image files under {root}")
    return classes, paths, labels


def _first_existing(dirs, files):
    for d in dirs:
        if d and all(os.path.exists(os.path.join(d, f)) for f in files):
            return d
    return None


DAMAGED = ": the file is damaged or truncated; download it again"
IDX_MAGIC = {0x0801: "labels", 0x0803: "images"}  # unsigned bytes, 1 or 3 dimensions


def _read_idx(path, kind):
    """An IDX file (gzipped or not) as a uint8 tensor, checked against its own header: magic, dimensions, length."""
    try:
        with (gzip.open(path) if path.endswith(".gz") else open(path, "rb")) as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError; a cut-short .gz an EOFError
        raise UserError(f"{path} cannot be read ({type(e).__name__}: {e}){DAMAGED if not isinstance(e, PermissionError) else ''}")
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if IDX_MAGIC.get(magic) != kind:
        raise UserError(f"{path} is not an IDX file of {kind} (its first bytes are {raw[:4].hex() or 'missing'})")
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + int(np.prod(shape))
    if len(raw) != expected:
        raise UserError(f"{path} holds {len(raw)} bytes where its header {shape} needs {expected}{DAMAGED}")
    return torch.from_numpy(np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape).copy())


def check_labels(labels, num_classes, where, images):
    """Labels in [0, num_classes), one per image: a mismatch would otherwise pair images with the wrong labels."""
    if len(labels) != len(images):
        raise UserError(f"{where}: {len(labels)} labels for {len(images)} images; the files do not belong together")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"{where}: labels from {int(labels.min())} to {int(labels.max())}, outside 0 .. {num_classes - 1}")


def load_fmnist(root, train):
    """From --data_root when given (and only there), else from Debian's dataset-fashion-mnist."""
    prefix = "train" if train else "t10k"
    dirs = [root, os.path.join(root, "FashionMNIST", "raw")] if root else [FMNIST_DEBIAN]
    for ext in (".gz", ""):
        names = [f"{prefix}-images-idx3-ubyte{ext}", f"{prefix}-labels-idx1-ubyte{ext}"]
        found = _first_existing(dirs, names)
        if found:
            images = _read_idx(os.path.join(found, names[0]), "images")
            labels = _read_idx(os.path.join(found, names[1]), "labels").long()
            if images.dim() != 3:
                raise UserError(f"{os.path.join(found, names[0])} holds {images.dim()}-d images, not 28 x 28 ones")
            check_labels(labels, 10, os.path.join(found, names[1]), images)
            return ArrayData("fmnist", images[:, None], labels, 10)
    if root:  # last resort where there is internet: torchvision's download into --data_root
        try:
            import torchvision
            torchvision.datasets.FashionMNIST(root, train=train, download=True)
            return load_fmnist(os.path.join(root, "FashionMNIST", "raw"), train)
        except Exception:
            pass
        raise UserError(f"Fashion-MNIST not found in --data_root {root} (looked in {', '.join(dirs)}): put "
                        f"{prefix}-images-idx3-ubyte.gz and {prefix}-labels-idx1-ubyte.gz there, or leave --data_root unset")
    raise UserError(f"Fashion-MNIST not found in {FMNIST_DEBIAN}: `apt-get install dataset-fashion-mnist`, "
                    f"or give --data_root, a folder holding {prefix}-images-idx3-ubyte.gz and {prefix}-labels-idx1-ubyte.gz")


class _CifarUnpickler(pickle.Unpickler):
    """Reads CIFAR's pickled batches: dicts, lists, strings, numbers and numpy arrays, and no other type."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}  # protocol 2 stores bytes via encode

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise UserError(f"{self.path} holds a {module}.{name}, which a CIFAR batch never does: refused")
        if module.startswith("numpy.core") and importlib.util.find_spec("numpy._core"):  # numpy 2 renamed it
            module = "numpy._core" + module[len("numpy.core"):]
        return super().find_class(module, name)


def _load_cifar_batch(path, key):
    """(images (n, 3, 32, 32), labels) of one pickled CIFAR batch, read without running any code a crafted file
    could carry, and checked: a dict holding n x 3072 bytes of images and n labels."""
    with open(path, "rb") as f:
        unpickler = _CifarUnpickler(f, encoding="bytes")
        unpickler.path = path
        try:
            batch = unpickler.load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
            raise UserError(f"{path} is not a CIFAR batch ({type(e).__name__}: {e}){DAMAGED}")
    data = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(key) if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072 or not isinstance(labels, list):
        raise UserError(f"{path} is not a CIFAR batch: expected a dict with an n x 3072 array under b'data' and a list "
                        f"under {key!r}{DAMAGED}")
    return np.asarray(data, np.uint8).reshape(-1, 3, 32, 32), torch.tensor(labels, dtype=torch.long)


def load_cifar(name, root, train):
    """torchvision's python pickles, read by an unpickler that accepts only the types they contain."""
    folder, files, key = {
        "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"], b"labels"),
        "cifar100": ("cifar-100-python", ["train"] if train else ["test"], b"fine_labels"),
    }[name]
    found = _first_existing([root and os.path.join(root, folder), root], files)
    if found is None:
        raise UserError(f"{name} not found: put torchvision's `{folder}/` ({', '.join(files)}) under --data_root "
                        f"(now {root})")
    num_classes = 10 if name == "cifar10" else 100
    images, labels = [], []
    for f in files:
        x, y = _load_cifar_batch(os.path.join(found, f), key)
        check_labels(y, num_classes, os.path.join(found, f), x)
        images.append(x)
        labels.append(y)
    return ArrayData(name, torch.from_numpy(np.concatenate(images)), torch.cat(labels), num_classes)


def _read_binary(path, item_bytes, what):
    """The bytes of an STL-10 binary, which must hold a whole number of `item_bytes` items."""
    try:
        raw = np.fromfile(path, np.uint8)
    except OSError as e:
        raise UserError(f"{path} cannot be read ({type(e).__name__}: {e})")
    if len(raw) % item_bytes:
        raise UserError(f"{path} holds {len(raw)} bytes, not a whole number of {item_bytes}-byte {what}{DAMAGED}")
    return raw


def load_stl10(root, split):
    parts = {"pretrain": ["train", "unlabeled"], "train": ["train"], "test": ["test"]}[split]
    files = [f"{p}_X.bin" for p in parts] + [f"{p}_y.bin" for p in parts if p != "unlabeled"]
    found = _first_existing([root and os.path.join(root, "stl10_binary"), root], files)
    if found is None:
        raise UserError(f"stl10 not found: put `stl10_binary/` ({', '.join(files)}) under --data_root (now {root})")
    images, labels = [], []
    for p in parts:
        x = _read_binary(os.path.join(found, f"{p}_X.bin"), 3 * 96 * 96, "96 x 96 images").reshape(-1, 3, 96, 96)
        images.append(x.transpose(0, 1, 3, 2))  # stored column-major
        if p == "unlabeled":
            labels.append(torch.full((len(x),), -1, dtype=torch.long))
            continue
        y = torch.from_numpy(_read_binary(os.path.join(found, f"{p}_y.bin"), 1, "labels").astype(np.int64)) - 1
        check_labels(y, 10, os.path.join(found, f"{p}_y.bin") + " (labels 1 .. 10 on disk)", x)
        labels.append(y)
    return ArrayData("stl10", torch.from_numpy(np.ascontiguousarray(np.concatenate(images))), torch.cat(labels), 10)


def read_image_list(path, root):
    """The files named in a list of images, one a line, relative to the dataset's root (the folder holding train/
    and val/) or absolute, as absolute paths. Every file must exist: a list of another dataset is refused."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:  # (file names as the OS gave them)
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"image list {path} cannot be read ({type(e).__name__}: {e}): expected one image path a line")
    files = {os.path.abspath(os.path.join(root, line)) for line in lines if line and not line.startswith("#")}
    missing = sorted(p for p in files if not os.path.isfile(p))
    if missing:
        raise UserError(f"image list {path} names {len(missing)} files that are not under {root}, e.g. {missing[0]}")
    return files


def folder_root(name, root):
    """The folder holding train/ and val/ of an ImageNet-style dataset."""
    if name == "imagenet":
        root = root or os.environ.get("IMAGENET_PATH")
        if not root:
            raise UserError("imagenet: set IMAGENET_PATH (or --data_root) to the folder holding train/ and val/")
    elif not root:
        raise UserError("folder: --data_root must be the folder holding train/ and val/")
    return root


def load_folder(name, root, train, skip_list=None, interpolation="bilinear"):
    """An image folder's split. Under W processes rank 0 walks it (and checks it) and the others receive its index."""
    root = folder_root(name, root)
    split = "train" if train else next((s for s in ("val", "test") if os.path.isdir(os.path.join(root, s))), "val")
    path = os.path.join(root, split)

    def index():
        if not os.path.isdir(path):
            raise UserError(f"{name}: {path} does not exist: expected {root}/train/<class>/... and {root}/val/<class>/...")
        classes = class_folders(path)
        if not train and os.path.isdir(os.path.join(root, "train")):  # labels are class indices: both splits must agree
            train_classes = class_folders(os.path.join(root, "train"))
            if classes != train_classes:
                only = sorted(set(classes) ^ set(train_classes))
                raise UserError(f"{name}: {path} and {root}/train hold different class folders ({len(only)} in one "
                                f"only, e.g. {only[0] if only else 'the same names in another order'}); the labels "
                                f"would not match")
        skip = read_image_list(skip_list, root) if skip_list else frozenset()
        classes, paths, labels = walk(path, classes, skip)
        paths = PathIndex.of(paths)
        return classes, paths.blob, paths.offsets, torch.tensor(labels)
    classes, blob, offsets, labels = dist.from_rank_0(index)
    return FolderData(name, path, interpolation=interpolation, index=(classes, PathIndex(blob, offsets), labels))


def load_dataset(name, root, split, skip_list=None, interpolation="bilinear"):
    """split: 'pretrain' (every training image, unlabeled ones too), 'train' (labeled), or 'test'. `skip_list`: a file
    of images to leave out of a folder dataset; `interpolation`: how a folder dataset's images are resampled."""
    train = split != "test"
    if skip_list and name not in ("imagenet", "folder"):
        raise UserError(f"--skip_images leaves files out of image folders; {name} has none")
    if interpolation != "bilinear" and name not in ("imagenet", "folder"):
        raise UserError(f"--interpolation {interpolation} is for image folders; {name}'s images are cropped on the "
                        f"training device with an antialiased bilinear filter")
    if name == "fmnist":
        return load_fmnist(root, train)
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, root or "./datasets", train)
    if name == "stl10":
        return load_stl10(root or "./datasets", split)
    return load_folder(name, root, train, skip_list, interpolation)


def fixed_subset(data, size, seed, stream="subset"):
    """The same `size` random images for a given seed and stream name, whatever the run."""
    if not size or size >= len(data):
        return data
    order = torch.randperm(len(data), generator=seeds.generator(seed, stream))
    return data.subset(order[:size].sort().values)


def balanced_subset(labels, fraction, seed, stream="label_fraction"):
    """Sorted indices of a class-balanced `fraction` of the labelled images: of each class's n images,
    max(1, round(fraction * n)) drawn at random by `seed` and the stream's name, the same whatever the run."""
    gen = seeds.generator(seed, stream)
    labels = labels.cpu()
    picked = []
    for c in labels[labels >= 0].unique().tolist():
        members = (labels == c).nonzero()[:, 0]
        take = max(1, round(fraction * len(members)))
        picked.append(members[torch.randperm(len(members), generator=gen)[:take]])
    return torch.cat(picked).sort().values


def label_subset_lines(data, indices):
    """The lines of a label-subset file: an image folder's file names (as SimCLR's ImageNet 1% and 10% lists name
    them), an in-memory dataset's image indices."""
    if isinstance(data, FolderData):
        return [os.path.basename(data.paths[i]) for i in indices.tolist()]
    return [str(i) for i in indices.tolist()]


def read_label_subset(path, data):
    """Sorted indices of the images a label-subset file lists (`label_subset_lines`' format, one a line)."""
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--label_subset {path} cannot be read ({type(e).__name__}: {e})")
    if not names:
        raise UserError(f"--label_subset {path} lists no image")
    if isinstance(data, FolderData):
        where = {}
        for i, p in enumerate(data.paths):
            where.setdefault(os.path.basename(p), []).append(i)
        unknown = [n for n in names if n not in where]
        if unknown:
            raise UserError(f"--label_subset {path}: {len(unknown)} of its {len(names)} file names are not training "
                            f"images of {data.root}, e.g. {unknown[0]}")
        twice = next((n for n in names if len(where[n]) > 1), None)
        if twice:
            raise UserError(f"--label_subset {path} names {twice}, which {len(where[twice])} files of {data.root} are "
                            f"called: file names do not pick images there")
        indices = [where[n][0] for n in names]
    else:
        bad = next((n for n in names if not re.fullmatch(r"[0-9]+", n)), None)  # isdigit() takes '²', int() does not
        if bad is not None:
            raise UserError(f"--label_subset {path}: {data.name} images are listed by index, not {bad!r}")
        indices = [int(n) for n in names]
        if max(indices) >= len(data):
            raise UserError(f"--label_subset {path} lists image {max(indices)}; {data.name} has {len(data)} training images")
    indices = torch.tensor(sorted(set(indices)))
    labels = data.labels.cpu()
    missing = sorted(set(labels[labels >= 0].tolist()) - set(labels[indices].tolist()))
    if missing:
        raise UserError(f"--label_subset {path} has no image of class {missing[0]}"
                        f"{f' (nor of {len(missing) - 1} more)' if len(missing) > 1 else ''}: every class needs one")
    return indices


def normalisation(args, data):
    """(mean, std) the pixels of `data` are normalised with: --norm_mean / --norm_std, else the dataset's."""
    # getattr: the flags of runs made before these flags existed (an encoder's saved args) have neither
    mean = tuple(getattr(args, "norm_mean", None) or data.mean)
    std = tuple(getattr(args, "norm_std", None) or data.std)
    for name, values in (("--norm_mean", mean), ("--norm_std", std)):
        if len(values) != data.channels:
            raise UserError(f"{name} has {len(values)} values; {args.data} has {data.channels} channels")
    return mean, std


def load_data(args, pretrain, device):
    """The run's images, on `device`: `train` (what the loop iterates: every training image when `pretrain`, else
    the labelled ones), `test`, and `knn_train` (the labelled training images, the kNN's memory)."""
    def load(split):
        return load_dataset(args.data, args.data_root, split, args.skip_images, args.interpolation)
    train = fixed_subset(load("pretrain" if pretrain else "train"), args.subset, args.seed)
    test = fixed_subset(load("test"), getattr(args, "test_subset", 0), 0, "test_subset")  # (saved flags of older runs)
    knn_train = train
    if (train.labels < 0).any():  # STL-10's unlabeled images: kNN uses the labeled split
        knn_train = fixed_subset(load("train"), args.subset, args.seed)
    for d in (train, test, knn_train):
        d.to(device)
        d.mean, d.std = normalisation(args, d)
    return types.SimpleNamespace(train=train, test=test, knn_train=knn_train, label_subset=None, validation_subset=None)
