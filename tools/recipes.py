"""The published recipes, value by value: python -m tools.recipes writes docs/recipes.md from the tables below.

Each entry is a config that names a published source, the source (repository, commit, files), the figure it quotes
with the probe config it needs, and one row a hyperparameter: the flag, its effective value here (what the config
resolves to, defaults included; tests/test_recipes.py checks every one), the source's value and where it was read.
Its `code` rows are the behaviours no value names, read in the source's code path (file and line at the commit named):
initialisation, padding, the loss's variant, when the schedule steps, steps per epoch, data order, which epoch the
figure reports, the order of the operations; a row with a `pin` is checked against this repo's code by the tests.
A row whose note is not empty is a difference, said in the config's header too.
"""
import os

import math

import numpy as np
import torch.nn as nn

import train
from data.loader import steps_per_epoch
from models.backbones import ResNet
from models.backbones import head_from_args
from utils.config import parse_args
from utils.optim import lr_at, scale_lr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "recipes.md")
BEGIN, END = "<!-- recipes: python -m tools.recipes -->", "<!-- end of recipes -->"

VISSL = "facebookresearch/vissl 09270ed2"
SWAV = "facebookresearch/swav 06b1b7c"
SIMCLR_PT = "AndrewAtanov/simclr-pytorch 85e5d54"
VISSL_SIMCLR = "configs/config/pretrain/simclr/simclr_8node_resnet.yaml"
LR = "vissl/utils/hydra_config.py"
BLUR_PIL = "PIL GaussianBlur in the loader; here a Gaussian kernel on the device"
WARMUP_STEP = "reaches the peak one step later"
IMAGENET = 1281167  # training images


def vissl_head_decay(args):
    """--linear_bn true --linear_bn_affine true on this probe's flags: γ and β undecayed, the Linear decayed."""
    import torch
    from utils.optim import param_groups
    head = nn.Sequential(nn.BatchNorm1d(8, affine=True), nn.Linear(8, 3))
    groups = param_groups(head, args.weight_decay, args.exclude_bias_and_norm, decay_bias=args.decay_bias)
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    norm, linear = head
    return (decay[id(norm.weight)] == decay[id(norm.bias)] == 0 and
            decay[id(linear.weight)] == decay[id(linear.bias)] == args.weight_decay > 0 and torch.is_tensor(linear.bias))


def derived(args):
    """Values computed from the flags: the absolute learning rates at the batch."""
    return {"peak lr": scale_lr(args.lr, args.batch_size, args.lr_scaling),
            "warm-up start lr": scale_lr(args.warmup_start_lr, args.batch_size, args.lr_scaling),
            "final lr": scale_lr(args.final_lr, args.batch_size, args.lr_scaling)}


def simclr_vissl(crops):
    rows = [
        ("batch_size", 4096, "64 x 8 x 8 = 4096", "DATA.TRAIN.BATCHSIZE_PER_REPLICA, DISTRIBUTED.NUM_NODES / NUM_PROC_PER_NODE", ""),
        ("epochs", 100, "100", "OPTIMIZER.num_epochs", ""),
        ("arch", "resnet50", "resnet, depth 50", "MODEL.TRUNK", ""),
        ("opt", "lars", "sgd + use_larc", "OPTIMIZER.name, use_larc", ""),
        ("momentum", 0.9, "0.9", "OPTIMIZER.momentum", ""),
        ("nesterov", False, "False", "OPTIMIZER.nesterov", ""),
        ("weight_decay", 1e-6, "1e-6", "OPTIMIZER.weight_decay", ""),
        ("exclude_bias_and_norm", False, "regularize_bn True, regularize_bias True", "OPTIMIZER", ""),
        ("larc_trust_coefficient", 0.001, "0.001", "OPTIMIZER.larc_config.trust_coefficient", ""),
        ("larc_clip", False, "False", "OPTIMIZER.larc_config.clip", ""),
        ("larc_eps", 1e-8, "1e-8", "OPTIMIZER.larc_config.eps", ""),
        ("lars_rule", "larc", "Apex LARC", "vissl/optimizers (use_larc)", ""),
        ("peak lr", 4.8, "0.3 x 4096 / 256 = 4.8", "param_schedulers.lr.auto_lr_scaling", ""),
        ("warm-up start lr", 0.6, "0.3 x (64 x 8) / 256 = 0.6 (the yaml's 0.6 is rewritten to it)",
         f"{LR}, resolve_linear_schedule", ""),
        ("warmup", 0.1, "lengths [0.1, 0.9]", "param_schedulers.lr.lengths", ""),
        ("lr_schedule", "cosine", "cosine 4.8 -> 0", "param_schedulers.lr.schedulers", ""),
        ("final lr", 0.0, "0", "schedulers[1].end_value", ""),
        ("cosine_time", "global", "interval_scaling [rescaled, fixed]", "param_schedulers.lr.interval_scaling", ""),
        ("lr_interval", "step", "step", "param_schedulers.lr.update_interval", ""),
        ("temperature", 0.1, "0.1", "LOSS.simclr_info_nce_loss.temperature", ""),
        ("embedding_dim", 128, "128", "MODEL.HEAD.PARAMS, mlp [2048, 128]", ""),
        ("head_hidden_dims", [-1], "[2048]", "MODEL.HEAD.PARAMS, mlp [2048, 2048]", ""),
        ("head_use_bn", False, "no BatchNorm (mlp default use_bn False)", "MODEL.HEAD.PARAMS", ""),
        ("head_use_relu", True, "use_relu True", "MODEL.HEAD.PARAMS", ""),
        ("sync_bn", True, "CONVERT_BN_TO_SYNC_BN True", "MODEL.SYNC_BN_CONFIG", ""),
        ("sync_bn_group_size", 8, "8", "MODEL.SYNC_BN_CONFIG.GROUP_SIZE", ""),
        ("amp", False, "USE_AMP False", "MODEL.AMP_PARAMS", ""),
        ("color_jitter_strength", None, "strength 1.0 (0.8, 0.8, 0.8, 0.2), p 0.8", "ImgPilColorDistortion",
         ""),
        ("grayscale_prob", 0.2, "0.2", "ImgPilColorDistortion", ""),
        ("blur_prob", None, "0.5", "ImgPilGaussianBlur.p", ""),
        ("blur_sigma", [0.1, 2.0], "radius_min 0.1, radius_max 2.0", "ImgPilGaussianBlur", BLUR_PIL),
        ("blur_padding", "replicate", "PIL's GaussianBlur repeats the edge pixel",
         "vissl/data/ssl_transforms/img_pil_gaussian_blur.py:35", ""),
        ("conv_init", "default", "PyTorch's layer default: conv1 and layer1-4 are rebuilt after torchvision's init loop",
         "vissl/models/trunks/resnext.py:99-136", ""),
        ("interpolation", "bilinear", "RandomResizedCrop default", "DATA.TRAIN.TRANSFORMS", ""),
        ("norm_std", None, "mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225] (the default here)", "Normalize", ""),
    ]
    return rows + crops


