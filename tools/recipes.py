"""The published recipes, value by value: python -m tools.recipes writes docs/recipes.md from the tables below.

Each entry is a config that names a published source, the source (repository, commit, files), the figure it quotes
with the probe config it needs, and one row a hyperparameter: the flag, its effective value here (what the config
resolves to, defaults included; tests/test_recipes.py checks every one), the source's value and where it was read.
A row whose note is not empty is a difference, said in the config's header too.
"""
import os

import train
from utils.config import parse_args
from utils.optim import scale_lr

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
        ("warmup", 0.1, "lengths [0.1, 0.9]", "param_schedulers.lr.lengths", WARMUP_STEP),
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
        ("min_scale_crops", [0.08], "RandomResizedCrop 224, default scale", "DATA.TRAIN.TRANSFORMS", ""),
        ("color_jitter", [0.4, 0.4, 0.4, 0.4], "ColorJitter 0.4, 0.4, 0.4, 0.4", "DATA.TRAIN.TRANSFORMS",
         "after the crop here, before it there"),
        ("jitter_prob", 1.0, "always", "DATA.TRAIN.TRANSFORMS", ""),
        ("grayscale_prob", 0.0, "none", "DATA.TRAIN.TRANSFORMS", ""),
        ("blur_prob", 0.0, "none", "DATA.TRAIN.TRANSFORMS", ""),
        ("norm_std", None, "std [0.229, 0.224, 0.225] (the default here)", "Normalize", ""),
    ] + extra


NPID_SRC = "configs/config/pretrain/npid/npid_8gpu_resnet.yaml"
NPIDPP_SRC = "configs/config/pretrain/npid/npid++_4nodes_resnet.yaml"

