"""The training batches: crop boxes keep RandomResizedCrop's distribution, the crops are torchvision's resized_crop
within resampling error, a reduced JPEG decode gives the crops a full decode gives, and batches depend only on
(seed, epoch, index), not on worker count or resume."""
import math

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from data.datasets import ArrayData, FolderData
from data.loader import TrainBatches, crop_boxes, decode_for_crops, resize_crops
from tools.benchmark import make_jpeg_folder, natural_image


def test_crop_boxes_keep_the_scale_and_aspect_distribution():
    gen = torch.Generator().manual_seed(0)
    crops = [(224, (0.14, 1.0))] * 2 + [(96, (0.05, 0.14))] * 6
    boxes = torch.tensor([crop_boxes(375, 500, crops, gen) for _ in range(2000)])  # (draws, crops, 4)
    area = boxes[..., 2] * boxes[..., 3] / (375 * 500)
    log_aspect = torch.log(boxes[..., 2] / boxes[..., 3])
    large, small = area[:, :2].flatten(), area[:, 2:].flatten()
    assert large.min() > 0.13 and large.max() <= 1.0 and small.min() > 0.045 and small.max() < 0.15  # pixel rounding
    # torchvision's RandomResizedCrop on the same image: the same rejection of draws that do not fit
    torch.manual_seed(0)
    image = torch.zeros(3, 375, 500)
    ref = torch.tensor([T.RandomResizedCrop.get_params(image, [0.14, 1.0], [3 / 4, 4 / 3])[2:] for _ in range(4000)])
    ref_area = (ref[:, 0] * ref[:, 1] / (375 * 500)).float()
    assert large.mean().item() == pytest.approx(ref_area.mean().item(), abs=0.015)
    assert large.std().item() == pytest.approx(ref_area.std().item(), abs=0.015)
    assert small.mean().item() == pytest.approx(0.095, abs=0.003)  # small boxes always fit: uniform on [0.05, 0.14]
    assert log_aspect.abs().max() <= math.log(4 / 3) + 0.02 and abs(log_aspect.mean().item()) < 0.01
    assert (boxes[..., 0] + boxes[..., 2] <= 500).all() and (boxes[..., 1] + boxes[..., 3] <= 375).all()


def reference_crops(path, boxes, sizes, interpolation):
    """torchvision's RandomResizedCrop on a PIL image, given its boxes: resized_crop, antialiased."""
    with Image.open(path) as img:
        img = img.convert("RGB")
    mode = T.InterpolationMode(interpolation)
    return [np.asarray(TF.resized_crop(img, int(y0), int(x0), int(h), int(w), [size, size], mode, antialias=True))
            for (x0, y0, w, h), size in zip(boxes, sizes)]


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_worker_crops_are_torchvisions_resized_crop_within_resampling_error(tmp_path, interpolation):
    path = tmp_path / "photo.jpg"
    Image.fromarray(natural_image(np.random.default_rng(2), 375, 500)).save(path, quality=90)
    crops = [(224, (0.14, 1.0))] * 2 + [(96, (0.05, 0.14))] * 6  # boxes below twice the crop: a full decode
    sizes = [size for size, _ in crops]
    errors, other_filter = [], []
    for seed in range(4):
        pixels, boxes = decode_for_crops(path, crops, torch.Generator().manual_seed(seed))
        assert pixels.shape == (375, 500, 3) and pixels.dtype == torch.uint8
        assert np.array_equal(pixels.numpy(), np.asarray(Image.open(path).convert("RGB")))  # TorchCodec = PIL's pixels
        ref_boxes = crop_boxes(375, 500, crops, torch.Generator().manual_seed(seed))
        ref = reference_crops(path, ref_boxes, sizes, interpolation)
        for got, want in zip(resize_crops(pixels, boxes, sizes, interpolation), ref):
            assert got.shape == want.shape
            errors.append(np.abs(got.numpy().astype(np.float32) - want).ravel())
        other = reference_crops(path, ref_boxes, sizes, "bicubic" if interpolation == "bilinear" else "bilinear")
        other_filter += [np.abs(a.astype(np.float32) - b).ravel() for a, b in zip(other, ref)]
    diff = np.concatenate(errors)
    # PIL's box resize reads the pixels around the box for the filter's support, resized_crop cuts first: the two
    # differ at the crops' edges; torch's uint8 kernel rounds otherwise than PIL's
    assert diff.mean() < 0.15 and np.percentile(diff, 99.9) <= 3
    assert np.concatenate(other_filter).mean() > 3 * diff.mean()  # the other filter is well outside that