SIMCLR_VISSL_CROPS = [
    ("num_crops", [2], "ImgReplicatePil num_times 2", "DATA.TRAIN.TRANSFORMS", ""),
    ("size_crops", [-1], "224 (-1: the dataset's 224)", "RandomResizedCrop.size", ""),
    ("min_scale_crops", [0.08], "torchvision default (0.08, 1)", "RandomResizedCrop", ""),
]
MULTI_CROP = [
    ("num_crops", [2, 6], "--nmb_crops 2 6", "swav scripts/swav_400ep_pretrain.sh", "swav's crops, not VISSL's"),
    ("size_crops", [224, 96], "--size_crops 224 96", "swav scripts/swav_400ep_pretrain.sh", ""),
    ("min_scale_crops", [0.14, 0.05], "--min_scale_crops 0.14 0.05", "swav scripts/swav_400ep_pretrain.sh", ""),
    ("max_scale_crops", [1.0, 0.14], "--max_scale_crops 1. 0.14", "swav scripts/swav_400ep_pretrain.sh", ""),
]


def simclr_pytorch(batch, iters, lr, source):
    return [
        ("batch_size", batch, str(batch), f"{source}: batch_size", ""),
        ("iters", iters, str(iters), f"{source}: iters", ""),
        ("arch", "resnet50", "ResNet50", f"{source}: arch", ""),
        ("opt", "lars", "lars (SGD momentum 0.9 wrapped)", f"{source}: opt; models/ssl.py configure_optimizers", ""),
        ("lars_rule", "simclr", "eta |p| / |g + wd p|", "utils/lars_optimizer.py, LARS.step", ""),
        ("larc_trust_coefficient", 0.001, "0.001", "utils/lars_optimizer.py, trust_coefficient default", ""),
        ("momentum", 0.9, "0.9", "models/ssl.py, configure_optimizers", ""),
        ("weight_decay", 1e-6, "1e-06", f"{source}: weight_decay", ""),
        ("exclude_bias_and_norm", True, "names holding 'bn' or 'bias' skip wd and adaptation",
         "models/ssl.py, exclude_from_wd_and_adaptation", "by dimension here: the downsample BN scales are excluded too"),
        ("peak lr", lr, str(lr), f"{source}: lr", ""),
        ("warmup", 0.1, "0.1 of iters", f"{source}: warmup; utils/utils.py LinearWarmupAndCosineAnneal",
         "lr x step / W here, lr x (step + 1) / (W + 1) there"),
        ("warm-up start lr", 0.0, "lr / (W + 1)", "utils/utils.py, LinearWarmupAndCosineAnneal", ""),
        ("lr_schedule", "cosine", "warmup-anneal", f"{source}: lr_schedule", ""),
        ("cosine_time", "after_warmup", "cosine over T_max = iters - W", "utils/utils.py", ""),
        ("final lr", 0.0, "0", "utils/utils.py", ""),
        ("temperature", 0.1, "0.1", f"{source}: temperature", ""),
        ("num_crops", [2], "multiplier 2", f"{source}: multiplier", ""),
        ("min_scale_crops", [0.08], "scale_lower 0.08", f"{source}: scale_lower", ""),
        ("interpolation", "bicubic", "PIL.Image.BICUBIC", "models/ssl.py, SimCLR.transforms", ""),
        ("color_jitter_strength", 1.0, "color_dist_s 1.0", f"{source}: color_dist_s", ""),
        ("grayscale_prob", 0.2, "RandomGrayscale(p=0.2)", "utils/datautils.py, get_color_distortion", ""),
        ("blur_prob", 0.5, "GaussianBlur(im_size // 10, 0.5)", "models/ssl.py, SimCLR.transforms", ""),
        ("blur_sigma", [0.2, 2.0], "np.random.uniform(0.2, 2)", "utils/datautils.py, GaussianBlur", ""),
        ("blur_padding", "zeros", "Conv2d(..., padding=[kernel_size // 2, 0]): zeros", "utils/datautils.py:51", ""),
        ("norm_mean", [0.0, 0.0, 0.0], "no Normalize (ToTensor, Clip)", "models/ssl.py, SimCLR.transforms", ""),
        ("norm_std", [1.0, 1.0, 1.0], "no Normalize", "models/ssl.py", ""),
        ("head_hidden_dims", [-1], "fc1 2048 -> 2048, bias False, bn1, relu1", "models/encoder.py, EncodeProject", ""),
        ("head_out_bn", True, "fc2 bias False, then BatchNorm1dNoBias(128)", "models/encoder.py", ""),
        ("sync_bn", True, "sync_bn true", f"{source}: sync_bn", ""),
        ("sync_bn_group_size", 0, "nn.SyncBatchNorm.convert_sync_batchnorm (all processes)", "models/ssl.py", ""),
        ("amp", False, "none", "train.py", ""),
    ]


def swav_common(script):
    s = f"scripts/{script}"
    return [
        ("arch", "resnet50", "--arch resnet50", s, ""),
        ("opt", "lars", "SGD(momentum 0.9) + LARC(trust 0.001, clip False)", "main_swav.py / main_deepclusterv2.py", ""),
        ("lars_rule", "larc", "apex LARC", "main_*.py", ""),
        ("larc_eps", 1e-8, "LARC's default eps 1e-8", "apex.parallel.LARC", ""),
        ("exclude_bias_and_norm", False, "SGD(model.parameters(), weight_decay=wd)", "main_*.py", ""),
        ("weight_decay", 1e-6, "--wd 0.000001", s, ""),
        ("momentum", 0.9, "0.9", "main_*.py", ""),
        ("temperature", 0.1, "--temperature 0.1", s, ""),
        ("embedding_dim", 128, "--feat_dim 128", s, ""),
        ("head_hidden_dims", [2048], "hidden_mlp 2048 (Linear, BatchNorm1d, ReLU, Linear)", "src/resnet50.py", ""),
        ("head_use_bn", True, "BatchNorm1d(hidden_mlp)", "src/resnet50.py", ""),
        ("cosine_time", "after_warmup", "cosine over the steps after the warm-up", "main_*.py, lr_schedule", ""),
        ("norm_std", [0.228, 0.224, 0.225], "std [0.228, 0.224, 0.225]", "src/multicropdataset.py", ""),
        ("color_jitter_strength", None, "get_color_distortion(s=1.0): (0.8, 0.8, 0.8, 0.2), p 0.8", "src/multicropdataset.py", ""),
        ("grayscale_prob", 0.2, "RandomGrayscale(p=0.2)", "src/multicropdataset.py", ""),
        ("blur_prob", None, "PILRandomGaussianBlur p 0.5 (the default here for 224 px)", "src/multicropdataset.py", ""),
        ("blur_sigma", [0.1, 2.0], "radius 0.1 - 2.0", "src/multicropdataset.py", BLUR_PIL),
        ("blur_padding", "replicate", "PIL's GaussianBlur repeats the edge pixel", "src/multicropdataset.py:82", ""),
        ("interpolation", "bilinear", "RandomResizedCrop default", "src/multicropdataset.py", ""),
    ]


