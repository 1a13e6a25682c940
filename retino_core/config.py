"""Training configuration: one dataclass, stored as a plain dict, and named presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

ARCHS = ("resnet18", "resnet50")
REFERABLE_GRADE = 2  # grade >= 2 (moderate or worse) is referable DR in screening
COLLAPSE_SHARE = 0.95  # a model that gives one grade this share of its answers has collapsed
# The range metrics.fit_temperature searches; a fit at either end means calibration failed.
TEMPERATURE_RANGE = (0.05, 20.0)
# torchvision's ImageNet-1k V1 weights (the ones the lab used); models/builders.py checks they match.
IMAGENET_WEIGHT_URLS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
}
OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("none", "cosine", "onecycle")
AUGMENTS = ("none", "flip", "strong")
LOSSES = ("ce", "weighted_ce", "focal", "ordinal")
SAMPLERS = ("none", "weighted")
PREPROCESS = ("none", "crop", "ben_graham")
SELECT_METRICS = ("acc", "qwk", "auc", "loss")
DEVICES = ("auto", "cpu", "cuda")
NUM_CLASSES = 5
GRADE_NAMES = ("No DR", "Mild", "Moderate", "Severe", "Proliferative")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConfigError(ValueError):
    """A training setting with a value the trainer cannot use."""


@dataclass
class TrainConfig:
    """Everything that decides what a training run does; saved as config.json."""

    data: str = "retinamnist"
    arch: str = "resnet18"
    pretrained: bool = False
    weights: str | None = None  # local state dict to start from
    preset: str = "cpu"
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    optimizer: str = "adamw"
    momentum: float = 0.9
    weight_decay: float = 0.05
    scheduler: str = "cosine"
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    image_size: int = 64
    augment: str = "strong"
    preprocess: str = "none"
    loss: str = "ce"
    sampler: str = "none"
    select_metric: str = "loss"
    ema: float = 0.0  # decay of an exponential moving average of weights; 0 = off
    tta: bool = False  # average the flips at final evaluation (val, test, temperature)
    val_fraction: float = 0.1
    seed: int = 0
    # Which images belong to one patient, where the file names do not say it in a known way:
    # a column of the labels CSV, or a regular expression whose first group is the patient.
    patient_column: str = ""
    patient_regex: str = ""
    device: str = "auto"
    num_workers: int = -1  # -1: pick from the device and the CPU count
    amp: bool = True  # bf16 autocast on CUDA
    channels_last: bool = True
    compile: bool = False
    gpu_data: bool = True  # on CUDA: decode once into a uint8 cache, augment on the GPU
    max_steps_per_epoch: int = 0  # 0 = whole epoch; tests and smoke runs cap it
    processes: int = 1  # >1: trained under torchrun, one process per GPU (or CPU slot)
    name: str = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "TrainConfig":
        """Raise ConfigError naming the first bad field and its valid choices."""
        choices = {
            "arch": ARCHS, "optimizer": OPTIMIZERS, "scheduler": SCHEDULERS,
            "augment": AUGMENTS, "loss": LOSSES, "sampler": SAMPLERS,
            "preprocess": PREPROCESS, "select_metric": SELECT_METRICS, "device": DEVICES,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(
                    f"unknown {key} {getattr(self, key)!r}; choose one of: {', '.join(allowed)}"
                )
        if self.preset not in PRESETS and self.preset != "custom":
            raise ConfigError(
                f"unknown preset {self.preset!r}; choose one of: {', '.join(PRESETS)}"
            )
        positive = ("epochs", "batch_size", "image_size")
        for key in positive:
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"{key} must be at least 1, got {getattr(self, key)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.val_fraction < 0.5:
            raise ConfigError(f"val_fraction must be in [0, 0.5), got {self.val_fraction}")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"ema must be in [0, 1), got {self.ema}")
        if not 1 <= int(self.processes) <= 64:
            raise ConfigError(f"processes must be from 1 to 64, got {self.processes}")
        if self.image_size < 16:
            raise ConfigError(f"image_size must be at least 16 pixels, got {self.image_size}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Build from a dict, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def replace(self, **changes: Any) -> "TrainConfig":
        return replace(self, **changes)


# Each preset is a full set of overrides of the dataclass defaults.
PRESETS: dict[str, dict[str, Any]] = {
    # The lab report's recipe, kept as it was to reproduce its numbers (and its collapse).
    "lab": dict(
        epochs=10, batch_size=8, lr=1e-3, optimizer="sgd", momentum=0.9, weight_decay=5e-4,
        scheduler="none", warmup_epochs=0.0, image_size=512, augment="flip",
        label_smoothing=0.0, select_metric="acc", ema=0.0, gpu_data=False, compile=False,
    ),
    # A GPU recipe that learns the minority grades: bigger batches, AdamW, cosine, strong aug.
    "fast": dict(
        epochs=10, batch_size=64, lr=1e-3, optimizer="adamw", weight_decay=0.05,
        scheduler="cosine", warmup_epochs=1.0, image_size=512, augment="strong",
        label_smoothing=0.05, select_metric="qwk", ema=0.0, gpu_data=True, compile=True,
    ),
    # RetinaMNIST on a laptop CPU in minutes, from scratch.
    # Strong augmentation, weight EMA and flip TTA each helped in both seeds of the ablation
    # (bench/results/ablations.md). ResNet50 gets fewer epochs (PRESET_ARCH) to stay near
    # 5 minutes on 2 cores.
    "cpu": dict(
        epochs=30, batch_size=64, lr=2e-3, optimizer="adamw", weight_decay=0.05,
        scheduler="cosine", warmup_epochs=1.0, image_size=64, augment="strong",
        label_smoothing=0.1, select_metric="loss", ema=0.99, tta=True, gpu_data=False, compile=False,
    ),
}


# Per-architecture changes to a preset, applied before explicit overrides.
PRESET_ARCH: dict[str, dict[str, dict[str, Any]]] = {
    # A ResNet50 epoch takes about 2.4x a ResNet18 one on the CPU.
    "cpu": {"resnet50": {"epochs": 24}},
}


def make_config(preset: str = "cpu", **overrides: Any) -> TrainConfig:
    """A TrainConfig from a preset (with its per-architecture changes), then explicit
    overrides (None values are ignored)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    values = dict(PRESETS[preset])
    arch = overrides.get("arch") or values.get("arch") or TrainConfig.arch
    values.update(PRESET_ARCH.get(preset, {}).get(arch, {}))
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["preset"] = preset
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    return TrainConfig(**values)