RECIPES = [
    dict(config="configs/imagenet_simclr_bs4096_ep100.yaml", source=f"{VISSL}, {VISSL_SIMCLR}",
         published="64.4% top-1, RN50 100 epochs (VISSL MODEL_ZOO.md)", probe="configs/imagenet_eval_vissl.yaml",
         rows=simclr_vissl(SIMCLR_VISSL_CROPS)),
    dict(config="configs/imagenet_simclr_bs4096_ep100_2x224_6x96.yaml",
         source=f"{VISSL}, {VISSL_SIMCLR}, with {SWAV} scripts/swav_400ep_pretrain.sh's crops",
         published="none quoted", probe="configs/imagenet_eval_vissl.yaml", rows=simclr_vissl(MULTI_CROP)),
    dict(config="configs/imagenet_simclr_bs512_ep100.yaml",
         source=f"{SIMCLR_PT}, configs/imagenet_train_epochs100_bs512.yaml", published="60.14% top-1 (README)",
         probe="configs/imagenet_eval_simclr_pytorch.yaml",
         rows=simclr_pytorch(512, 250200, 0.6, "configs/imagenet_train_epochs100_bs512.yaml")),
    dict(config="configs/imagenet_simclr_bs2048_ep200.yaml",
         source=f"{SIMCLR_PT}, configs/imagenet_train_epochs200_bs2k.yaml", published="65.58% top-1 (README)",
         probe="configs/imagenet_eval_simclr_pytorch.yaml",
         rows=simclr_pytorch(2048, 125100, 2.4, "configs/imagenet_train_epochs200_bs2k.yaml")),
    dict(config="configs/imagenet_simclr_bs2048_ep600.yaml",
         source=f"{SIMCLR_PT}, configs/imagenet_train_epochs600_bs2k.yaml", published="67.84% top-1 (README)",
         probe="configs/imagenet_eval_simclr_pytorch.yaml",
         rows=simclr_pytorch(2048, 375300, 2.4, "configs/imagenet_train_epochs600_bs2k.yaml")),
    dict(config="configs/imagenet_swav_bs4096_ep400.yaml", source=f"{SWAV}, scripts/swav_400ep_pretrain.sh",
         published="74.6% top-1 (README)", probe="configs/imagenet_eval.yaml", rows=SWAV_400),
    dict(config="configs/imagenet_swav_bs256_ep200_queue.yaml", source=f"{SWAV}, scripts/swav_200ep_bs256_pretrain.sh",
         published="72.7% top-1 (README)", probe="configs/imagenet_eval.yaml", rows=SWAV_256),
    dict(config="configs/imagenet_dcv2_2x224.yaml", source=f"{SWAV}, scripts/deepclusterv2_400ep_2x224_pretrain.sh",
         published="70.2% top-1 (README)", probe="configs/imagenet_eval.yaml",
         rows=dcv2("deepclusterv2_400ep_2x224_pretrain.sh", [
             ("num_crops", [2], "--nmb_crops 2", "scripts/deepclusterv2_400ep_2x224_pretrain.sh", ""),
             ("size_crops", [224], "--size_crops 224", "scripts/deepclusterv2_400ep_2x224_pretrain.sh", ""),
             ("min_scale_crops", [0.08], "--min_scale_crops 0.08", "scripts/deepclusterv2_400ep_2x224_pretrain.sh", "")])),
    dict(config="configs/imagenet_dcv2_2x160_4x96.yaml", source=f"{SWAV}, scripts/deepclusterv2_400ep_pretrain.sh",
         published="74.3% top-1 (README)", probe="configs/imagenet_eval.yaml",
         rows=dcv2("deepclusterv2_400ep_pretrain.sh", [
             ("num_crops", [2, 4], "--nmb_crops 2 4", "scripts/deepclusterv2_400ep_pretrain.sh", ""),
             ("size_crops", [160, 96], "--size_crops 160 96", "scripts/deepclusterv2_400ep_pretrain.sh", ""),
             ("min_scale_crops", [0.08, 0.05], "--min_scale_crops 0.08 0.05", "scripts/deepclusterv2_400ep_pretrain.sh", ""),
             ("max_scale_crops", [1.0, 0.14], "--max_scale_crops 1. 0.14", "scripts/deepclusterv2_400ep_pretrain.sh", "")])),
    dict(config="configs/imagenet_npid.yaml", source=f"{VISSL}, {NPID_SRC}", published="52.73% top-1 (VISSL MODEL_ZOO.md)",
         probe="configs/imagenet_eval_vissl.yaml", rows=npid_vissl(NPID_SRC, [
             ("batch_size", 256, "32 x 8", "DATA.TRAIN.BATCHSIZE_PER_REPLICA, NUM_PROC_PER_NODE", ""),
             ("epochs", 200, "200", "OPTIMIZER.num_epochs", ""),
             ("peak lr", 0.03, "0.03 x 256 / 256", "param_schedulers.lr", ""),
             ("lr_schedule", "multistep", "multistep [0.03, 0.003, 0.0003]", "param_schedulers.lr", ""),
             ("lr_steps", [120, 160], "milestones [120, 160]", "param_schedulers.lr.milestones", ""),
             ("num_negatives", 4096, "4096", "negative_sampling_params.num_negatives", "")])),
    dict(config="configs/imagenet_npid++.yaml", source=f"{VISSL}, {NPIDPP_SRC}", published="56.68% top-1 (VISSL MODEL_ZOO.md)",
         probe="configs/imagenet_eval_vissl.yaml", rows=npid_vissl(NPIDPP_SRC, [
             ("batch_size", 1024, "32 x 8 x 4", "DATA.TRAIN.BATCHSIZE_PER_REPLICA, DISTRIBUTED", ""),
             ("epochs", 800, "800", "OPTIMIZER.num_epochs", ""),
             ("peak lr", 0.12, "0.12", "param_schedulers.lr.start_value", ""),
             ("final lr", 0.00012, "0.00012", "param_schedulers.lr.end_value", ""),
             ("lr_schedule", "cosine", "cosine", "param_schedulers.lr.name", ""),
             ("lr_interval", "epoch", "update_interval: epoch", "param_schedulers.lr.update_interval", ""),
             ("num_negatives", 32000, "32000", "negative_sampling_params.num_negatives", "")])),
]


def effective(config):
    """The flags a config resolves to (defaults included) and the derived learning rates."""
    args = parse_args(["--config", os.path.join(ROOT, config)], train.PROBLEMS)
    return dict(vars(args), **derived(args))


def render():
    lines = []
    for r in RECIPES:
        values = effective(r["config"])
        lines += [f"### `{os.path.basename(r['config'])}`", "",
                  f"Source: {r['source']}. Published: {r['published']}, with the probe `{r['probe']}`.", "",
                  "| flag | here | source | read from | difference |", "|---|---|---|---|---|"]
        for flag, _, theirs, where, note in r["rows"]:
            lines.append(f"| `{flag}` | {values[flag]!r} | {theirs} | {where} | {note} |")
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
