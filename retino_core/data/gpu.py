"""The GPU data path: batches decoded, resized and augmented on the device.

``build_device_loaders`` stands in for the DataLoaders of ``training.loaders.build_loaders`` when the
config asks for ``gpu_data`` and the device is a GPU. Its loaders yield ``(x, y)`` already on
the device (``x`` normalised float, channels_last on CUDA; ``y`` int64), and nothing in them
waits for the GPU, so the host runs ahead and the GPU never starves.

Where the pixels come from:
- an in-memory source (RetinaMNIST) is resized once to the training size and kept on the
  device as uint8 (``DeviceCache``); a batch is an index into it;
- image files are read by DataLoader workers as encoded bytes (plain ``bytes``: many small
  tensors sent from workers exhaust file descriptors) and a whole batch is decoded on the
  device with nvJPEG (``torchvision.io.decode_jpeg(..., device=...)``), then resized there.
  PNG and other non-JPEG files, and the ``crop`` / ``ben_graham`` preprocessing, are done by
  the workers on the CPU exactly as in transforms.py and sent as raw pixels.

``GpuTransform`` follows transforms.py: ``flip`` is random h/v flips; ``strong`` is a random
resized crop (scale 0.75-1, ratio 0.9-1.1), h/v flips and a rotation of up to 30 degrees done
as one bilinear resampling, then brightness 0.2 / contrast 0.2 / saturation 0.1 / hue 0.02
jitter as one colour matrix per image (hue turned in YIQ space, the four in a fixed order,
clamped once). Every draw is per image. The same code runs on the CPU, which is how the tests
cover it.
"""

from __future__ import annotations

import math
import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    RandomSampler,
    Sampler,
    SequentialSampler,
)
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ..config import IMAGENET_MEAN, IMAGENET_STD, TrainConfig
from .images import load_image
from .splits import DataSource, Split
from .transforms import RetinaPreprocess

JPEG_MAGIC = b"\xff\xd8\xff"


# An in-memory source is cached on the GPU when all its splits take at most this share of the
# free memory; otherwise its images are streamed like files.
CACHE_SHARE = 0.25


