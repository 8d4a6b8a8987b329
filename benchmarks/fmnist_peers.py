"""Accuracy of this repo's SimCLR and SwAV next to lightly's, trained on the same Fashion-MNIST recipe and probed the
same way. Not part of the package and not run by CI; lightly lives in its own virtual environment:

    python3 -m venv /tmp/peers && /tmp/peers/bin/pip install torch==2.14.1 torchvision==0.29.1 lightly
    .venv/bin/python benchmarks/fmnist_peers.py --method swav --peers_python /tmp/peers/bin/python

The peer run reads the repo's `configs/fmnist_<method>.yaml` (flags after the method's own: `--iters 1400` etc.)
and trains with it: the repo's backbone (ResNet-18 at its width, CIFAR stem) and data, the same batch, steps,
crop sizes and scales, colour strength, AdamW with the same warmup and cosine and no weight decay on biases
and norms, bf16 autocast when asked; lightly's own transforms (PIL, in DataLoader workers), projection head,
loss, and for SwAV its prototypes, their freezing and its queue, as in lightly's documented examples. Its
backbone is exported as a backbone.pth that `configs/fmnist_eval.yaml` probes like the repo's own.
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import train  # noqa: E402
from utils.config import parse_args  # noqa: E402

PEER = r'''
import json, math, sys, time
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
from PIL import Image
recipe = json.loads(sys.argv[1])
sys.path.insert(0, recipe["repo"])
from data.datasets import load_dataset, STATS
from models.backbones import build_backbone
from lightly.models.modules import SimCLRProjectionHead, SwaVProjectionHead, SwaVPrototypes
from lightly.loss import NTXentLoss, SwaVLoss
from lightly.loss.memory_bank import MemoryBankModule
from lightly.transforms import SimCLRTransform, SwaVTransform

r = recipe
torch.manual_seed(r["seed"])
data = load_dataset("fmnist", None, "train")
mean, std = STATS["fmnist"]
colour = dict(cj_prob=r["jitter_prob"], cj_strength=r["strength"], cj_hue=0.0,  # hue: a no-op on grey images
              random_gray_scale=r["grayscale_prob"], gaussian_blur=0.0, hf_prob=0.5,
              normalize=dict(mean=list(mean), std=list(std)))
if r["method"] == "simclr":
    transform = SimCLRTransform(input_size=r["size"], min_scale=r["min_scale"], **colour)
else:
    transform = SwaVTransform(crop_sizes=(r["size"],), crop_counts=(2,), crop_min_scales=(r["min_scale"],),
                              crop_max_scales=(1.0,), **colour)

class Images(torch.utils.data.Dataset):
    def __len__(self):
        return len(data)
    def __getitem__(self, i):
        return transform(Image.fromarray(data.images[i, 0].numpy(), mode="L"))

backbone = build_backbone(r["spec"])
feat = backbone.feat_dim
if r["method"] == "simclr":
    head = SimCLRProjectionHead(feat, r["hidden"], r["embedding_dim"])
    criterion = NTXentLoss(temperature=r["temperature"])
    model = nn.ModuleDict(dict(backbone=backbone, head=head))
else:
    head = SwaVProjectionHead(feat, r["hidden"], r["embedding_dim"])
    prototypes = SwaVPrototypes(r["embedding_dim"], r["num_prototypes"], n_steps_frozen_prototypes=r["freeze"])
    criterion = SwaVLoss(temperature=r["temperature"], sinkhorn_epsilon=r["epsilon"])
    queues = nn.ModuleList([MemoryBankModule(size=(r["queue_length"], r["embedding_dim"])) for _ in range(2)])
    model = nn.ModuleDict(dict(backbone=backbone, head=head, prototypes=prototypes))
params = list(model.parameters())
groups = [dict(params=[p for p in params if p.ndim > 1], weight_decay=r["weight_decay"]),
          dict(params=[p for p in params if p.ndim <= 1], weight_decay=0.0)]
optimizer = torch.optim.AdamW(groups, lr=r["lr"], betas=(r["momentum"], 0.999))
loader = torch.utils.data.DataLoader(Images(), batch_size=r["batch_size"], shuffle=True, drop_last=True,
                                     num_workers=r["workers"], persistent_workers=r["workers"] > 0)
steps_per_epoch = len(loader)

def lr_at(step):
    warm = int(round(r["warmup"] * r["iters"]))
    if step < warm:
        return r["lr"] * step / warm
    return 0.5 * r["lr"] * (1 + math.cos(math.pi * (step - warm) / max(1, r["iters"] - warm)))

def embed(x):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=r["bf16"]):
        z = model["head"](model["backbone"](x))
    return F.normalize(z.float(), dim=1) if r["method"] == "swav" else z.float()

step, start, logs, seconds = 0, time.time(), [], 0.0
while step < r["iters"]:
    epoch = step // steps_per_epoch
    tick = time.time()
    for views in loader:
        for g in optimizer.param_groups:
            g["lr"] = lr_at(step)
        if r["method"] == "simclr":
            loss = criterion(embed(views[0]), embed(views[1]))
        else:
            model["prototypes"].normalize()
            z = [embed(v) for v in views]
            scores = [model["prototypes"](x, step) for x in z]
            queue_scores = None
            if r["queue_length"]:
                with torch.no_grad():
                    queued = [q(x.detach(), update=True)[1].T for q, x in zip(queues, z)]
                if epoch >= r["epoch_queue_starts"]:
                    with torch.no_grad():
                        queue_scores = [model["prototypes"](x, step) for x in queued]
            loss = criterion(scores, [], queue_scores)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if step % 25 == 0:
            logs.append(dict(iter=step, train_loss=loss.item(), seconds=time.time() - start))
            print(f"step {step} loss {loss.item():.4f} {time.time() - start:.0f} s", flush=True)
        if step >= r["iters"]:
            break
torch.save(dict(args=dict(problem=f"lightly_{r['method']}", data="fmnist", data_root=None), backbone_spec=r["spec"],
                backbone=backbone.state_dict()), r["out"] + "/backbone.pth")
json.dump(dict(logs=logs, seconds=time.time() - start), open(r["out"] + "/peer.json", "w"))
'''


def recipe(method, flags, out, bf16, workers):
    """The repo's resolved flags for configs/fmnist_<method>.yaml, as the numbers the peer trains with."""
    args = parse_args(["--config", f"configs/fmnist_{method}.yaml"] + flags, train.PROBLEMS)
    if args.color_jitter is not None or len(args.size_crops) != 1 or args.num_crops != [2]:
        sys.exit("fmnist_peers.py: the peer runs take two crops of one size and --color_jitter_strength only")
    if len(args.head_hidden_dims) != 1 or args.iters < 0:
        sys.exit("fmnist_peers.py: lightly's heads have one hidden layer, and the config must give --iters")
    from data.datasets import load_dataset
    from models.backbones import backbone_spec, build_backbone
    spec = backbone_spec(args, load_dataset("fmnist", None, "test"))
    hidden = args.head_hidden_dims[0] if args.head_hidden_dims[0] != -1 else build_backbone(spec).feat_dim
    scale = args.batch_size / 256 if args.lr_scaling == "linear" else 1.0
    r = dict(repo=ROOT, method=method, out=out, seed=args.seed, spec=spec, bf16=bf16, workers=workers,
             size=args.size_crops[0], min_scale=args.min_scale_crops[0], strength=args.color_jitter_strength,
             jitter_prob=args.jitter_prob, grayscale_prob=args.grayscale_prob, hidden=hidden,
             embedding_dim=args.embedding_dim, temperature=args.temperature, batch_size=args.batch_size,
             iters=args.iters, lr=args.lr * scale, warmup=args.warmup, weight_decay=args.weight_decay,
             momentum=args.momentum)
    if method == "swav":
        if len(args.num_prototypes) != 1:
            sys.exit("fmnist_peers.py: one prototype head")
        r.update(num_prototypes=args.num_prototypes[0], freeze=args.freeze_prototypes_niters, epsilon=args.epsilon,
                 queue_length=args.queue_length, epoch_queue_starts=args.epoch_queue_starts)
    return r


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", choices=["simclr", "swav"], required=True)
    p.add_argument("--peers_python", required=True, help="python of a venv with lightly and torch")
    p.add_argument("--root", default=os.path.join(ROOT, "logs"), help="exman root of the probe; the peer's backbone "
                   "goes to <root>/peers/<method>_lightly/")
    p.add_argument("--bf16", choices=["true", "false"], default="true", help="bf16 autocast for the peer's model")
    p.add_argument("--workers", type=int, default=2, help="the peer's DataLoader workers")
    args, flags = p.parse_known_args(argv)
    out = os.path.join(args.root, "peers", f"{args.method}_lightly")
    os.makedirs(out, exist_ok=True)
    r = recipe(args.method, flags, out, args.bf16 == "true", args.workers)
    print("peer recipe:", json.dumps(r))
    subprocess.run([args.peers_python, "-c", PEER, json.dumps(r)], check=True, cwd=ROOT)
    folder, m = train.main(["--config", "configs/fmnist_eval.yaml", "--root", args.root, "--name",
                            f"{args.method}_lightly_probe", "--encoder_ckpt", os.path.join(out, "backbone.pth")])
    with open(os.path.join(out, "peer.json")) as f:
        peer = json.load(f)
    row = dict(method=args.method, peer="lightly", steps=r["iters"], minutes=peer["seconds"] / 60,
               linear=m["test_acc1"], knn=m["knn_acc1"], probe=folder)
    print(json.dumps(row))
    return row


if __name__ == "__main__":
    main()
