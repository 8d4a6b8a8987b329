"""Multi-crop and SimCLR colour distortion as batched tensor ops on the training device.

Every crop of every image gets its own draw of every random parameter. Images are float in [0, 1],
shape (n, C, H, W); normalisation comes last. Each op is a pure function of explicit parameters
(`adjust_*`), and `Augment.sample` draws those parameters, so both can be tested on their own.
"""
import math

import torch
import torch.nn.functional as F

GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as PIL and torchvision


def uniform(lo, hi, n, gen):
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=gen.device)


def bernoulli(p, n, gen):
    return torch.rand(n, generator=gen, device=gen.device) < p


ASPECT = (3 / 4, 4 / 3)  # RandomResizedCrop's range of crop aspect ratios


def sample_boxes(n, height, width, scale, ratio, gen, tries=10):
    """RandomResizedCrop boxes (x0, y0, w, h) in pixels, (n, 4): area fraction ~ U(scale), log aspect ~ U(log ratio).

    `scale` is (lo, hi), or an (n, 2) tensor with a range per box. As torchvision: the first of `tries` draws
    that fits the image, else the centre crop of clamped aspect.
    """
    area = height * width
    lo, hi = (scale[:, :1], scale[:, 1:]) if torch.is_tensor(scale) else scale
    target = area * uniform(lo, hi, (n, tries), gen)
    aspect = torch.exp(uniform(math.log(ratio[0]), math.log(ratio[1]), (n, tries), gen))
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    ok = (w <= width) & (h <= height) & (w > 0) & (h > 0)
    first = ok.float().argmax(dim=1, keepdim=True)
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    found = ok.any(dim=1)
    # fallback: the whole image, cropped to the nearest allowed aspect ratio
    in_ratio = width / height
    fw, fh = width, height
    if in_ratio < ratio[0]:
        fh = round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fw = round(height * ratio[1])
    w = torch.where(found, w, torch.full_like(w, fw))
    h = torch.where(found, h, torch.full_like(h, fh))
    x0 = torch.floor(torch.rand(n, generator=gen, device=gen.device) * (width - w + 1))
    y0 = torch.floor(torch.rand(n, generator=gen, device=gen.device) * (height - h + 1))
    x0 = torch.where(found, x0, torch.floor((width - w) / 2))
    y0 = torch.where(found, y0, torch.floor((height - h) / 2))
    return torch.stack([x0, y0, w, h], dim=1)


def resize_weights(start, length, size, extent):
    """(n, size, extent) rows that resample [start, start + length) of an axis of `extent` pixels to `size`.

    The triangle filter of an antialiased bilinear resize (PIL's, and torchvision's `antialias=True`):
    output pixel i is centred at start + (i + 1/2) * length / size in the input and weighs the pixels of the
    box within max(1, length / size) of it, closer ones more; the weights are normalised over the box.
    """
    scale = (length / size)[:, None, None]
    centre = start[:, None, None] + scale * (torch.arange(size, dtype=start.dtype, device=start.device)[:, None] + 0.5)
    pixel = torch.arange(extent, dtype=start.dtype, device=start.device) + 0.5  # input pixel centres
    w = (1 - (pixel - centre).abs() / scale.clamp(min=1)).clamp(min=0)
    inside = (pixel > start[:, None, None]) & (pixel < (start + length)[:, None, None])
    w = w * inside
    return w / w.sum(-1, keepdim=True)


def crop_resize(x, boxes, size):
    """Crop each image to its box and resize to size x size: torchvision's `resized_crop(..., antialias=True)`,
    for the whole batch as two batched matmuls."""
    height, width = x.shape[-2:]
    x0, y0, w, h = boxes.to(x.dtype).unbind(1)
    rows = resize_weights(y0, h, size, height)  # (n, size, H)
    cols = resize_weights(x0, w, size, width)  # (n, size, W)
    return rows[:, None] @ x @ cols[:, None].transpose(-1, -2)


def cut_crops(images, crops, gen, rank=0, world_size=1):
    """The crops of rank `rank`'s part of a global batch of whole uint8 images (n, C, H, W): one float (n, C, size,
    size) tensor in [0, 1] per (size, (min_scale, max_scale)) of `crops`. The boxes are drawn for the whole global
    batch and the rank takes its rows, so an image's crops do not depend on the number of processes."""
    x, n = images.float() / 255, len(images)
    return [crop_resize(x, sample_boxes(n * world_size, *x.shape[-2:], scale, ASPECT, gen)[rank * n:(rank + 1) * n],
                        size if size > 0 else x.shape[-1]) for size, scale in crops]