GREY = (0.299, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def wanted(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether the trainer takes this path: the config asks for it and the device is a GPU."""
    return bool(cfg.gpu_data) and device.type == "cuda"


def random_flips(x: torch.Tensor) -> torch.Tensor:
    """Each image flipped left-right and, independently, up-down with probability 1/2."""
    u = torch.rand(x.shape[0], 2, device=x.device)
    x = torch.where((u[:, 0] < 0.5).view(-1, 1, 1, 1), x.flip(-1), x)
    return torch.where((u[:, 1] < 0.5).view(-1, 1, 1, 1), x.flip(-2), x)


def random_affine(x: torch.Tensor, scale=(0.75, 1.0), ratio=(0.9, 1.1), degrees: float = 30.0,
                  flips: bool = True) -> torch.Tensor:
    """RandomResizedCrop + h/v flips + RandomRotation of float (N, C, S, S), one resampling.

    Output pixel u comes from ``centre + diag(w, h) @ flip @ rotation @ u`` in the normalised
    coordinates of ``grid_sample``; what falls outside the image is black, like the rotation's
    fill in transforms.py.
    """
    n, dev = x.shape[0], x.device
    u = torch.rand(n, 7, device=dev)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, 1])
    w = (area * aspect).sqrt().clamp(max=1.0)  # crop width as a share of the image width
    h = (area / aspect).sqrt().clamp(max=1.0)
    cx = (1 - w) * (2 * u[:, 2] - 1)  # crop centre, kept inside the image
    cy = (1 - h) * (2 * u[:, 3] - 1)
    angle = math.radians(degrees) * (2 * u[:, 4] - 1)
    fx = torch.where(u[:, 5] < 0.5, -1.0, 1.0) if flips else torch.ones_like(w)
    fy = torch.where(u[:, 6] < 0.5, -1.0, 1.0) if flips else torch.ones_like(w)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([
        torch.stack([w * fx * cos, -w * fx * sin, cx], 1),
        torch.stack([h * fy * sin, h * fy * cos, cy], 1),
    ], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@lru_cache(maxsize=None)
def _constants(device: torch.device) -> dict[str, torch.Tensor]:
    # Made once per device: torch.tensor(..., device="cuda") waits for the GPU, so never per batch.
    return {"grey": torch.tensor(GREY, device=device), "eye": torch.eye(3, device=device),
            "to_yiq": torch.tensor(RGB_TO_YIQ, dtype=torch.float32, device=device),
            "from_yiq": torch.tensor(np.linalg.inv(RGB_TO_YIQ), dtype=torch.float32, device=device)}


def _hue_matrices(turns: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) RGB matrices turning the hue by ``turns`` of a full circle (YIQ rotation)."""
    k = _constants(turns.device)
    a = -2 * math.pi * turns  # the sign of torchvision's adjust_hue
    rot = torch.zeros(len(turns), 3, 3, device=turns.device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2] = a.cos(), -a.sin()
    rot[:, 2, 1], rot[:, 2, 2] = a.sin(), a.cos()
    return k["from_yiq"] @ rot @ k["to_yiq"]


def color_jitter(x: torch.Tensor, brightness: float = 0.2, contrast: float = 0.2,
                 saturation: float = 0.1, hue: float = 0.02) -> torch.Tensor:
    """ColorJitter of float RGB (N, 3, H, W) in [0, 1] with one draw of each factor per image.

    Brightness, saturation and hue are linear in RGB and contrast blends with the mean grey, so
    the four make one 3x3 matrix plus an offset per image.
    """
    n, dev = x.shape[0], x.device
    u = 2 * torch.rand(n, 4, device=dev) - 1
    b, c, s = 1 + brightness * u[:, 0], 1 + contrast * u[:, 1], 1 + saturation * u[:, 2]
    grey, eye = _constants(dev)["grey"], _constants(dev)["eye"]
    sat = s.view(-1, 1, 1) * eye + (1 - s).view(-1, 1, 1) * grey.expand(3, 3)
    matrix = (b * c).view(-1, 1, 1) * (_hue_matrices(hue * u[:, 3]) @ sat)
    # The contrast blend's grey level: the mean grey of the brightened image.
    mean_grey = b * (x.mean(dim=(2, 3)) @ grey)
    offset = ((1 - c) * mean_grey).view(-1, 1, 1, 1)
    out = torch.bmm(matrix, x.reshape(n, 3, -1)).view_as(x) + offset
    return out.clamp_(0, 1)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (…, C, H, W) to (…, C, size, size), bilinear with antialiasing like v2.Resize."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return TF.resize(x, [size, size], antialias=True)


class GpuTransform:
    """uint8 (N, 3, H, W) on any device -> normalised float (N, 3, S, S), as transforms.py."""

    def __init__(self, image_size: int, augment: str = "none", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 channels_last: bool = False):
        if augment not in ("none", "flip", "strong"):
            raise ValueError(f"unknown augment {augment!r}; choose one of: none, flip, strong")
        self.image_size, self.augment, self.channels_last = int(image_size), augment, channels_last
        self.mean, self.std = tuple(mean), tuple(std)
        self._stats: dict = {}

    def _scale_shift(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._stats:  # once per device, like _constants
            std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
            mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
            self._stats[device] = (1 / std, mean / std)
        return self._stats[device]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = resize(x, self.image_size)
        if self.augment == "flip":
            x = random_flips(x)
        x = x.float().div_(255)
        if self.augment == "strong":
            x = color_jitter(random_affine(x))
        scale, shift = self._scale_shift(x.device)
        x = x * scale - shift
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def read_bytes(path: str | os.PathLike) -> bytes:
    """A file's bytes; a missing, unreadable or empty file raises ImageError naming it."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        load_image(path)  # raises ImageError saying what is wrong with the file
        raise
    if not data:
        load_image(data, str(path))
    return data


class EncodedImages:
    """Map-style dataset of ``(payload, shape, grade, name)`` for DataLoader workers.

    ``shape`` is None when ``payload`` is a JPEG file to decode on the device, else the
    ``(height, width)`` of raw RGB uint8 pixels. Only bytes and numbers cross processes.
    """

    def __init__(self, split: Split, image_size: int, preprocess: str = "none"):
        self.split = split
        self.cpu_steps = None
        if preprocess not in (None, "none"):
            self.cpu_steps = v2.Compose([RetinaPreprocess(preprocess),
                                         v2.Resize((image_size, image_size), antialias=True)])

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        split = self.split
        label = int(split.labels[i])
        name = str(split.paths[i]) if split.paths is not None else split.names[i]
        if self.cpu_steps is not None:
            arr = np.asarray(self.cpu_steps(split.image(i)), dtype=np.uint8)
        elif split.images is not None:
            arr = np.ascontiguousarray(split.images[i], dtype=np.uint8)
        else:
            data = read_bytes(split.paths[i])
            if data.startswith(JPEG_MAGIC):
                return data, None, label, name
            arr = np.asarray(load_image(data, name), dtype=np.uint8)
        return arr.tobytes(), arr.shape[:2], label, name


def _collate(items):
    payloads, shapes, labels, names = zip(*items)
    return list(payloads), list(shapes), list(labels), list(names)


def _frombytes(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


_SIDE_STREAMS: dict = {}


def _nvjpeg(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """decode_jpeg of a list on ``device``, ordered safely against the work already queued.

    torchvision allocates the outputs on the current stream but nvJPEG writes them on a stream
    of its own, unordered with what is still queued on the current one: a block just freed by
    that work could be overwritten while a kernel still reads it. Allocating under a side
    stream, and marking the outputs as used by the compute stream, keeps every use in order.
    """
    if device.type != "cuda":
        return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
    compute = torch.cuda.current_stream(device)
    side = _SIDE_STREAMS.setdefault(device, torch.cuda.Stream(device))
    with torch.cuda.stream(side):
        out = list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
    compute.wait_stream(side)
    for img in out:
        img.record_stream(compute)
    return out


def _decode_jpegs(datas: Sequence[bytes], names: Sequence[str], device: torch.device) -> list[torch.Tensor]:
    tensors = [_frombytes(d) for d in datas]
    try:
        return _nvjpeg(tensors, device)
    except RuntimeError:
        pass  # find the file at fault, or decode with Pillow what nvJPEG cannot (e.g. CMYK)
    out = []
    for t, data, name in zip(tensors, datas, names):
        try:
            out.append(_nvjpeg([t], device)[0])
        except RuntimeError as err:
            arr = np.asarray(load_image(data, name), dtype=np.uint8)  # ImageError names a broken file
            if device.type == "cuda" and not _warned_fallback:
                _warn_fallback(name, err)
            out.append(torch.from_numpy(arr.copy()).permute(2, 0, 1).to(device))
    return out


_warned_fallback = False


def _warn_fallback(name: str, err: Exception) -> None:
    global _warned_fallback
    _warned_fallback = True
    warnings.warn(f"nvJPEG could not decode {name} ({str(err).splitlines()[0]}); such files are decoded "
                  "by Pillow in the training process, which is slower", RuntimeWarning, stacklevel=3)


def decode_batch(payloads: Sequence[bytes], shapes: Sequence, names: Sequence[str], size: int,
                 device: torch.device) -> torch.Tensor:
    """uint8 (N, 3, size, size) on ``device`` from EncodedImages payloads, in their order."""
    images: list = [None] * len(payloads)
    jpegs = [i for i, s in enumerate(shapes) if s is None]
    if jpegs:
        decoded = _decode_jpegs([payloads[i] for i in jpegs], [names[i] for i in jpegs], device)
        for i, img in zip(jpegs, decoded):
            images[i] = img
    for i, shape in enumerate(shapes):
        if shape is not None:
            h, w = shape
            images[i] = _frombytes(payloads[i]).view(h, w, 3).permute(2, 0, 1).to(device, non_blocking=True)
    if all(img.shape == images[0].shape for img in images):
        return resize(torch.stack(images), size)  # one batched resize, usually none at all
    return torch.stack([resize(img, size) for img in images])


class FileBatches:
    """uint8 batches decoded on the device from files read by DataLoader workers."""

    def __init__(self, split: Split, sampler: Sampler, batch_size: int, drop_last: bool, workers: int,
                 image_size: int, preprocess: str, device: torch.device):
        extra = {"prefetch_factor": 4} if workers > 0 else {}
        self.loader = DataLoader(EncodedImages(split, image_size, preprocess), batch_size=batch_size,
                                 sampler=sampler, drop_last=drop_last, num_workers=workers,
                                 persistent_workers=workers > 0, collate_fn=_collate, **extra)
        self.sampler, self.size, self.device = sampler, image_size, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for payloads, shapes, labels, names in self.loader:
            x = decode_batch(payloads, shapes, names, self.size, self.device)
            yield x, torch.tensor(labels, dtype=torch.long).to(self.device, non_blocking=True)


class DeviceCache:
    """A split's images resized once to the training size and held on the device as uint8."""

    def __init__(self, split: Split, sampler: Sampler, batch_size: int, drop_last: bool, image_size: int,
                 device: torch.device, chunk: int = 256):
        assert split.images is not None
        n = len(split)
        self.images = torch.empty((n, 3, image_size, image_size), dtype=torch.uint8, device=device)
        for start in range(0, n, chunk):
            part = torch.from_numpy(np.ascontiguousarray(split.images[start:start + chunk]))
            self.images[start:start + chunk] = resize(part.to(device).permute(0, 3, 1, 2), image_size)
        self.labels = torch.as_tensor(split.labels, dtype=torch.long).to(device)
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last

    def __len__(self) -> int:
        return len(BatchSampler(self.sampler, self.batch_size, self.drop_last))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # One small copy per epoch; every batch after it is an index on the device.
        order = torch.as_tensor(list(self.sampler), dtype=torch.long).to(self.images.device, non_blocking=True)
        stop = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
        for start in range(0, stop, self.batch_size):
            idx = order[start:start + self.batch_size]
            yield self.images.index_select(0, idx), self.labels.index_select(0, idx)


class DeviceLoader:
    """Batches ``(x, y)`` on the device: uint8 pixels from ``batches`` through ``transform``."""

    def __init__(self, batches: FileBatches | DeviceCache, transform: GpuTransform):
        self.batches, self.transform = batches, transform
        self.sampler = batches.sampler  # the trainer's set_epoch finds it here

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.batches:
            yield self.transform(x), y


def _fits_on_device(source: DataSource, image_size: int, device: torch.device) -> bool:
    if any(s.images is None for s in source.splits.values()):
        return False
    need = sum(len(s) for s in source.splits.values()) * 3 * image_size ** 2
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return need <= CACHE_SHARE * free


def build_device_loaders(cfg: TrainConfig, source: DataSource, device: torch.device,
                         train_sampler: Sampler | None, batch_size: int, workers: int,
                         mean=IMAGENET_MEAN, std=IMAGENET_STD,
                         eval_sampler: Callable[[int], Sampler | None] = lambda n: None) -> dict[str, DeviceLoader]:
    """Loaders for every split on the GPU path: the samplers and batch sizes of build_loaders
    (``eval_sampler(n)``: an evaluation split's sampler, e.g. this process's shard under torchrun)."""
    if device.type == "cuda" and device.index is None:  # nvJPEG wants the GPU named
        device = torch.device("cuda", torch.cuda.current_device())
    cache = cfg.preprocess in (None, "none") and _fits_on_device(source, cfg.image_size, device)
    channels_last = cfg.channels_last and device.type == "cuda"
    loaders = {}
    for name, split in source.splits.items():
        train = name == "train"
        if not train and not len(split):
            continue
        n = len(split)
        sampler = train_sampler if train else eval_sampler(n)
        if sampler is None:
            sampler = RandomSampler(range(n)) if train else SequentialSampler(range(n))
        bs = batch_size if train else batch_size * 2
        drop_last = train and len(sampler) > bs
        if cache:
            batches = DeviceCache(split, sampler, bs, drop_last, cfg.image_size, device)
        else:
            batches = FileBatches(split, sampler, bs, drop_last, workers, cfg.image_size, cfg.preprocess, device)
        transform = GpuTransform(cfg.image_size, cfg.augment if train else "none", mean, std, channels_last)
        loaders[name] = DeviceLoader(batches, transform)
    return loaders