SWAV_400 = swav_common("swav_400ep_pretrain.sh") + [
    ("batch_size", 4096, "--batch_size 64 on 64 GPUs", "scripts/swav_400ep_pretrain.sh", ""),
    ("epochs", 400, "--epochs 400", "scripts/swav_400ep_pretrain.sh", ""),
    ("peak lr", 4.8, "--base_lr 4.8", "scripts/swav_400ep_pretrain.sh", ""),
    ("final lr", 0.0048, "--final_lr 0.0048", "scripts/swav_400ep_pretrain.sh", ""),
    ("warmup", 0.025, "--warmup_epochs 10 of 400", "scripts/swav_400ep_pretrain.sh", WARMUP_STEP),
    ("warm-up start lr", 0.3, "--start_warmup 0.3", "scripts/swav_400ep_pretrain.sh", ""),
    ("num_crops", [2, 6], "--nmb_crops 2 6", "scripts/swav_400ep_pretrain.sh", ""),
    ("size_crops", [224, 96], "--size_crops 224 96", "scripts/swav_400ep_pretrain.sh", ""),
    ("min_scale_crops", [0.14, 0.05], "--min_scale_crops 0.14 0.05", "scripts/swav_400ep_pretrain.sh", ""),
    ("max_scale_crops", [1.0, 0.14], "--max_scale_crops 1. 0.14", "scripts/swav_400ep_pretrain.sh", ""),
    ("crops_for_assign", [0, 1], "--crops_for_assign 0 1", "scripts/swav_400ep_pretrain.sh", ""),
    ("num_prototypes", [3000], "--nmb_prototypes 3000", "scripts/swav_400ep_pretrain.sh", ""),
    ("epsilon", 0.05, "--epsilon 0.05", "scripts/swav_400ep_pretrain.sh", ""),
    ("sinkhorn_iterations", 3, "--sinkhorn_iterations 3", "scripts/swav_400ep_pretrain.sh", ""),
    ("queue_length", 0, "--queue_length 0", "scripts/swav_400ep_pretrain.sh", ""),
    ("freeze_prototypes_niters", 313, "--freeze_prototypes_niters 313", "scripts/swav_400ep_pretrain.sh", ""),
    ("amp", True, "--use_fp16 true (Apex O1)", "scripts/swav_400ep_pretrain.sh", "torch.autocast fp16 + GradScaler"),
    ("amp_dtype", "fp16", "fp16", "scripts/swav_400ep_pretrain.sh", ""),
    ("sync_bn", True, "--sync_bn apex", "scripts/swav_400ep_pretrain.sh", ""),
    ("sync_bn_group_size", 8, "syncbn_process_group_size 8", "main_swav.py default", ""),
]
SWAV_256 = swav_common("swav_200ep_bs256_pretrain.sh") + [
    ("batch_size", 256, "--batch_size 64 on 4 GPUs", "scripts/swav_200ep_bs256_pretrain.sh", ""),
    ("epochs", 200, "--epochs 200", "scripts/swav_200ep_bs256_pretrain.sh", ""),
    ("peak lr", 0.6, "--base_lr 0.6", "scripts/swav_200ep_bs256_pretrain.sh", ""),
    ("final lr", 0.0006, "--final_lr 0.0006", "scripts/swav_200ep_bs256_pretrain.sh", ""),
    ("warmup", 0.0, "--warmup_epochs 0", "scripts/swav_200ep_bs256_pretrain.sh", ""),
    ("num_crops", [2, 6], "--nmb_crops 2 6", "scripts/swav_200ep_bs256_pretrain.sh", ""),
    ("size_crops", [224, 96], "--size_crops 224 96", "scripts/swav_200ep_bs256_pretrain.sh", ""),
    ("min_scale_crops", [0.14, 0.05], "--min_scale_crops 0.14 0.05", "scripts/swav_200ep_bs256_pretrain.sh", ""),
    ("num_prototypes", [3000], "--nmb_prototypes 3000", "scripts/swav_200ep_bs256_pretrain.sh", ""),
    ("epsilon", 0.05, "--epsilon 0.05", "scripts/swav_200ep_bs256_pretrain.sh", ""),
    ("queue_length", 3840, "--queue_length 3840", "scripts/swav_200ep_bs256_pretrain.sh", ""),
    ("epoch_queue_starts", 15, "--epoch_queue_starts 15", "scripts/swav_200ep_bs256_pretrain.sh", ""),
    ("freeze_prototypes_niters", 5005, "--freeze_prototypes_niters 5005", "scripts/swav_200ep_bs256_pretrain.sh", ""),
    ("amp", True, "--use_fp16 true (Apex O1)", "scripts/swav_200ep_bs256_pretrain.sh", "torch.autocast fp16 + GradScaler"),
    ("amp_dtype", "fp16", "fp16", "scripts/swav_200ep_bs256_pretrain.sh", ""),
    ("sync_bn_group_size", 0, "--sync_bn pytorch (one group)", "scripts/swav_200ep_bs256_pretrain.sh", ""),
]


def dcv2(script, crops):
    s = f"scripts/{script}"
    return swav_common(script) + [
        ("batch_size", 4096, "--batch_size 64 on 64 GPUs", s, ""),
        ("epochs", 400, "--epochs 400", s, ""),
        ("peak lr", 4.8, "--base_lr 4.8", s, ""),
        ("final lr", 0.0048, "--final_lr 0.0048", s, ""),
        ("warmup", 0.025, "--warmup_epochs 10 of 400", s, WARMUP_STEP),
        ("warm-up start lr", 0.3, "--start_warmup 0.3", s, ""),
        ("num_clusters", [3000, 3000, 3000], "--nmb_prototypes 3000 3000 3000", s, ""),
        ("kmeans_iters", 10, "nmb_kmeans_iters=10", "main_deepclusterv2.py, cluster_memory", ""),
        ("crops_for_mb", [0, 1], "--crops_for_assign 0 1", s, ""),
        ("amp", False, "no fp16 option (fp32)", "main_deepclusterv2.py", ""),
        ("sync_bn_group_size", 8, "--sync_bn apex, syncbn_process_group_size 8", s, ""),
    ] + crops


