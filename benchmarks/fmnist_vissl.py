"""This repo's NPID and DeepCluster-v2 next to VISSL 0.1.6's own loss modules, trained on the same Fashion-MNIST
recipe and probed the same way. Not part of the package and not run by CI; VISSL lives in its own virtual
environment, with the repo's own dependencies beside it:

    python3 -m venv /tmp/peers && /tmp/peers/bin/pip install -r requirements.txt scipy "setuptools<80"
    /tmp/peers/bin/pip install --no-deps vissl==0.1.6 classy_vision==0.7.0 fvcore iopath yacs tabulate termcolor portalocker
    /tmp/peers/bin/python benchmarks/fmnist_vissl.py --method npid [flags of configs/fmnist_npid.yaml]

(classy_vision 0.6.0 lacks the `bypass_checks` argument that VISSL 0.1.6's transforms register with.)

The run is the repo's training loop, backbone, head, crops, colour and optimiser on `configs/fmnist_<method>.yaml`
with the method's core replaced by VISSL's: for NPID, `NCELossWithMemory` (its memory bank and its
initialisation, its alias sampler of negatives, its Z, its update of the bank inside the forward); for
DeepCluster-v2, `DeepClusterV2Loss` (its memory bank filled by a first pass as VISSL's InitMemoryHook does,
refilled batch by batch, its k-means at every epoch's start as ClusterMemoryHook does, its targets and loss).
The repo's own bank and k-means stay unused. One process on the CPU only. Then `configs/fmnist_eval.yaml`
probes the backbone as it probes the repo's runs.
"""
import argparse
import json
import os
import sys
import types

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import torchvision.datasets.kinetics as _kinetics  # noqa: E402

_kinetics.Kinetics400 = _kinetics.Kinetics  # classy_vision 0.6 imports a class torchvision has since dropped
from vissl.config import AttrDict  # noqa: E402
import vissl.losses.deepclusterv2_loss as vissl_dcv2  # noqa: E402
from vissl.losses.nce_loss import NCELossWithMemory  # noqa: E402

import train  # noqa: E402
from models.dcv2 import DeepClusterV2  # noqa: E402
from models.npid import NPID  # noqa: E402

if not torch.cuda.is_available():
    torch.Tensor.cuda = lambda self, *a, **k: self  # VISSL's k-means allocates with .cuda(); one CPU process here
# one process: VISSL's unconditional broadcast of the first centroids from rank 0 is the identity
vissl_dcv2.dist = types.SimpleNamespace(broadcast=lambda tensor, src: tensor)


class VisslNPID(NPID):
    def __init__(self, args, data, device):
        super().__init__(args, data, device)
        if args.loss_type == "nce" and args.nce_z_momentum != 1:
            sys.exit("fmnist_vissl.py: VISSL fixes Z at the first batch; --nce_z_momentum must be 1")
        self.vissl = NCELossWithMemory(AttrDict(dict(
            norm_embedding=True, temperature=args.temperature, norm_constant=-1, update_mem_with_emb_index=-100,
            loss_type=args.loss_type, loss_weights=[1.0], num_train_samples=len(data.train),
            negative_sampling_params=dict(num_negatives=args.num_negatives, type="random"),
            memory_params=dict(memory_size=-1, embedding_dim=args.embedding_dim, momentum=args.memory_momentum,
                               norm_init=True, update_mem_on_forward=True))))
        self.memory_bank = self.vissl.nce_average.memory  # VISSL's bank, for NPID's own kNN in evaluate()

    def forward(self, batch, step):
        x, _, idx = batch
        return self.vissl(self.embed(self.augment(x)), idx), {}, {}

    def after_step(self, step, out):
        pass  # VISSL moved the bank inside its forward


class VisslDCv2(DeepClusterV2):
    def __init__(self, args, data, device):
        super().__init__(args, data, device)
        self.vissl = vissl_dcv2.DeepClusterV2Loss(AttrDict(dict(
            DROP_LAST=True, BATCHSIZE_PER_REPLICA=args.batch_size, num_crops=self.num_crops,
            temperature=args.temperature, num_clusters=args.num_clusters, kmeans_iters=args.kmeans_iters,
            memory_params=dict(crops_for_mb=args.crops_for_mb, embedding_dim=args.embedding_dim),
            num_train_samples=len(data.train))))
        self.filled = False

    def on_epoch_start(self, epoch, batches):
        if not self.filled:  # VISSL's InitMemoryHook: one pass before training, the model as it is
            inputs = (dict(data=[self.augment(x)], data_idx=[torch.cat([idx] * self.num_crops)])
                      for x, _, idx in batches.epoch(epoch))
            self.vissl.init_memory(inputs, lambda crop: [self.embed([crop])])
            self.filled = True
        self.vissl.cluster_memory()  # VISSL's ClusterMemoryHook, at every epoch's start

    def forward(self, batch, step):
        x, _, idx = batch
        return self.vissl(self.embed(self.augment(x)), torch.cat([idx] * self.num_crops)), {}, {}

    def after_step(self, step, out):
        pass  # VISSL wrote the bank inside its forward


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", choices=["npid", "dcv2"], required=True)
    p.add_argument("--root", default=os.path.join(ROOT, "logs"), help="exman root of the pretraining and the probe")
    args, flags = p.parse_known_args(argv)
    if "--dist" in flags:
        sys.exit("fmnist_vissl.py: one process only")
    train.PROBLEMS[args.method] = dict(npid=VisslNPID, dcv2=VisslDCv2)[args.method]
    name = f"{args.method}_vissl"
    folder, _ = train.main(["--config", f"configs/fmnist_{args.method}.yaml", "--root", args.root, "--name", name,
                            "--eval_freq", "-1"] + flags)
    probe, m = train.main(["--config", "configs/fmnist_eval.yaml", "--root", args.root, "--name", name + "_probe",
                           "--encoder_ckpt", folder])
    row = dict(method=args.method, peer="vissl 0.1.6", flags=flags, linear=m["test_acc1"], knn=m["knn_acc1"],
               pretraining=folder, probe=probe)
    print(json.dumps(row))
    return row


if __name__ == "__main__":
    main()
