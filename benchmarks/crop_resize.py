"""What the antialiased crop costs: `data.augment.crop_resize` against plain bilinear sampling (one `grid_sample`
for the batch, which reads only the pixels next to each output pixel), timed in interleaved rounds in one process.
Not part of the package and not run by CI.

    python benchmarks/crop_resize.py [--batch 256] [--rounds 12] [--device cpu]
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data.augment import crop_resize, sample_boxes  # noqa: E402


def bilinear_crop(x, boxes, size):
    """The same crops without antialiasing: one affine grid per image."""
    n, _, height, width = x.shape
    x0, y0, w, h = boxes.to(x.dtype).unbind(1)
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = w / width
    theta[:, 0, 2] = 2 * (x0 + w / 2) / width - 1
    theta[:, 1, 1], theta[:, 1, 2] = h / height, 2 * (y0 + h / 2) / height - 1
    grid = F.affine_grid(theta, (n, x.shape[1], size, size), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=12, help="interleaved rounds; the first two are not timed")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    gen = torch.Generator(device).manual_seed(0)
    for channels, side, size in [(1, 28, 20), (1, 28, 28), (3, 32, 32), (3, 96, 96), (3, 96, 48)]:
        x = torch.rand(args.batch, channels, side, side, device=device, generator=gen)
        boxes = sample_boxes(args.batch, side, side, (0.08, 1.0), (3 / 4, 4 / 3), gen)
        seconds = {"antialiased": 0.0, "bilinear": 0.0}
        for r in range(args.rounds):
            for name, fn in (("antialiased", crop_resize), ("bilinear", bilinear_crop)):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                fn(x, boxes, size)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if r >= 2:
                    seconds[name] += time.perf_counter() - start
        timed = args.rounds - 2
        a, b = (1000 * seconds[k] / timed for k in ("antialiased", "bilinear"))
        print(f"{args.batch} x {channels} x {side} px -> {size} px: antialiased {a:.2f} ms, bilinear {b:.2f} ms, "
              f"ratio {a / b:.2f}")


if __name__ == "__main__":
    main()