def npid_vissl(source, extra):
    return [
        ("arch", "resnet50", "resnet, depth 50", f"{source}: MODEL.TRUNK", ""),
        ("opt", "sgd", "sgd", f"{source}: OPTIMIZER.name", ""),
        ("momentum", 0.9, "0.9", "OPTIMIZER.momentum", ""),
        ("nesterov", False, "False", "OPTIMIZER.nesterov", ""),
        ("weight_decay", 1e-4, "0.0001", "OPTIMIZER.weight_decay", ""),
        ("exclude_bias_and_norm", True, "regularize_bn False", "OPTIMIZER.regularize_bn", ""),
        ("decay_bias", True, "regularize_bias True", "OPTIMIZER.regularize_bias", ""),
        ("temperature", 0.07, "0.07", "LOSS.nce_loss_with_memory.temperature", ""),
        ("memory_momentum", 0.5, "0.5", "nce_loss_with_memory.memory_params.momentum", ""),
        ("embedding_dim", 128, "128", "MODEL.HEAD.PARAMS mlp [2048, 128]", ""),
        ("head_hidden_dims", [], "none: one Linear", "MODEL.HEAD.PARAMS", ""),
        ("loss_type", "nce", "nce_loss_with_memory", "LOSS.name", ""),
        ("nce_eps", float(np.finfo(np.float32).eps), "float32 machine epsilon, 1.1920929e-07 (lemniscate.pytorch: 1e-7)",
         "vissl/losses/nce_loss.py:457", ""),
        ("min_scale_crops", [0.08], "RandomResizedCrop 224, default scale", "DATA.TRAIN.TRANSFORMS", ""),
        ("color_jitter", [0.4, 0.4, 0.4, 0.4], "ColorJitter 0.4, 0.4, 0.4, 0.4", "DATA.TRAIN.TRANSFORMS",
         "after the crop here, before it there"),
        ("jitter_prob", 1.0, "always", "DATA.TRAIN.TRANSFORMS", ""),
        ("grayscale_prob", 0.0, "none", "DATA.TRAIN.TRANSFORMS", ""),
        ("blur_prob", 0.0, "none", "DATA.TRAIN.TRANSFORMS", ""),
        ("norm_std", None, "std [0.229, 0.224, 0.225] (the default here)", "Normalize", ""),
        ("conv_init", "default", "PyTorch's layer default: conv1 and layer1-4 are rebuilt after torchvision's init loop",
         "vissl/models/trunks/resnext.py:99-136", ""),
        ("memory_init", "random", "U[-s, s] rows, s = 1/sqrt(128/3), L2-normalised (norm_init True)",
         "vissl/losses/nce_loss.py:313-320", ""),
    ] + extra


def vissl_warmup_matches(args):
    """VISSL's composite schedule (fvcore: linear over the first `warmup` of the run's progress, then a cosine at the
    overall progress, interval_scaling [rescaled, fixed]) against lr_at, at every step."""
    per_epoch = steps_per_epoch(IMAGENET, args.batch_size)
    total = per_epoch * args.epochs
    peak, start = scale_lr(args.lr, args.batch_size, "linear"), scale_lr(args.warmup_start_lr, args.batch_size, "linear")
    for step in range(total):
        where = step / total
        theirs = (start + (peak - start) * where / args.warmup if where < args.warmup
                  else 0.5 * peak * (1 + math.cos(math.pi * where)))
        if abs(theirs - lr_at(step, total, per_epoch, args)) > 1e-9:
            return False
    return True


def per_epoch_is(steps):
    return lambda args: steps_per_epoch(IMAGENET, args.batch_size) == steps


def no_bias_before_batchnorm(args):
    head = head_from_args(args, 2048)
    return isinstance(head[1], nn.BatchNorm1d) and head[0].bias is None


def simclr_vissl_code(multicrop):
    s = "vissl/"
    rows = [
        ("zero-init residual", "none", "ZERO_INIT_RESIDUAL False; torchvision's would reach only the layers VISSL "
         "discards", f"{s}models/trunks/resnext.py:99-136; vissl/config/defaults.yaml:666", ""),
        ("head init", "PyTorch's Linear default", "PyTorch's Linear default, scaled by PARAMS_MULTIPLIER 1.0",
         f"{s}models/heads/mlp.py:89, 107", ""),
        ("warm-up end", "lr x step / W: (W - 1) / W of the way at step W - 1", "fvcore's linear over progress "
         "[0, 0.1), rescaled: the same lr at every step", "param_schedulers (fvcore CompositeParamScheduler)", "",
         vissl_warmup_matches),
        ("when the lr changes", "every step", "update_interval: step", "param_schedulers.lr.update_interval", ""),
        ("steps per epoch", "312 (every batch full)", "DROP_LAST True: 20019 images a GPU, 312 full batches of 64",
         "DATA.TRAIN.DROP_LAST; vissl/data/__init__.py:319", "", per_epoch_is(312)),
        ("data order", "a new permutation every epoch", "DistributedSampler.set_epoch(phase_idx)",
         f"{s}hooks/state_update_hooks.py:104", ""),
        ("reported epoch", "the last (epoch 100)", "model_final_checkpoint_phase99", "MODEL_ZOO.md, SimCLR", ""),
        ("operation order", "crop, flip, colour jitter (ops in a random order), grayscale, blur, normalise",
         "RandomResizedCrop, flip, ImgPilColorDistortion (jitter, grayscale), ImgPilGaussianBlur, ToTensor, Normalize",
         "DATA.TRAIN.TRANSFORMS", ""),
    ]
    if multicrop:
        rows.append(("loss", "every pair of an image's crops a positive; negatives: every crop of every other image "
                     "on every GPU", "multicrop_simclr_info_nce_loss: the same pairs, negatives only the crops of the "
                     "other images on the same GPU (neg_mask zero for other ranks)",
                     f"{s}losses/multicrop_simclr_info_nce_loss.py:78-100",
                     "global negatives here: the same run on any number of GPUs"))
    else:
        rows.append(("loss", "NT-Xent: 2 crops, negatives every crop of every other image on every GPU",
                     "simclr_info_nce_loss: the same masks", f"{s}losses/simclr_info_nce_loss.py:93-114", ""))
    return rows


