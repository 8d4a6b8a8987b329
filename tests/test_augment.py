import pytest
import torch
import torchvision.transforms.functional as TF

from data import augment as A


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def images(n=6, c=3, side=20, seed=0):
    return torch.rand(n, c, side, side, generator=gen(seed))


@pytest.mark.parametrize("s", [0.5, 1.0])
def test_sampled_parameters_stay_in_their_ranges(s):
    aug = A.Augment([2], [32], [0.08], [1.0], (0.5,) * 3, (0.5,) * 3, 3, jitter_strength=s, generator=gen())
    p = aug.sample(20000, 32)
    for f, (lo, hi) in zip(p["factors"][:3], [(1 - 0.8 * s, 1 + 0.8 * s)] * 3):  # brightness, contrast, saturation
        assert lo <= f.min() and f.max() <= hi and f.min() < lo + 0.01 and f.max() > hi - 0.01
    hue = p["factors"][3]
    assert -0.2 * s <= hue.min() and hue.max() <= 0.2 * s and hue.min() < -0.2 * s + 0.01
    assert 0.1 <= p["sigma"].min() and p["sigma"].max() <= 2.0
    assert p["kernel_size"] == 3 and aug.sample(4, 224)["kernel_size"] == 23  # 10% of the side, odd
    for key, prob in [("jitter", 0.8), ("grayscale", 0.2), ("blur", 0.5), ("flip", 0.5), ("solarize", 0.0)]:
        assert p[key].float().mean().item() == pytest.approx(prob, abs=0.015), key
    # every image draws its own random order of the four jitter ops
    assert (p["order"].sort(dim=1).values == torch.arange(4)).all()
    assert len({tuple(o) for o in p["order"][:500].tolist()}) == 24


def test_one_channel_jitter_is_brightness_and_contrast_only():
    aug = A.Augment([2], [28], [0.08], [1.0], (0.5,), (0.5,), 1, jitter_strength=0.5, generator=gen())
    p = aug.sample(100, 28)
    assert len(p["factors"]) == 2 and p["order"].shape == (100, 2)


def test_crop_boxes_follow_scale_and_ratio():
    boxes = A.sample_boxes(20000, 96, 96, (0.2, 0.6), (3 / 4, 4 / 3), gen())
    x0, y0, w, h = boxes.unbind(1)
    area = w * h / 96 ** 2
    assert area.min() > 0.2 - 0.03 and area.max() < 0.6 + 0.03
    assert (w / h).min() > 3 / 4 * 0.9 and (w / h).max() < 4 / 3 * 1.1
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 96).all() and (y0 + h <= 96).all()
    # no draw fits: torchvision's fallback, the whole image
    fallback = A.sample_boxes(5, 10, 10, (2.0, 3.0), (3 / 4, 4 / 3), gen())
    assert (fallback == torch.tensor([0.0, 0.0, 10.0, 10.0])).all()


@pytest.mark.parametrize("size", [24, 10])  # up- and downsampling
def test_crop_resize_matches_torchvision_antialiased_resized_crop(size):
    x = images(4, side=16)
    boxes = torch.tensor([[2.0, 3.0, 8.0, 6.0], [0.0, 0.0, 16.0, 16.0], [5.0, 1.0, 10.0, 12.0], [9.0, 0.0, 7.0, 16.0]])
    out = A.crop_resize(x, boxes, size)
    for i, (x0, y0, w, h) in enumerate(boxes.int().tolist()):
        ref = TF.resized_crop(x[i], y0, x0, h, w, [size, size], antialias=True)
        torch.testing.assert_close(out[i], ref, rtol=0, atol=1e-5)
    # a 4x downsample averages: not the 2 of 4 pixels that plain bilinear reads
    alias = TF.resized_crop(x[1], 0, 0, 16, 16, [4, 4], antialias=False)
    assert (A.crop_resize(x[1:2], boxes[1:2], 4)[0] - alias).abs().max() > 0.05


def test_cut_crops_gives_a_rank_its_rows_of_the_global_batchs_crops():
    x = (images(8, side=20) * 255).to(torch.uint8)
    crops = [(16, (0.2, 1.0)), (8, (0.05, 0.2))]
    whole = A.cut_crops(x, crops, gen(4))
    assert [tuple(c.shape) for c in whole] == [(8, 3, 16, 16), (8, 3, 8, 8)] and whole[0].dtype == torch.float32
    assert not torch.allclose(whole[0][:4], A.cut_crops(x[:4], crops[:1], gen(5))[0])  # the generator draws the boxes
    for rank in (0, 1):  # on 2 processes, each rank's images take the crops they take on one
        part = A.cut_crops(x[4 * rank:4 * rank + 4], crops, gen(4), rank=rank, world_size=2)
        assert all(torch.equal(p, w[4 * rank:4 * rank + 4]) for p, w in zip(part, whole))


