"""Check a dataset before a long run: python -m tools.check_data --data folder --data_root DIR.

An image folder's train/ and val/ images are each decoded in full (JPEGs by PIL and by TorchCodec, as a run may
decode them), on every core, with a progress bar; the files
that fail (empty, truncated, damaged, not images) are written one a line, relative to the data root: the list
`--skip_images` takes. In-memory datasets (fmnist, cifar10, cifar100, stl10) are read whole, which checks their
files. The last line says: images, classes, unreadable.
"""
import argparse
import multiprocessing
import os
import signal
import sys

from tqdm import tqdm

from data.datasets import FolderData, folder_root, load_dataset
from data.loader import why_unreadable
from utils.errors import UserError


def _check(path):
    return path, why_unreadable(path)


def check_folder(paths, workers):
    """{path: reason} of the files among `paths` that do not decode, using `workers` processes."""
    bar = dict(total=len(paths), desc="decoding", unit="img", dynamic_ncols=True)
    if workers <= 1:
        results = map(_check, paths)
        return {p: why for p, why in tqdm(results, **bar) if why}
    with multiprocessing.get_context("fork").Pool(workers, initializer=_default_signals) as pool:
        bad = {p: why for p, why in tqdm(pool.imap_unordered(_check, paths, chunksize=32), **bar) if why}
        pool.close()  # the workers exit on their own, before the pool's exit terminates them
        pool.join()
    return bad


def _default_signals():
    """A forked worker dies of SIGTERM and SIGINT, whatever handlers its parent had set (a training run's)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.check_data", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="folder", choices=["fmnist", "cifar10", "cifar100", "stl10", "imagenet", "folder"])
    p.add_argument("--data_root", default=None, help="as train.py's --data_root")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding processes (default: every core)")
    p.add_argument("--out", default="unreadable.txt",
                   help="where to write the unreadable files, one a line relative to the data root")
    args = p.parse_args(argv)
    try:
        splits = {split: load_dataset(args.data, args.data_root, split) for split in ("pretrain", "test")}
        if not isinstance(splits["pretrain"], FolderData):
            images = sum(len(d) for d in splits.values())
            print(f"{args.data}: {images} images, {splits['test'].num_classes} classes, 0 unreadable "
                  f"(its files read whole and checked)")
            return 0
        root = os.path.abspath(folder_root(args.data, args.data_root))
        paths = [os.path.abspath(path) for d in splits.values() for path in d.paths]
        bad = check_folder(paths, args.workers)
    except UserError as e:
        print(f"check_data: error: {e}", file=sys.stderr)
        return 2
    listed = sorted(os.path.relpath(path, root) for path in bad)
    try:
        with open(args.out, "w") as f:
            f.writelines(f"{path}\n" for path in listed)
    except OSError as e:
        print(f"check_data: error: cannot write {args.out}: {e.strerror}", file=sys.stderr)
        return 2
    for path in listed[:10]:
        print(f"unreadable: {path} ({bad[os.path.join(root, path)]})")
    if len(listed) > 10:
        print(f"... and {len(listed) - 10} more")
    skip = f"; train.py --skip_images {args.out} leaves them out" if listed else ""
    print(f"{args.data} {root}: {len(paths)} images, {splits['pretrain'].num_classes} classes, {len(listed)} unreadable, "
          f"listed in {args.out}{skip}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
