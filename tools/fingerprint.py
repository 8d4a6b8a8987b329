"""A fingerprint of what training computes: python -m tools.fingerprint [--root DIR].

Trains every method for 20 steps on a Fashion-MNIST subset at width 0.125 (SwAV with multi-crop and its queue)
and probes the SimCLR run three ways (SGD on precomputed features, SGD on augmented crops, L-BFGS), then prints
per run the start of a SHA-256 of its final weights and extra state, and of one of its logged figures (img/s left
out). A change meant to keep behaviour, run before and after on the same machine, must print the same lines; another CPU may round
differently. About 20 s on two cores.
"""
import argparse
import hashlib
import os
import sys
import tempfile

import pandas as pd
import torch

import train

TINY = ["--data", "fmnist", "--subset", "512", "--batch_size", "64", "--arch", "resnet18", "--width", "0.125",
        "--opt", "adamw", "--lr", "1e-3", "--workers", "0", "--iters", "20", "--log_freq", "5", "--eval_freq", "-1"]
PRETRAIN = {
    "simclr": ["--opt", "lars", "--lr", "0.5", "--warmup", "0.2"],
    "swav": ["--num_crops", "2", "2", "--size_crops", "20", "12", "--min_scale_crops", "0.3", "0.1", "--max_scale_crops",
             "1", "0.3", "--queue_length", "128", "--epoch_queue_starts", "0", "--num_prototypes", "30"],
    "npid": ["--num_negatives", "64"],
    "dcv2": ["--num_clusters", "20", "--kmeans_iters", "3", "--head_hidden_dims", "64"],
}
PROBE = ["--problem", "eval", "--subset", "512", "--iters", "20", "--log_freq", "5"]
PROBES = {
    "eval_sgd": ["--batch_size", "128", "--linear_bn", "true"],
    "eval_augmented": ["--batch_size", "128", "--precompute_features", "false"],
    "eval_lbfgs": ["--opt", "lbfgs", "--batch_size", "512", "--lr", "1", "--lr_scaling", "none"],
}


def digest(folder):
    """(SHA-256 of a run's checkpointed step and model state, tensors bit for bit in key order; SHA-256 of its
    logs.csv). The first alone says the weights are the same when the logs gained a column."""
    h = hashlib.sha256()

    def feed(value):
        if torch.is_tensor(value):
            h.update(str((value.dtype, tuple(value.shape))).encode())
            h.update(value.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            for key in sorted(value):
                h.update(str(key).encode())
                feed(value[key])
        else:
            h.update(repr(value).encode())
    ckpt = torch.load(os.path.join(folder, "checkpoint.pth.tar"), weights_only=True)
    feed(dict(step=ckpt["step"], model=ckpt["model"]))
    logs = pd.read_csv(os.path.join(folder, "logs.csv")).drop(columns="img_per_s")
    return h.hexdigest(), hashlib.sha256(logs.to_csv(index=False).encode()).hexdigest()


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.fingerprint", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=None, help="exman root for the runs (default: a temporary folder)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or tmp
        folders = {}
        for method, flags in PRETRAIN.items():
            folders[method], _ = train.main(TINY + ["--problem", method, "--root", root, "--name", method] + flags)
        for name, flags in PROBES.items():
            folders[name], _ = train.main(PROBE + ["--encoder_ckpt", folders["simclr"], "--root", root, "--name", name]
                                          + flags)
        lines = [f"{name:15s} weights {weights[:16]}  logs {logs[:16]}"
                 for name, (weights, logs) in ((name, digest(folder)) for name, folder in folders.items())]
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