@pytest.mark.parametrize("channels", [1, 3])
def test_colour_ops_match_torchvision(channels):
    x = images(4, c=channels)
    f = torch.tensor([0.3, 0.9, 1.2, 1.7])
    for ours, theirs in [(A.adjust_brightness, TF.adjust_brightness), (A.adjust_contrast, TF.adjust_contrast)] + \
            ([(A.adjust_saturation, TF.adjust_saturation)] if channels == 3 else []):
        ref = torch.stack([theirs(x[i], f[i].item()) for i in range(4)])
        # luma weights: ITU-R 601's 0.299 as PIL, where torchvision's tensor ops use 0.2989
        assert torch.allclose(ours(x, f), ref, atol=2e-4), ours.__name__
    if channels == 3:
        shift = torch.tensor([-0.2, -0.05, 0.1, 0.5])
        ref = torch.stack([TF.adjust_hue(x[i], shift[i].item()) for i in range(4)])
        assert torch.allclose(A.adjust_hue(x, shift), ref, atol=1e-4)
        assert torch.allclose(A.grayscale(x), TF.rgb_to_grayscale(x), atol=2e-4)


def test_gaussian_blur_matches_torchvision():
    x = images(3, side=24)
    sigma = torch.tensor([0.1, 0.7, 2.0])
    ref = torch.stack([TF.gaussian_blur(x[i], [5, 5], [sigma[i].item()] * 2) for i in range(3)])
    assert torch.allclose(A.gaussian_blur(x, sigma, 5), ref, atol=1e-5)


def test_solarize_and_normalize():
    x = torch.tensor([0.0, 0.49, 0.5, 1.0]).view(1, 1, 2, 2)
    assert torch.allclose(A.solarize(x), torch.tensor([0.0, 0.49, 0.5, 0.0]).view(1, 1, 2, 2))
    assert torch.allclose(A.normalize(x, (0.5,), (0.25,)), (x - 0.5) / 0.25)


def test_augment_gives_one_normalized_tensor_per_crop_with_independent_draws():
    x = images(8, side=32)
    aug = A.Augment([2, 3], [32, 16], [0.14, 0.05], [1.0, 0.14], (0.5,) * 3, (0.25,) * 3, 3, generator=gen())
    views = [x.clone(), x.clone()] + [x[:, :, :16, :16].clone() for _ in range(3)]  # the same crop five times
    crops = aug(views)
    assert [tuple(c.shape) for c in crops] == [(8, 3, 32, 32)] * 2 + [(8, 3, 16, 16)] * 3
    assert not torch.allclose(crops[0], crops[1]) and not torch.allclose(crops[2], crops[3])
    assert torch.equal(views[0], x)  # the loader's crops are left as they are
    # same generator seed, same crops: augmentation is reproducible
    again = A.Augment([2, 3], [32, 16], [0.14, 0.05], [1.0, 0.14], (0.5,) * 3, (0.25,) * 3, 3, generator=gen())(views)
    assert all(torch.equal(a, b) for a, b in zip(crops, again))
    # a flipped image only: the crop mirrored, then normalised
    flip = A.Augment([1], [32], [1.0], [1.0], (0.5,) * 3, (0.25,) * 3, 3, flip_prob=1.0, colour=False)([x])[0]
    torch.testing.assert_close(flip, (x.flip(-1) - 0.5) / 0.25)


def test_mismatched_multicrop_lists_are_rejected():
    from types import SimpleNamespace
    args = SimpleNamespace(num_crops=[2, 6], size_crops=[224], min_scale_crops=[0.14, 0.05], max_scale_crops=[1, 0.14])
    with pytest.raises(ValueError, match="one value per crop size"):
        A.from_args(args, None, gen())


@pytest.mark.parametrize("channels", [3, 1])
def test_the_gpus_sync_free_colour_distortion_gives_the_cpus_pixels_bit_for_bit(channels, monkeypatch):
    aug = A.Augment([1], [20], [0.08], [1.0], [0.5] * channels, [0.25] * channels, channels, blur_prob=0.5,
                    solarize_prob=0.3, generator=torch.Generator().manual_seed(0))
    x = torch.rand(128, channels, 20, 20, generator=torch.Generator().manual_seed(1))
    p = aug.sample(len(x), 20)
    picked = aug.distort_picked(x.clone(), p)

    def no_host_read(self):
        raise AssertionError("a mask was read back on the host")
    monkeypatch.setattr(torch.Tensor, "__bool__", no_host_read)  # what `if m.any():` costs a GPU
    everywhere = aug.distort_everywhere(x.clone(), p)
    monkeypatch.undo()
    assert torch.equal(picked, everywhere) and not torch.equal(picked, x)