def grayscale(x):
    if x.shape[1] == 1:
        return x
    w = torch.tensor(GRAY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _per_image(f, x):
    return f.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))


def adjust_brightness(x, f):
    return (x * _per_image(f, x)).clamp(0, 1)


def adjust_contrast(x, f):
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    f = _per_image(f, x)
    return (f * x + (1 - f) * mean).clamp(0, 1)


def adjust_saturation(x, f):
    f = _per_image(f, x)
    return (f * x + (1 - f) * grayscale(x)).clamp(0, 1)


def adjust_hue(x, shift):
    """Rotate the hue by `shift` (fraction of the colour circle) in HSV space."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(maxc == r, ((g - b) / safe) % 6,
                    torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4)) / 6
    h = torch.where(delta > 0, h, torch.zeros_like(h))
    h = (h + _per_image(shift, h)) % 1.0
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    v = maxc
    # HSV -> RGB: each channel k is v - v*s*clamp(min(q, 4 - q), 0, 1), q = (k + 6h) mod 6
    k = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    q = (k + 6 * h[:, None]) % 6
    return v[:, None] - v[:, None] * s[:, None] * torch.clamp(torch.minimum(q, 4 - q), 0, 1)


BLUR_PADDING = {"reflect": "reflect", "replicate": "replicate", "zeros": "constant"}  # --blur_padding: F.pad's mode


def gaussian_blur(x, sigma, kernel_size, padding="reflect"):
    """Separable Gaussian blur with a sigma per image. `padding` fills the border: reflect (torchvision's
    GaussianBlur), replicate (the edge pixel, as PIL's GaussianBlur extends it) or zeros (simclr-pytorch's Conv2d)."""
    n, c, height, width = x.shape
    radius = kernel_size // 2
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t[None] ** 2 / (2 * sigma.to(x.dtype)[:, None] ** 2))
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (n*c, kernel_size)
    y = F.pad(x.reshape(1, n * c, height, width), (radius, radius, radius, radius), mode=BLUR_PADDING[padding])
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)
    return y.reshape(n, c, height, width)


def solarize(x, threshold=0.5):
    return torch.where(x >= threshold, 1 - x, x)


JITTER_OPS = [adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue]


def normalize(x, mean, std):
    mean = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


class Augment:
    """Flip and colour distortion of every crop, then normalisation. `crops` lists the (size, (min_scale, max_scale))
    of each crop, which the loader cuts (`data.loader.TrainBatches`); `__call__(views)` takes those crops, a list of
    float (n, C, size, size) tensors in [0, 1], and returns one normalised float tensor per crop.
    """

    def __init__(self, num_crops, size_crops, min_scale_crops, max_scale_crops, mean, std, channels,
                 jitter_strength=1.0, jitter_prob=0.8, grayscale_prob=0.2, blur_prob=0.5, solarize_prob=0.0,
                 flip_prob=0.5, colour=True, generator=None, jitter=None, blur_sigma=(0.1, 2.0), blur_padding="reflect"):
        self.crops = [(size, (lo, hi)) for n, size, lo, hi in
                      zip(num_crops, size_crops, min_scale_crops, max_scale_crops) for _ in range(n)]
        self.mean, self.std, self.channels = mean, std, channels
        # ColorJitter(b, c, s, h): `jitter`, else (0.8, 0.8, 0.8, 0.2) * jitter_strength
        b, c, s, h = jitter if jitter is not None else [f * jitter_strength for f in (0.8, 0.8, 0.8, 0.2)]
        # (lo, hi) of brightness, contrast, saturation factors and the hue shift
        self.jitter = [(max(0.0, 1 - f), 1 + f) for f in (b, c, s)] + [(-h, h)]
        self.num_jitter_ops = 4 if channels == 3 else 2  # one channel: brightness and contrast only
        self.jitter_prob, self.grayscale_prob = jitter_prob, grayscale_prob
        self.blur_prob, self.solarize_prob, self.flip_prob = blur_prob, solarize_prob, flip_prob
        self.colour, self.blur_sigma, self.blur_padding = colour, tuple(blur_sigma), blur_padding
        self.gen = generator if generator is not None else torch.Generator()

    def sample(self, n, side):
        """Every random parameter for one crop of n images of the given side."""
        g = self.gen
        p = dict(flip=bernoulli(self.flip_prob, n, g))
        if not self.colour:
            return p
        p["jitter"] = bernoulli(self.jitter_prob, n, g)
        p["factors"] = [uniform(lo, hi, n, g) for lo, hi in self.jitter[:self.num_jitter_ops]]
        p["order"] = torch.argsort(torch.rand(n, self.num_jitter_ops, generator=g, device=g.device), dim=1)
        p["grayscale"] = bernoulli(self.grayscale_prob, n, g)
        p["blur"] = bernoulli(self.blur_prob, n, g)
        p["sigma"] = uniform(*self.blur_sigma, n, g)
        p["kernel_size"] = max(3, int(0.1 * side) // 2 * 2 + 1)  # 10% of the side, odd
        p["solarize"] = bernoulli(self.solarize_prob, n, g)
        return p

    def colour_distort(self, x, p):
        """Colour jitter, grayscale, blur and solarization, each with its draw per image. A GPU would wait for
        every mask read back to pick the images an op applies to (up to 19 a crop): there every op runs on every
        image and `torch.where` keeps the drawn ones; a CPU, which waits for nothing, runs each op on the picked
        images alone (4-5x faster for 3 channels). Both give the same pixels, bit for bit."""
        return (self.distort_everywhere if x.is_cuda else self.distort_picked)(x, p)

    def jitter_masks(self, p):
        """(stage, op, mask): each image takes the jitter ops in its own random order, as torchvision's ColorJitter
        draws a new order for every image it transforms."""
        for stage in range(self.num_jitter_ops):
            for j in range(self.num_jitter_ops):
                yield j, p["jitter"] & (p["order"][:, stage] == j)

    def distort_picked(self, x, p):
        for j, m in self.jitter_masks(p):
            if m.any():
                x[m] = JITTER_OPS[j](x[m], p["factors"][j][m])
        m = p["grayscale"]
        if m.any() and x.shape[1] == 3:
            x[m] = grayscale(x[m]).expand(-1, 3, -1, -1)
        m = p["blur"]
        if m.any():
            x[m] = gaussian_blur(x[m], p["sigma"][m], p["kernel_size"], self.blur_padding)
        m = p["solarize"]
        if m.any():
            x[m] = solarize(x[m])
        return x

    def distort_everywhere(self, x, p):
        def keep(m, y, x):
            return torch.where(m.view(-1, 1, 1, 1), y, x)
        for j, m in self.jitter_masks(p):
            x = keep(m, JITTER_OPS[j](x, p["factors"][j]), x)
        if self.grayscale_prob > 0 and x.shape[1] == 3:  # the probabilities are the host's: no sync
            x = keep(p["grayscale"], grayscale(x).expand(-1, 3, -1, -1), x)
        if self.blur_prob > 0:
            x = keep(p["blur"], gaussian_blur(x, p["sigma"], p["kernel_size"], self.blur_padding), x)
        if self.solarize_prob > 0:
            x = keep(p["solarize"], solarize(x), x)
        return x

    def __call__(self, views):
        out = []
        for crop in views:
            p = self.sample(len(crop), crop.shape[-1])
            crop = torch.where(p["flip"].view(-1, 1, 1, 1), crop.flip(-1), crop)
            if self.colour:
                crop = self.colour_distort(crop, p)
            out.append(normalize(crop, self.mean, self.std))
        return out


def eval_view(x, mean, std):
    """The un-augmented view used for features: uint8 images -> normalized float."""
    return normalize(x.float() / 255, mean, std)


def from_args(args, data, generator):
    """The Augment of the multi-crop and colour flags, with the dataset's recipe where a flag is left unset."""
    lists = [args.num_crops, args.size_crops, args.min_scale_crops, args.max_scale_crops]
    if len({len(l) for l in lists}) != 1:
        raise ValueError("num_crops, size_crops, min_scale_crops and max_scale_crops need one value per crop size")
    for lo, hi in zip(args.min_scale_crops, args.max_scale_crops):
        if lo > hi:
            raise ValueError(f"--min_scale_crops {lo:g} is above --max_scale_crops {hi:g} for the same crop size: a crop's "
                             f"area is drawn between the two")
    default_side = data.image_size
    small = default_side <= 32
    s = args.color_jitter_strength if args.color_jitter_strength is not None else (0.5 if small else 1.0)
    blur = args.blur_prob if args.blur_prob is not None else (0.0 if small else 0.5)
    sizes = [default_side if size < 0 else size for size in args.size_crops]
    return Augment(args.num_crops, sizes, args.min_scale_crops, args.max_scale_crops, data.mean, data.std,
                   data.channels, jitter_strength=s, jitter_prob=args.jitter_prob, grayscale_prob=args.grayscale_prob,
                   blur_prob=blur, solarize_prob=args.solarize_prob, generator=generator,
                   jitter=args.color_jitter, blur_sigma=args.blur_sigma, blur_padding=args.blur_padding)
