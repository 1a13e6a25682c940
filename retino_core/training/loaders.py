"""DataLoaders for every split of a run: CPU transforms, or the GPU path when it is wanted.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from ..config import IMAGENET_MEAN, IMAGENET_STD, NUM_CLASSES, TrainConfig
from ..data import gpu
from ..data.images import check_images
from ..data.sources import source_of
from ..data.splits import DataSource, SplitDataset
from ..data.transforms import build_eval_transform, build_train_transform
from ..errors import TrainingFailed
from . import distributed
from .launch import usable_cpus


def preprocessing(cfg: TrainConfig) -> dict:
    """What an image must go through before the model: stored with the weights."""
    return {"image_size": int(cfg.image_size), "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "preprocess": cfg.preprocess}


def _workers(cfg: TrainConfig, source: DataSource, device: torch.device) -> int:
    if cfg.num_workers >= 0:
        return cfg.num_workers
    if device.type == "cpu" and source.kind == "retinamnist":
        return 0  # tiny in-memory images: workers would only compete for the 2 cores
    if device.type == "cpu":
        # Torch's own threads use every core (unless told fewer): a worker would take its core
        # from the model, and on 2 cores decoding in the training process was as fast or ~10 %
        # faster (bench/throughput.py --workers 1 vs 0). Workers get only the cores left free.
        return max(0, min(8, len(usable_cpus()) - torch.get_num_threads()))
    return max(0, min(8, len(usable_cpus()) - 1))


def build_loaders(cfg: TrainConfig, source: DataSource, device: torch.device) -> dict[str, DataLoader]:
    """DataLoaders for every split; train shuffled (or class-balanced) with augmentation."""
    pre = preprocessing(cfg)
    train_tf = build_train_transform(cfg.image_size, cfg.augment, cfg.preprocess, pre["mean"], pre["std"])
    eval_tf = build_eval_transform(cfg.image_size, cfg.preprocess, pre["mean"], pre["std"])
    workers = _workers(cfg, source, device)
    common = dict(num_workers=workers, pin_memory=device.type == "cuda",
                  persistent_workers=workers > 0)
    if workers > 0:
        common["prefetch_factor"] = 4
    train = source.splits["train"]
    if len(train) == 0:
        raise TrainingFailed("the training split is empty")
    sampler = None
    if cfg.sampler == "weighted":
        counts = np.maximum(np.bincount(train.labels, minlength=NUM_CLASSES), 1)
        sampler = WeightedRandomSampler(torch.as_tensor(1.0 / counts[train.labels]), len(train))
    # Under torchrun: this rank's shard and its share of the (global) batch.
    sampler, batch_size = distributed.train_sampler(sampler, len(train), cfg.batch_size, cfg.seed)
    if gpu.wanted(cfg, device):
        return gpu.build_device_loaders(cfg, source, device, sampler, batch_size, workers,
                                        pre["mean"], pre["std"], distributed.eval_sampler)
    loaders = {"train": DataLoader(
        SplitDataset(train, train_tf), batch_size=batch_size, shuffle=sampler is None,
        sampler=sampler, drop_last=len(train) > cfg.batch_size, **common)}
    for name, split in source.splits.items():
        if name != "train" and len(split):
            loaders[name] = DataLoader(SplitDataset(split, eval_tf), batch_size=batch_size * 2,
                                       sampler=distributed.eval_sampler(len(split)), shuffle=False, **common)
    return loaders


def open_data(cfg: TrainConfig, device: torch.device, source: DataSource | None = None) -> tuple[DataSource, dict]:
    """The data source (image headers checked) and a loader per split."""
    source = source or source_of(cfg)
    for name, split in source.splits.items():  # headers only: seconds for 35k files
        if split.paths is not None:
            check_images(split.paths, f"the {name} split of {source.name}")
    return source, build_loaders(cfg, source, device)
