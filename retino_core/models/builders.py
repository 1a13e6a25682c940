"""ResNet18 / ResNet50 from torchvision's builders with a 5-grade head.

ImageNet weights come through torchvision's own download code into the standard torch cache
(``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch``). Offline, a file already there
is used; when neither works, the error names the exact file and folder.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.error import URLError

import torch
from torch import nn
from torchvision import models as tvm

from ..config import ARCHS, IMAGENET_WEIGHT_URLS, NUM_CLASSES
from ..errors import (  # torch-free: the CLI and the worker catch it
    WeightsError,
    refused_load,
)
from .weights import download_failure


@dataclass(frozen=True)
class ArchSpec:
    builder: Callable[..., nn.Module]
    weights: tvm.WeightsEnum


# ImageNet-1k V1 weights: the ones torchvision's `pretrained=True` gave when the lab was set.
_REGISTRY: dict[str, ArchSpec] = {
    "resnet18": ArchSpec(tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1),
    "resnet50": ArchSpec(tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1),
}


assert tuple(_REGISTRY) == ARCHS


# retino_core.models.weights names the files without importing torch; they must be torchvision's.
assert all(IMAGENET_WEIGHT_URLS[a] == spec.weights.url for a, spec in _REGISTRY.items())


def arch_spec(arch: str) -> ArchSpec:
    try:
        return _REGISTRY[arch]
    except KeyError:
        raise ValueError(f"unknown arch {arch!r}; choose one of: {', '.join(_REGISTRY)}") from None


def weights_cache_file(arch: str) -> Path:
    """Where torchvision keeps (and looks for) the ImageNet weights of ``arch``."""
    url = arch_spec(arch).weights.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def imagenet_state_dict(arch: str, progress: bool = False) -> dict[str, torch.Tensor]:
    """ImageNet weights of ``arch`` from the torch cache, downloading them when online."""
    weights = arch_spec(arch).weights
    target = weights_cache_file(arch)
    if os.environ.get("RETINO_OFFLINE") and not target.exists():
        raise WeightsError(_missing_weights_message(arch, "RETINO_OFFLINE is set"))
    try:
        # torchvision's path: reads the cached file, or downloads it there (hash checked).
        # weights_only: a file in a shared cache is not trusted to run code when unpickled.
        return weights.get_state_dict(progress=progress, check_hash=True, weights_only=True)
    except (URLError, OSError, TimeoutError, RuntimeError, pickle.UnpicklingError) as err:
        if target.exists() and target.stat().st_size > 0 and isinstance(err, (RuntimeError, pickle.UnpicklingError)):
            raise WeightsError(
                f"the cached ImageNet weights {target} could not be loaded ({refused_load(err)}); delete the "
                f"file and retry online, or replace it with a fresh copy of {weights.url}"
            ) from None
        raise WeightsError(_missing_weights_message(arch, download_failure(err))) from None


def _missing_weights_message(arch: str, reason: str) -> str:
    url = arch_spec(arch).weights.url
    target = weights_cache_file(arch)
    return (
        f"ImageNet weights for {arch} are not in the torch cache, and {reason}. "
        f"Download {url} and save it as {target} (the folder follows $TORCH_HOME; "
        f"now {os.environ.get('TORCH_HOME', 'unset, so ~/.cache/torch')}), "
        "or install it from the Train page (ImageNet weights), or start from a local state dict with "
        "--weights PATH (the Train form's 'Start from a weights file')."
    )


def load_local_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a state dict (or a retino checkpoint) into ``model``; the head is kept when it fits."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is the same user error
        raise WeightsError(f"{path} is not a loadable state dict ({refused_load(err)})") from None
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} holds no state dict of tensors")
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}
    own = model.state_dict()
    head = {k for k in state if k.startswith("fc.") and k in own and state[k].shape != own[k].shape}
    for k in head:  # an ImageNet (1000-class) head does not fit 5 grades
        del state[k]
    wrong = [k for k in own if not k.startswith("fc.") and (k not in state or state[k].shape != own[k].shape)]
    wrong += [k for k in state if k not in own]
    if not wrong:
        model.load_state_dict(state, strict=False)
    else:
        raise WeightsError(
            f"{path} does not fit this architecture: {len(wrong)} mismatched keys, e.g. {wrong[:3]}"
        )


def build_model(arch: str, num_classes: int = NUM_CLASSES, pretrained: bool = False,
                weights: str | os.PathLike | None = None, progress: bool = False) -> nn.Module:
    """A torchvision ResNet with a ``num_classes`` head, from scratch, ImageNet or a file."""
    spec = arch_spec(arch)
    model = spec.builder(weights=None, num_classes=1000 if pretrained else num_classes)
    if pretrained:
        model.load_state_dict(imagenet_state_dict(arch, progress=progress))
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    if weights:
        load_local_weights(model, weights)
    return model


CAM_STAGES = ("layer4", "layer3", "layer2", "layer1")


MIN_CAM_CELLS = 7


@torch.no_grad()
def grad_cam_layer(model: nn.Module, image_size: int, min_cells: int = MIN_CAM_CELLS) -> tuple[str, nn.Module, tuple[int, int]]:
    """The deepest stage whose activations are at least ``min_cells`` x ``min_cells`` at
    ``image_size``: its name, the module and that grid.

    layer4 is the usual Grad-CAM layer, but it is 2 x 2 at 64 px: a heat map of four
    squares. Shallower stages keep more of the image's layout (layer2 is 8 x 8 at 64 px).
    """
    shapes: dict[str, tuple[int, int]] = {}
    hooks = [getattr(model, name).register_forward_hook(
        lambda mod, args, out, name=name: shapes.__setitem__(name, tuple(out.shape[-2:]))) for name in CAM_STAGES]
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters())
        model(torch.zeros(1, 3, image_size, image_size, dtype=param.dtype, device=param.device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    for name in CAM_STAGES:
        if min(shapes[name]) >= min_cells:
            return name, getattr(model, name), shapes[name]
    return "layer1", model.layer1, shapes["layer1"]  # a tiny input: the finest grid there is