def simclr_pytorch_steps(args):
    """simclr-pytorch's epoch: ceil(N / W) images a GPU (DistributedSampler pads), full batches of batch / W."""
    theirs = {math.ceil(IMAGENET / w) // (args.batch_size // w) for w in (4, 8, 16, 32, 64)}
    return theirs == {steps_per_epoch(IMAGENET, args.batch_size)}


def simclr_pytorch_code(batch):
    return [
        ("initialisation", "torchvision's (kaiming_normal fan_out convolutions, PyTorch's Linear default)",
         "torchvision's: reset_parameters() runs before the encoder is attached (self.model), so it reaches no layer",
         "models/ssl.py:144-145", ""),
        ("head", "Linear without bias, BatchNorm, ReLU, Linear without bias, scale-only BatchNorm",
         "fc1 (bias False), bn1, relu1, fc2 (bias False), BatchNorm1dNoBias", "models/encoder.py", "",
         no_bias_before_batchnorm),
        ("blur", "after the colour distortion on [0, 1] pixels, 23 px kernel at 224 px, zero border",
         "GaussianBlur(224 // 10) after ToTensor: radius 11, a 23 px kernel, Conv2d zero padding",
         "models/ssl.py:265; utils/datautils.py:43-59", ""),
        ("when the lr changes", "every step", "scheduler.step() after every optimiser step", "train.py:220", ""),
        ("steps per epoch", f"{IMAGENET // batch} (every batch full)",
         "DistributedSampler pads each GPU's share to ceil(N / W); MultiplyBatchSampler drop_last=True: the same "
         "count on 4 to 64 GPUs", "models/ssl.py:216, 230", "", simclr_pytorch_steps),
        ("loss", "NT-Xent over the global batch: each crop against every other crop on every GPU",
         "NTXent: every rank computes the whole global loss through diffdist's all_gather; the gradients the same",
         "models/losses.py:52-85", ""),
        ("data order", "a new permutation every epoch", "DistributedSampler.set_epoch(step) at every step "
         "(SSLTrainer.train_step), so each epoch's iterator draws a new permutation", "models/ssl.py:200-204; "
         "train.py:173", ""),
        ("reported epoch", "the last step", "the final checkpoint.pth.tar", "train.py:228", ""),
    ]


def swav_code(per_epoch, script, dcv2=False):
    rows = [
        ("stem padding", "conv1 pads 3 px of zeros", "ConstantPad2d(1) then conv1 with padding 2: the same zeros",
         "src/resnet50.py:157, 176", "", lambda args: ResNet("resnet50").conv1.padding == (3, 3)),
        ("initialisation", "kaiming_normal fan_out convolutions, BatchNorm 1 and 0, no zero-init residual",
         "the same", "src/resnet50.py:219-232", ""),
        ("head", "Linear without bias, BatchNorm, ReLU, Linear", "Linear(2048, 2048) with a bias, BatchNorm1d, ReLU, "
         "Linear", "src/resnet50.py:206", "no bias before the BatchNorm here: it cancels any constant, the outputs are "
         "the same", no_bias_before_batchnorm),
        ("when the lr changes", "every step", "lr_schedule[iteration] set before every step",
         "main_swav.py:275" if not dcv2 else "main_deepclusterv2.py:263", ""),
        ("steps per epoch", f"{per_epoch} (every batch full)", f"drop_last=True: {per_epoch} full batches",
         "main_swav.py:145" if not dcv2 else "main_deepclusterv2.py:137", "", per_epoch_is(per_epoch)),
        ("data order", "a new permutation every epoch", "train_loader.sampler.set_epoch(epoch)",
         "main_swav.py:223" if not dcv2 else "main_deepclusterv2.py:210", ""),
        ("reported epoch", "the last", f"the README's checkpoint of {script}: the last epoch's", "README.md", ""),
        ("operation order", "crop, flip, colour jitter (ops in a random order), grayscale, blur, normalise",
         "RandomResizedCrop, RandomHorizontalFlip, get_color_distortion, PILRandomGaussianBlur, ToTensor, Normalize",
         "src/multicropdataset.py:42-52", ""),
        ("blur kernel", "10% of the crop's side (9 px at 96 px: cut at 2 sigma for sigma 2)",
         "PIL's box approximation of the Gaussian, about 3 sigma wide at any crop size", "src/multicropdataset.py:82",
         BLUR_PIL),
    ]
    if dcv2:
        rows += [
            ("memory bank", "one pass of the initial network (training mode, a forward per crop) over epoch 0's "
             "crops, then each step's embeddings", "init_memory (a forward per crop), then local_memory_embeddings "
             "written after each step", "main_deepclusterv2.py:317-342, 289-292", ""),
            ("the first pass's crops", "the very crops epoch 0 then trains on (a crop is a function of the seed, the "
             "epoch and the image)", "fresh draws: the loader's transforms are random at every pass",
             "main_deepclusterv2.py:201, 317-332", "the same crops twice here, two draws there"),
            ("k-means", "start: K rows of rank 0's bank; 10 rounds; head h clusters bank h mod 2; an empty cluster "
             "keeps its centroid", "the same", "main_deepclusterv2.py:345-411", ""),
            ("prototypes", "the centroids, never trained", "--freeze_prototypes_niters 300000 in the script, past "
             "the run's 124,800 steps (the parser's default: 1e10)", f"scripts/{script}; main_deepclusterv2.py:76", ""),
            ("images in no bank", "left out of the loss (ignore_index -100)", "the same", "main_deepclusterv2.py:249", ""),
        ]
    else:
        rows += [
            ("prototype scores under --amp", "float32: the prototypes' matmul runs outside autocast, on the float32 "
             "embeddings (and the queue's)", "float16: Apex O1 runs every matmul in half precision, so Sinkhorn's "
             "exp(scores / 0.05) and the loss's log-softmax start from scores rounded to 11 bits",
             "main_swav.py:298-313; src/resnet50.py:305", "scores in float32 here"),
            ("prototypes", "normalised before every step; no update for freeze_prototypes_niters steps",
             "the same (their gradients set to None)", "main_swav.py:279-281, 325-328", ""),
            ("queue", "joins Sinkhorn once full; this step's embeddings enter it after the codes are computed",
             "the same", "main_swav.py:295-304", ""),
        ]
    return rows


def npid_code(gpus, per_gpu):
    steps = math.ceil(math.ceil(IMAGENET / gpus) / per_gpu)
    return [
        ("bank before training", f"the mean of {gpus} unit-row banks (rows of norm about {gpus ** -0.5:.2f})",
         f"each of {gpus} GPUs draws its bank (torch.rand, normalised); all_reduce_mean at the first forward",
         "vissl/losses/nce_loss.py:313-320, 183", ""),
        ("NCE's Z", "N x the mean of exp(s / T) over the first batch's B x (K + 1) scores, every rank's; then fixed",
         "compute_partition_function: the same", "vissl/losses/nce_loss.py:262, 274-285", ""),
        ("memory update", "normalize(m M[y] + (1 - m) v), every rank's rows, with the scores taken before it",
         "update_memory: the same, in the forward after the scores", "vissl/losses/nce_loss.py:331-352", ""),
        ("head init", "PyTorch's Linear default", "PyTorch's Linear default", "vissl/models/heads/mlp.py:89", ""),
        ("steps per epoch", f"{steps - 1} full batches of {gpus * per_gpu}",
         f"DROP_LAST False: {steps}, the last with {math.ceil(IMAGENET / gpus) - (steps - 1) * per_gpu} images a GPU",
         "vissl/config/defaults.yaml:249", f"{steps - 1} here: the images left over join no batch that epoch",
         per_epoch_is(steps - 1)),
        ("data order", "a new permutation every epoch", "DistributedSampler.set_epoch(phase_idx)",
         "vissl/hooks/state_update_hooks.py:104", ""),
        ("reported epoch", "the last", "model_final_checkpoint_phase199 / phase799", "MODEL_ZOO.md, NPID", ""),
    ]


NPID_SRC = "configs/config/pretrain/npid/npid_8gpu_resnet.yaml"
NPIDPP_SRC = "configs/config/pretrain/npid/npid++_4nodes_resnet.yaml"

RECIPES = [
    dict(config="configs/imagenet_simclr_bs4096_ep100.yaml", source=f"{VISSL}, {VISSL_SIMCLR}",
         published="64.4% top-1, RN50 100 epochs (VISSL MODEL_ZOO.md)", probe="configs/imagenet_eval_vissl.yaml",
         rows=simclr_vissl(SIMCLR_VISSL_CROPS), code=simclr_vissl_code(multicrop=False)),
    dict(config="configs/imagenet_simclr_bs4096_ep100_2x224_6x96.yaml",
         source=f"{VISSL}, {VISSL_SIMCLR}, with {SWAV} scripts/swav_400ep_pretrain.sh's crops",
         published="none quoted", probe="configs/imagenet_eval_vissl.yaml", rows=simclr_vissl(MULTI_CROP),
         code=simclr_vissl_code(multicrop=True)),
    dict(config="configs/imagenet_simclr_bs512_ep100.yaml",
         source=f"{SIMCLR_PT}, configs/imagenet_train_epochs100_bs512.yaml", published="60.14% top-1 (README)",
         probe="configs/imagenet_eval_simclr_pytorch.yaml",
         rows=simclr_pytorch(512, 250200, 0.6, "configs/imagenet_train_epochs100_bs512.yaml"), code=simclr_pytorch_code(512)),
    dict(config="configs/imagenet_simclr_bs2048_ep200.yaml",
         source=f"{SIMCLR_PT}, configs/imagenet_train_epochs200_bs2k.yaml", published="65.58% top-1 (README)",
         probe="configs/imagenet_eval_simclr_pytorch.yaml",
         rows=simclr_pytorch(2048, 125100, 2.4, "configs/imagenet_train_epochs200_bs2k.yaml"), code=simclr_pytorch_code(2048)),
    dict(config="configs/imagenet_simclr_bs2048_ep600.yaml",
         source=f"{SIMCLR_PT}, configs/imagenet_train_epochs600_bs2k.yaml", published="67.84% top-1 (README)",
         probe="configs/imagenet_eval_simclr_pytorch.yaml",
         rows=simclr_pytorch(2048, 375300, 2.4, "configs/imagenet_train_epochs600_bs2k.yaml"), code=simclr_pytorch_code(2048)),
    dict(config="configs/imagenet_swav_bs4096_ep400.yaml", source=f"{SWAV}, scripts/swav_400ep_pretrain.sh",
         published="74.6% top-1 (README)", probe="configs/imagenet_eval.yaml", rows=SWAV_400,
         code=swav_code(312, "swav_400ep_pretrain.sh")),
    dict(config="configs/imagenet_swav_bs256_ep200_queue.yaml", source=f"{SWAV}, scripts/swav_200ep_bs256_pretrain.sh",
         published="72.7% top-1 (README)", probe="configs/imagenet_eval.yaml", rows=SWAV_256,
         code=swav_code(5004, "swav_200ep_bs256_pretrain.sh")),
    dict(config="configs/imagenet_dcv2_2x224.yaml", source=f"{SWAV}, scripts/deepclusterv2_400ep_2x224_pretrain.sh",
         published="70.2% top-1 (README)", probe="configs/imagenet_eval.yaml",
         rows=dcv2("deepclusterv2_400ep_2x224_pretrain.sh", [
             ("num_crops", [2], "--nmb_crops 2", "scripts/deepclusterv2_400ep_2x224_pretrain.sh", ""),
             ("size_crops", [224], "--size_crops 224", "scripts/deepclusterv2_400ep_2x224_pretrain.sh", ""),
             ("min_scale_crops", [0.08], "--min_scale_crops 0.08", "scripts/deepclusterv2_400ep_2x224_pretrain.sh", "")]),
         code=swav_code(312, "deepclusterv2_400ep_2x224_pretrain.sh", dcv2=True)),
    dict(config="configs/imagenet_dcv2_2x160_4x96.yaml", source=f"{SWAV}, scripts/deepclusterv2_400ep_pretrain.sh",
         published="74.3% top-1 (README)", probe="configs/imagenet_eval.yaml",
         rows=dcv2("deepclusterv2_400ep_pretrain.sh", [
             ("num_crops", [2, 4], "--nmb_crops 2 4", "scripts/deepclusterv2_400ep_pretrain.sh", ""),
             ("size_crops", [160, 96], "--size_crops 160 96", "scripts/deepclusterv2_400ep_pretrain.sh", ""),
             ("min_scale_crops", [0.08, 0.05], "--min_scale_crops 0.08 0.05", "scripts/deepclusterv2_400ep_pretrain.sh", ""),
             ("max_scale_crops", [1.0, 0.14], "--max_scale_crops 1. 0.14", "scripts/deepclusterv2_400ep_pretrain.sh", "")]),
         code=swav_code(312, "deepclusterv2_400ep_pretrain.sh", dcv2=True)),
    dict(config="configs/imagenet_npid.yaml", source=f"{VISSL}, {NPID_SRC}", published="52.73% top-1 (VISSL MODEL_ZOO.md)",
         probe="configs/imagenet_eval_vissl.yaml", rows=npid_vissl(NPID_SRC, [
             ("batch_size", 256, "32 x 8", "DATA.TRAIN.BATCHSIZE_PER_REPLICA, NUM_PROC_PER_NODE", ""),
             ("epochs", 200, "200", "OPTIMIZER.num_epochs", ""),
             ("peak lr", 0.03, "0.03 x 256 / 256", "param_schedulers.lr", ""),
             ("lr_schedule", "multistep", "multistep [0.03, 0.003, 0.0003]", "param_schedulers.lr", ""),
             ("lr_steps", [120, 160], "milestones [120, 160]", "param_schedulers.lr.milestones", ""),
             ("num_negatives", 4096, "4096", "negative_sampling_params.num_negatives", ""),
             ("memory_init_mean_of", 8, "each of the 8 GPUs draws a bank; all_reduce_mean before the first step",
              "vissl/losses/nce_loss.py:183", "")]), code=npid_code(8, 32)),
    dict(config="configs/imagenet_npid++.yaml", source=f"{VISSL}, {NPIDPP_SRC}", published="56.68% top-1 (VISSL MODEL_ZOO.md)",
         probe="configs/imagenet_eval_vissl.yaml", rows=npid_vissl(NPIDPP_SRC, [
             ("batch_size", 1024, "32 x 8 x 4", "DATA.TRAIN.BATCHSIZE_PER_REPLICA, DISTRIBUTED", ""),
             ("epochs", 800, "800", "OPTIMIZER.num_epochs", ""),
             ("peak lr", 0.12, "0.12", "param_schedulers.lr.start_value", ""),
             ("final lr", 0.00012, "0.00012", "param_schedulers.lr.end_value", ""),
             ("lr_schedule", "cosine", "cosine", "param_schedulers.lr.name", ""),
             ("lr_interval", "epoch", "update_interval: epoch", "param_schedulers.lr.update_interval", ""),
             ("num_negatives", 32000, "32000", "negative_sampling_params.num_negatives", ""),
             ("memory_init_mean_of", 32, "each of the 32 GPUs draws a bank; all_reduce_mean before the first step",
              "vissl/losses/nce_loss.py:183", "")]), code=npid_code(32, 32)),
]


SWAV_EVAL = "eval_linear.py"
VISSL_EVAL = "configs/config/benchmark/linear_image_classification/imagenet1k/eval_resnet_8gpu_transfer_in1k_linear.yaml"
SIMCLR_PT_EVAL = "configs/imagenet_eval.yaml"
SIMCLR_TF = "google-research/simclr 383d414"


def simclr_steps(args):
    """SimCLR's get_train_steps at its 1% and 10% lists: 188 and 939 steps."""
    from data.loader import total_steps
    return (total_steps(args, 12811) == 188 and
            total_steps(args.replace(epochs=30, label_fraction=0.1), 128116) == 939)


def finetune_head(args):
    """The fine-tuning head this config builds starts at zero."""
    from models.finetune import FineTune
    import types
    train_set = types.SimpleNamespace(image_size=32, channels=3, num_classes=10, mean=(0.5,) * 3, std=(0.5,) * 3)
    encoder = types.SimpleNamespace(spec=dict(arch="resnet18", width=0.125, cifar_stem=True, stem_stride=1,
                                              in_channels=3), weights=None)
    head = FineTune(args, train_set, "cpu", encoder).classifier
    return not head.weight.any() and not head.bias.any()
FINETUNE = dict(
    config="configs/imagenet_finetune.yaml", source=f"{SIMCLR_TF}, model_util.py",
    published="48.3 / 65.6 top-1 at 1% / 10% of the labels (SimCLR paper, Table 7)",
    rows=[
        ("batch_size", 4096, "4096", "paper appendix B.5 (--train_batch_size)", ""),
        ("epochs", 60, "60 (1%; 30 at 10%)", "paper appendix B.5 (--train_epochs)", ""),
        ("peak lr", 0.8, "0.05 x 4096 / 256", "model_util.py:59-66 (learning_rate_scaling linear)", ""),
        ("nesterov", True, "MomentumOptimizer(use_nesterov=True)", "model_util.py:88-90", ""),
        ("momentum", 0.9, "0.9", "run.py (--momentum)", ""),
        ("weight_decay", 0.0, "0 (no regulariser in fine-tuning)", "paper appendix B.5", ""),
        ("warmup", 0.0, "--warmup_epochs 0", "model_util.py:61-62", ""),
        ("lr_schedule", "cosine", "tf.train.cosine_decay from the first step", "model_util.py:74-80", ""),
        ("label_fraction", 0.01, "imagenet_subsets/1percent.txt (12,811 images)", "README.md", "see the header"),
        ("step_count", "simclr", "num_examples x train_epochs // train_batch_size + 1", "model_util.py:53-56", ""),
        ("head_init", "zeros", "--zero_init_logits_layer=True (README); linear_layer's N(0, 0.01) without it",
         "model.py:170-181; model_util.py:129-134", ""),
        ("sync_bn", True, "global_bn True: statistics over every core", "resnet.py:116; run.py (--global_bn)", ""),
        ("sync_bn_group_size", 0, "every core", "resnet.py:116-125", ""),
        ("interpolation", "bicubic", "tf.image.resize_bicubic", "data_util.py:325", "see the header"),
        ("min_scale", 0.08, "area_range (0.08, 1.0)", "data_util.py:304-325", ""),
        ("draft_decode", False, "tf.image.decode_jpeg, in full", "data_util.py", ""),
    ],
    code=[
        ("steps", "floor(N x epochs / batch) + 1: 188 at 1%, 939 at 10%", "get_train_steps", "model_util.py:53-56", "",
         simclr_steps),
        ("head init", "zeros", "zeros when zero_init_logits_layer (the README's commands)", "model.py:170-181", "",
         finetune_head),
        ("BatchNorm", "SyncBatchNorm over every process (GPUs)", "tf.tpu cross-replica BatchNormalization", "resnet.py:116",
         "on CPU processes it is per process"),
        ("crop resize", "PIL bicubic, antialiased", "tf.image.resize_bicubic, no antialiasing", "data_util.py:325",
         "another low-pass at a downscale"),
        ("data order", "a permutation each epoch in full batches", "a shuffled stream repeated across epochs",
         "data.py (build_input_fn)", "the last partial batch of each epoch left out here"),
        ("test view", "Resize(256) + CenterCrop(224), bicubic", "center crop of 87.5%, resize_bicubic to 224",
         "data_util.py:233-248", "see the header"),
    ])

PROBES = [
    dict(config="configs/imagenet_eval.yaml", source=f"{SWAV}, {SWAV_EVAL}",
         published="the swav and DeepCluster-v2 figures of the swav README (75.3% for swav_800ep_pretrain.pth.tar)",
         rows=[
             ("batch_size", 256, "--batch_size 32 on 8 GPUs", "README.md, eval_linear.py", ""),
             ("epochs", 100, "--epochs 100", f"{SWAV_EVAL}:62", ""),
             ("peak lr", 0.3, "--lr 0.3", f"{SWAV_EVAL}:66", ""),
             ("final lr", 0.0, "--final_lr 0", f"{SWAV_EVAL}:75", ""),
             ("lr_schedule", "cosine", "CosineAnnealingLR(T_max=epochs)", f"{SWAV_EVAL}:184", ""),
             ("lr_interval", "epoch", "scheduler.step() once an epoch", f"{SWAV_EVAL}:213", ""),
             ("weight_decay", 1e-6, "--wd 1e-6 on the weight and the bias", f"{SWAV_EVAL}:67, 175", ""),
             ("exclude_bias_and_norm", False, "SGD(linear_classifier.parameters(), weight_decay=wd)", f"{SWAV_EVAL}:170", ""),
             ("nesterov", False, "--nesterov False", f"{SWAV_EVAL}:68", ""),
             ("linear_bn", False, "--use_bn False; global pooling: no BatchNorm", f"{SWAV_EVAL}:56, 235-249", ""),
             ("precompute_features", False, "RandomResizedCrop(224) + flip every epoch", f"{SWAV_EVAL}:106-111", ""),
             ("min_scale", 0.08, "RandomResizedCrop default scale", f"{SWAV_EVAL}:107", ""),
         ],
         code=[
             ("the encoder", "frozen, in eval mode", "model.eval() before training and each epoch", f"{SWAV_EVAL}:149, 282", ""),
             ("Linear init", "PyTorch's default", "N(0, 0.01) weight, zero bias", f"{SWAV_EVAL}:250-251",
              "a convex problem trained 100 epochs: the start hardly matters"),
             ("test view", "Resize(256) + CenterCrop(224)", "Resize(256), CenterCrop(224)", f"{SWAV_EVAL}:112-117", ""),
             ("reported epoch", "the last epoch's test top-1", "best_acc: the best of the 100 epochs' validation top-1",
              f"{SWAV_EVAL}:375-376, 226", "the last epoch here (with the cosine at 0 the two rarely differ)"),
         ]),
    dict(config="configs/imagenet_eval_vissl.yaml", source=f"{VISSL}, {VISSL_EVAL}",
         published="VISSL's model zoo figures (64.4% SimCLR 100 epochs, 52.73% NPID, 56.68% NPID++)",
         rows=[
             ("batch_size", 256, "32 x 8", "DATA.TRAIN.BATCHSIZE_PER_REPLICA, NUM_PROC_PER_NODE", ""),
             ("epochs", 28, "28", "OPTIMIZER.num_epochs", ""),
             ("peak lr", 0.01, "0.01 x 256 / 256", "param_schedulers.lr.auto_lr_scaling", ""),
             ("lr_schedule", "multistep", "multistep [0.01, 0.001, 0.0001, 0.00001]", "param_schedulers.lr", ""),
             ("lr_steps", [8, 16, 24], "milestones [8, 16, 24], update_interval epoch", "param_schedulers.lr", ""),
             ("nesterov", True, "True", "OPTIMIZER.nesterov", ""),
             ("weight_decay", 5e-4, "0.0005", "OPTIMIZER.weight_decay", ""),
             ("exclude_bias_and_norm", True, "regularize_bn False: no decay on BatchNorm's scale and shift",
              "OPTIMIZER.regularize_bn", ""),
             ("decay_bias", True, "regularize_bias True (the Linear's bias decayed)", "OPTIMIZER.regularize_bias", ""),
             ("linear_bn", False, "the mlp head: Linear alone (eval_mlp: BatchNorm then Linear, see below)",
              "MODEL.HEAD.PARAMS", ""),
             ("precompute_features", False, "RandomResizedCrop(224) + flip", "DATA.TRAIN.TRANSFORMS", ""),
         ],
         code=[
             ("heads", "one Linear on the pooled 2048 features (--linear_bn true --linear_bn_affine true: VISSL's "
              "eval_mlp, a BatchNorm with its scale and shift before it)",
              "seven heads in one run: eval_mlp (BatchNorm2d with its scale and shift, then Linear) on conv1, res2 ... "
              "res5 and res5avg, and mlp (Linear) on res5avg", VISSL_EVAL + ", MODEL.HEAD.PARAMS",
              "two runs here for the two res5avg heads"),
             ("eval_mlp's weight decay", "--linear_bn_affine: scale and shift in the zero-decay group, the Linear's "
              "weight and bias decayed", "regularize_bn False: BatchNorm parameters in the no-decay group; "
              "regularize_bias True", "vissl/optimizers/param_groups.py (get_optimizer_param_groups)", "",
              vissl_head_decay),
             ("reported figure", "each run's top-1", "the meter logs both res5avg heads under one name "
              "(meter_names from LINEAR_EVAL_FEAT_POOL_OPS_MAP); the zoo reports the best layer",
              "vissl/utils/hydra_config.py:705-711", "the zoo's figure is the better of the two runs"),
             ("Linear init", "PyTorch's default", "PyTorch's default (MLP keeps it, PARAMS_MULTIPLIER 1.0)",
              "vissl/models/heads/mlp.py:89, 107", ""),
             ("the trunk", "frozen, in eval mode", "FREEZE_TRUNK_ONLY, EVAL_MODE_ON", "MODEL.FEATURE_EVAL_SETTINGS", ""),
             ("test view", "Resize(256) + CenterCrop(224)", "Resize 256, CenterCrop 224", "DATA.TEST.TRANSFORMS", ""),
         ]),
    dict(config="configs/imagenet_eval_simclr_pytorch.yaml", source=f"{SIMCLR_PT}, {SIMCLR_PT_EVAL}",
         published="simclr-pytorch's README figures (60.14%, 65.58%, 67.84%)",
         rows=[
             ("batch_size", 4096, "4096", f"{SIMCLR_PT_EVAL}: batch_size", ""),
             ("iters", 28080, "28080", f"{SIMCLR_PT_EVAL}: iters", ""),
             ("peak lr", 1.6, "1.6", f"{SIMCLR_PT_EVAL}: lr", ""),
             ("lr_schedule", "linear", "linear to 0", f"{SIMCLR_PT_EVAL}: lr_schedule", ""),
             ("weight_decay", 0.0, "0.0", f"{SIMCLR_PT_EVAL}: weight_decay", ""),
             ("interpolation", "bicubic", "PIL.Image.BICUBIC", "models/ssl.py, SSLEval.transforms", ""),
             ("min_scale", 0.08, "scale_lower 0.08", f"{SIMCLR_PT_EVAL}: scale_lower", ""),
             ("precompute_features", False, "precompute_emb_bs -1: crops every step", f"{SIMCLR_PT_EVAL}", ""),
         ],
         code=[
             ("the encoder", "frozen, in eval mode", "frozen, in eval mode: train.py's model.train() calls "
              "SSLEval.train(), which switches only the Linear (self.model) unless finetune", "train.py:161; "
              "models/ssl.py:485-489", ""),
             ("Linear init", "PyTorch's default", "zeros", "models/ssl.py:332-333", "see the header"),
             ("test view", "Resize(256) + CenterCrop(224), bicubic", "CenterCropAndResize(0.875, 224)",
              "models/ssl.py, SSLEval.transforms", "see the header"),
             ("reported epoch", "the last step", "the final test after iters", "train.py:187", ""),
         ]),
]


PROBES.append(FINETUNE)
DECODE = ("JPEG decode", "in full (--draft_decode false)", "in full: PIL's Image.open(f).convert('RGB') in the loader",
          "the source's dataset loader", "", lambda args: not args.draft_decode)
for _recipe in RECIPES + PROBES[:-1]:  # (the fine-tuning table lists draft_decode among its values)
    _recipe["code"].append(DECODE)
COLOUR = ("colour arithmetic", "float32 on the training device: no rounding between the jitter's ops, contrast "
          "around the grey image's exact mean, hue turned in float HSV", "torchvision's ColorJitter on PIL images: "
          "every op rounds to 8 bits, contrast around the grey mean rounded to an integer, hue turned in 8-bit HSV",
          "torchvision/transforms/functional_pil.py, adjust_brightness / contrast / saturation / hue",
          "no 8-bit rounding between the ops here")
for _recipe in RECIPES:
    _recipe["code"].append(COLOUR)


def effective(config):
    """The flags a config resolves to (defaults included) and the derived learning rates."""
    args = parse_args(["--config", os.path.join(ROOT, config)], train.PROBLEMS)
    return dict(vars(args), **derived(args))


def render():
    lines = []
    for r in RECIPES + PROBES:
        if r is PROBES[0]:
            lines += ["## The probes the published figures need", ""]
        values = effective(r["config"])
        probe = f", with the probe `{r['probe']}`" if "probe" in r else ""
        lines += [f"### `{os.path.basename(r['config'])}`", "",
                  f"Source: {r['source']}. Published: {r['published']}{probe}.", "",
                  "| flag | here | source | read from | difference |", "|---|---|---|---|---|"]
        for flag, _, theirs, where, note in r["rows"]:
            lines.append(f"| `{flag}` | {values[flag]!r} | {theirs} | {where} | {note} |")
        lines += ["", "| in the code | here | source | read at | difference |", "|---|---|---|---|---|"]
        for behaviour, here, theirs, where, note, *pin in r["code"]:
            lines.append(f"| {behaviour} | {here} | {theirs} | {where} | {note} |")
        lines.append("")
    return "\n".join(lines)


def write(path=DOC):
    with open(path) as f:
        body = f.read()
    head, rest = body.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    with open(path, "w") as f:
        f.write(f"{head}{BEGIN}\n{render()}{END}{tail}")


if __name__ == "__main__":
    write()
    print(f"wrote {DOC}")
