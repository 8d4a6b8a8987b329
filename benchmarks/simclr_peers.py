"""SimCLR training speed of this repo against lightly's documented SimCLR loop and simclr-pytorch's loop, side by
side on the same model, batch, crops and data, in interleaved rounds. Not part of the package and not run by CI.

    python3 -m venv /tmp/peers && /tmp/peers/bin/pip install torch==2.14.1 torchvision==0.29.1 lightly
    .venv/bin/python benchmarks/simclr_peers.py --peers_python /tmp/peers/bin/python

All three train a full-width ResNet-18 with the CIFAR stem (3x3 conv, no max-pool) and a 512-512-128 MLP head with
NT-Xent at T = 0.5, on batches of 256 CIFAR-sized (32 px) images x 2 crops with SimCLR's CIFAR colour recipe
(jitter 0.5, no blur), in fp32 (or both under bf16 autocast, --bf16), from the same generated images written
in CIFAR-10's on-disk format. Each does its augmentation its own documented way: the repo on the training
device, the peers with PIL transforms in DataLoader workers. The ratios are appended to docs/benchmarks.md.
"""
import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tools.benchmark import natural_image, record  # noqa: E402

LIGHTLY = r'''
import json, pickle, sys, time
import numpy as np, torch, torchvision
from PIL import Image
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform
root, batch, steps, workers, bf16 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
with open(f"{root}/cifar-10-batches-py/data_batch_1", "rb") as f:
    data = pickle.load(f, encoding="bytes")[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
transform = SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)
class Images(torch.utils.data.Dataset):
    def __len__(self):
        return len(data)
    def __getitem__(self, i):
        return transform(Image.fromarray(data[i]))
backbone = torchvision.models.resnet18()
backbone.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
backbone.maxpool, backbone.fc = torch.nn.Identity(), torch.nn.Identity()
head = SimCLRProjectionHead(512, 512, 128)
model = torch.nn.Sequential(backbone, head)
criterion = NTXentLoss(temperature=0.5)
optimizer = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9)
loader = torch.utils.data.DataLoader(Images(), batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
                                     persistent_workers=workers > 0)
it = iter(loader)
def step():
    x0, x1 = next(it)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        z0, z1 = model(x0), model(x1)
    loss = criterion(z0.float(), z1.float())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
'''


# simclr-pytorch's CIFAR loop as its code runs it (written here from its semantics): torchvision transforms per
# view in DataLoader workers, a ResNet with a BN-ReLU MLP head, and NT-Xent as a cross-entropy over the 2N x 2N
# cosine logits with the self-similarities masked out
SIMCLR_PYTORCH = r'''
import json, pickle, sys, time
import numpy as np, torch, torchvision, torchvision.transforms as T
import torch.nn.functional as F
from PIL import Image
root, batch, steps, workers, bf16 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
with open(f"{root}/cifar-10-batches-py/data_batch_1", "rb") as f:
    data = pickle.load(f, encoding="bytes")[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
view = T.Compose([T.RandomResizedCrop(32, scale=(0.08, 1.0)), T.RandomHorizontalFlip(),
                  T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2), T.ToTensor(),
                  T.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))])
class Pairs(torch.utils.data.Dataset):
    def __len__(self):
        return len(data)
    def __getitem__(self, i):
        img = Image.fromarray(data[i])
        return view(img), view(img)
backbone = torchvision.models.resnet18()
backbone.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
backbone.maxpool, backbone.fc = torch.nn.Identity(), torch.nn.Identity()
model = torch.nn.Sequential(backbone, torch.nn.Linear(512, 512, bias=False), torch.nn.BatchNorm1d(512),
                            torch.nn.ReLU(), torch.nn.Linear(512, 128))
optimizer = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9)
loader = torch.utils.data.DataLoader(Pairs(), batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
                                     persistent_workers=workers > 0)
it = iter(loader)
def nt_xent(z, t=0.5):
    z = F.normalize(z.float(), dim=1)
    n = len(z) // 2
    logits = z @ z.T / t
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(logits, targets)
def step():
    x0, x1 = next(it)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        z = model(torch.cat([x0, x1]))
    loss = nt_xent(z)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
'''

# both peer scripts end the same way: one untimed step, then `steps` timed ones
TIMED = r'''
step()
start = time.perf_counter()
for _ in range(steps):
    step()
print(json.dumps(dict(img_s=batch * steps / (time.perf_counter() - start))))
'''


def write_cifar(root, images, seed=0):
    """`images` generated 32 px images as CIFAR-10's data_batch_1..5 and test_batch pickles."""
    rng = np.random.default_rng(seed)
    x = np.stack([natural_image(rng, 32, 32) for _ in range(images)]).transpose(0, 3, 1, 2).reshape(images, -1)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({b"data": x, b"labels": [int(v) for v in rng.integers(0, 10, images)]}, f)


def last_json(out):
    return json.loads(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peers_python", required=True, help="python of a venv with lightly (never this repo's)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="timed steps per contender and round (after one)")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--workers", type=int, default=1, help="the peers' DataLoader workers")
    p.add_argument("--bf16", action="store_true", help="both under bf16 autocast (the repo's --amp true)")
    args = p.parse_args()
    root = tempfile.mkdtemp()
    write_cifar(root, 4 * args.batch_size)
    scripts = {}
    for name, text in (("lightly", LIGHTLY), ("simclr-pytorch", SIMCLR_PYTORCH)):
        scripts[name] = os.path.join(root, f"peer_{name.replace('-', '_')}.py")  # not lightly.py: it would shadow lightly
        with open(scripts[name], "w") as f:
            f.write(text + TIMED)
    repo = [sys.executable, "-m", "tools.benchmark", "step", "--no_record", "--steps", str(args.steps), "--data", "cifar10",
            "--data_root", root,
            "--problem", "simclr", "--arch", "resnet18", "--width", "1", "--cifar_stem", "true", "--batch_size",
            str(args.batch_size), "--head_hidden_dims", "512", "--temperature", "0.5", "--color_jitter_strength", "0.5",
            "--blur_prob", "0", "--opt", "sgd", "--lr", "0.06", "--workers", "0", "--amp", str(args.bf16).lower()]
    rates = {"repo": [], "lightly": [], "simclr-pytorch": []}
    for _ in range(args.rounds):
        out = subprocess.run(repo, cwd=ROOT, capture_output=True, text=True, check=True).stdout
        rates["repo"].append(last_json(out)["img_s"])
        for name, script in scripts.items():
            out = subprocess.run([args.peers_python, script, root, str(args.batch_size), str(args.steps),
                                  str(args.workers), str(int(args.bf16))], capture_output=True, text=True, check=True).stdout
            rates[name].append(last_json(out)["img_s"])
    precision = "bf16 autocast" if args.bf16 else "fp32"
    rows = [f"SimCLR, full RN18 (CIFAR stem), 32 px, batch {args.batch_size} x 2 crops, {precision}, interleaved rounds: "
            + ", ".join(f"{k} {' / '.join(f'{r:.1f}' for r in v)} img/s" for k, v in rates.items()),
            ", ".join(f"repo / {k}: {np.mean(rates['repo']) / np.mean(v):.2f}" for k, v in rates.items() if k != "repo")]
    for row in rows:
        print(row)
    import torch
    record(rows, torch.device("cpu"), "python benchmarks/simclr_peers.py " + " ".join(sys.argv[1:]))
    print(json.dumps(rates))


if __name__ == "__main__":
    main()
