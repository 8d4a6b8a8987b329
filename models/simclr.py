"""SimCLR: backbone -> MLP head -> InfoNCE between all crops of an image, negatives from the whole global batch."""
from models.base import Pretrain
from models.losses import info_nce_loss
from utils import config


class SimCLR(Pretrain):
    @staticmethod
    def add_args(p):
        Pretrain.add_args(p)
        p.add_argument("--temperature", type=config.POSITIVE, default=0.1, help="InfoNCE temperature")

    def forward(self, batch, step):
        x, _, _ = batch
        h, z = self.encode(self.augment(x), normalize=False)
        return (info_nce_loss(z, self.num_crops, self.args.temperature), {},
                dict(embeddings=z.detach(), features=h.detach()))
