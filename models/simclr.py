"""SimCLR: backbone -> MLP head -> InfoNCE between all crops of an image, negatives from the whole global batch."""
from models.backbones import multicrop_forward
from models.base import Pretrain
from models.heads import MLP, head_dims
from models.losses import info_nce_loss


class SimCLR(Pretrain):
    @staticmethod
    def add_args(p):
        Pretrain.add_args(p)
        p.add_argument("--temperature", type=float, default=0.1, help="InfoNCE temperature")

    def __init__(self, args, data, device):
        super().__init__(args, data, device)
        self.head = MLP(head_dims(args, self.backbone.feat_dim), args.head_use_bn, args.head_use_relu)
        self.num_crops = sum(args.num_crops)

    def forward(self, batch):
        x, _, _ = batch
        crops = self.augment(x)
        with self.autocast():
            z = self.head(multicrop_forward(self.backbone, crops))
        return info_nce_loss(z, self.num_crops, self.args.temperature), {}