def test_a_reduced_scale_decode_gives_the_crops_of_a_full_decode(tmp_path):
    path = tmp_path / "big.jpg"
    Image.fromarray(natural_image(np.random.default_rng(1), 960, 1280)).save(path, quality=90)
    crops = [(96, (0.3, 1.0))] * 4  # every box is more than twice the crop: a 1/2 (or smaller) decode suffices
    reduced, boxes = decode_for_crops(path, crops, torch.Generator().manual_seed(3))
    assert reduced.shape[1] <= 640  # the DCT scaling was used
    full = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy())
    full_boxes = [(x0, y0, x0 + w, y0 + h) for x0, y0, w, h in
                  crop_boxes(960, 1280, crops, torch.Generator().manual_seed(3))]
    for a, b in zip(resize_crops(reduced, boxes, [96] * 4, "bilinear"), resize_crops(full, full_boxes, [96] * 4, "bilinear")):
        diff = (a.float() - b.float()).abs()
        assert diff.mean() < 2.5 and diff.quantile(0.99) < 16  # JPEG-level differences


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpegs")
    make_jpeg_folder(str(root), 24, classes=3)
    return FolderData("imagenet", str(root / "train"))


CROPS = [(32, (0.14, 1.0))] * 2 + [(16, (0.05, 0.14))] * 2


def epoch_of(data, epoch, workers, start=0):
    batches = TrainBatches(data, 8, seed=5, device="cpu", crops=CROPS, workers=workers)
    return list(batches.epoch(epoch, start))


def test_batches_are_the_same_with_0_1_and_2_workers_and_on_resume(jpegs):
    ref = epoch_of(jpegs, 1, workers=0)
    assert len(ref) == 3 and [tuple(c.shape) for c in ref[0][0]] == [(8, 3, 32, 32)] * 2 + [(8, 3, 16, 16)] * 2
    assert ref[0][0][0].dtype == torch.float32 and ref[0][0][0].is_contiguous(memory_format=torch.channels_last)
    for got in (epoch_of(jpegs, 1, workers=1), epoch_of(jpegs, 1, workers=2), [None] + epoch_of(jpegs, 1, 0, start=1)):
        for a, b in zip(ref, got):
            if b is not None:
                assert all(torch.equal(x, y) for x, y in zip(a[0], b[0])) and torch.equal(a[2], b[2])
    assert all(torch.equal(jpegs.labels[idx], labels) for _, labels, idx in ref)


def test_one_loader_serves_every_epoch_with_that_epochs_crops(jpegs):
    batches = TrainBatches(jpegs, 8, seed=5, device="cpu", crops=CROPS, workers=1)
    first, second = list(batches.epoch(0)), list(batches.epoch(1))
    workers = batches.loader._iterator._workers if batches.loader._iterator is not None else []
    assert len(workers) == 1  # kept alive between epochs
    fresh = epoch_of(jpegs, 1, workers=0)
    assert all(torch.equal(a[0][0], b[0][0]) for a, b in zip(second, fresh))
    assert not torch.equal(first[0][2], second[0][2])  # another order, so other crops


def test_decoding_on_the_device_gives_the_worker_decoded_crops_within_resampling_error(jpegs):
    workers = TrainBatches(jpegs, 8, seed=5, device="cpu", crops=CROPS, workers=0)
    device = TrainBatches(jpegs, 8, seed=5, device="cpu", crops=CROPS, workers=1, decode="device")
    for (a, la, ia), (b, lb, ib) in zip(workers.epoch(0), device.epoch(0)):
        assert torch.equal(ia, ib) and torch.equal(la, lb)
        for x, y in zip(a, b):  # same boxes; the antialiased bilinear filter against roi_align's area average
            assert x.shape == y.shape and y.dtype == torch.float32
            diff = (x - y).abs() * 255
            assert diff.mean() < 4 and diff.quantile(0.99) < 40


def test_in_memory_batches_are_cut_alike_on_any_number_of_processes_and_on_resume():
    images = torch.randint(0, 256, (40, 1, 20, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = ArrayData("fmnist", images, torch.arange(40) % 10, 10)
    crops = [(16, (0.2, 1.0)), (8, (0.05, 0.2))]
    whole = list(TrainBatches(data, 8, seed=5, device="cpu", crops=crops).epoch(2))
    assert len(whole) == 5 and [tuple(v.shape) for v in whole[0][0]] == [(8, 1, 16, 16), (8, 1, 8, 8)]
    assert whole[0][0][0].dtype == torch.float32 and torch.equal(whole[0][1], data.labels[whole[0][2]])
    for rank in (0, 1):
        part = TrainBatches(data, 8, seed=5, device="cpu", crops=crops, rank=rank, world_size=2).epoch(2)
        for (views, _, idx), (ref, _, ref_idx) in zip(part, whole):
            rows = slice(4 * rank, 4 * rank + 4)
            assert torch.equal(idx, ref_idx[rows]) and all(torch.equal(v, r[rows]) for v, r in zip(views, ref))
    resumed = list(TrainBatches(data, 8, seed=5, device="cpu", crops=crops).epoch(2, start=3))
    assert all(torch.equal(v, r) for (a, _, _), (b, _, _) in zip(resumed, whole[3:]) for v, r in zip(a, b))
    (items,), _, idx = next(TrainBatches(data, 8, seed=5, device="cpu").epoch(2))  # no crops: the items themselves
    assert torch.equal(items, images[idx])
