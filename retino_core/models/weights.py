"""ImageNet weights for --pretrained, without importing torch: where torchvision caches them,
whether a run could start now, and installing a file a user brings (checked first).

The cache folder follows torch.hub.get_dir(): ``$TORCH_HOME/hub/checkpoints``, where
TORCH_HOME defaults to ``$XDG_CACHE_HOME/torch`` and that to ``~/.cache/torch``.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
from pathlib import Path
from urllib.error import URLError
from urllib.request import Request, urlopen

from ..config import ARCHS, IMAGENET_WEIGHT_URLS
from ..errors import WeightsError, refused_load


def cache_dir() -> Path:
    """torch.hub's checkpoints folder (without importing torch)."""
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints"


def file_name(arch: str) -> str:
    if arch not in IMAGENET_WEIGHT_URLS:
        raise ValueError(f"unknown arch {arch!r}; choose one of: {', '.join(ARCHS)}")
    return os.path.basename(IMAGENET_WEIGHT_URLS[arch])


def cached_file(arch: str) -> Path:
    return cache_dir() / file_name(arch)


def hash_prefix(arch: str) -> str:
    """The start of the file's SHA-256 that torchvision puts in its name (resnet18-f37072fd.pth)."""
    return file_name(arch).rsplit("-", 1)[1].split(".")[0]


def download_failure(err: BaseException) -> str:
    """Why a download failed, in plain words: no network (no name service, no route, refused,
    timed out), or what the server answered."""
    reason = getattr(err, "reason", err)
    code = getattr(err, "code", None)
    if isinstance(code, int):
        return f"the download server answered HTTP {code}: the file can't be downloaded"
    if isinstance(reason, (socket.gaierror, ConnectionError, TimeoutError, socket.timeout)) or any(
            words in str(reason) for words in NO_NETWORK_WORDS):
        return "no network here: the file can't be downloaded"
    return f"the file can't be downloaded ({reason})"


# What the system says when this machine cannot reach the internet at all.
NO_NETWORK_WORDS = ("Name or service not known", "Temporary failure in name resolution", "Network is unreachable",
                    "No route to host", "Connection refused", "timed out", "nodename nor servname")


def ready(arch: str, timeout: float = 3.0) -> tuple[bool, str]:
    """Whether a ``--pretrained`` run of ``arch`` can start: the weights are in the torch cache,
    or the download server answers. The reason says which, or what to do."""
    target = cached_file(arch)
    if target.is_file() and target.stat().st_size > 0:
        return True, f"ImageNet weights in {target}"
    url = IMAGENET_WEIGHT_URLS[arch]
    todo = (f"install {target.name} (from {url}) on the Train page under ImageNet weights, or put it into "
            f"{target.parent}")
    if os.environ.get("RETINO_OFFLINE"):
        return False, f"needs the ImageNet weights file, which is not in the torch cache (RETINO_OFFLINE is set): {todo}"
    try:
        with urlopen(Request(url, method="HEAD"), timeout=timeout):
            return True, f"ImageNet weights for {arch} download from {url} when the run starts"
    except (URLError, OSError, TimeoutError, ValueError) as err:
        return False, f"needs the ImageNet weights file, which is not in the torch cache, and {download_failure(err)}: {todo}"


def install(data: bytes, name: str = "") -> tuple[str, Path]:
    """Check a file of ImageNet weights and put it into the torch cache; returns (arch, path).

    Refused, with the reason: a file whose SHA-256 starts like neither ResNet's published
    weights, one that does not load with ``weights_only`` (a pickle that would run code), and a
    state dict that does not fit the architecture its hash names.
    """
    import torch
    from torchvision import models as tvm

    label = name or "the file"
    digest = hashlib.sha256(data).hexdigest()
    arch = next((a for a in ARCHS if digest.startswith(hash_prefix(a))), None)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)  # never runs code
    except Exception as err:  # noqa: BLE001 - any failure to load safely is the same refusal
        state, why = None, refused_load(err)
    if arch is None:
        expected = " or ".join(f"{file_name(a)} ({hash_prefix(a)}…, from {IMAGENET_WEIGHT_URLS[a]})" for a in ARCHS)
        raise WeightsError(f"{label} is not torchvision's ImageNet weights for ResNet18 or ResNet50: "
                           f"{_what_it_is(state, why if state is None else '')}; its SHA-256 starts {digest[:8]}, "
                           f"and the right files are {expected}")
    if state is None:
        raise WeightsError(f"{label} is not a loadable state dict ({why})") from None
    model = getattr(tvm, arch)(weights=None, num_classes=1000)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError, ValueError) as err:
        first = str(err).strip().splitlines()[0][:200]
        raise WeightsError(f"{label} has the hash of {arch}'s weights but does not fit a {arch}: {first}") from None
    target = cached_file(arch)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)  # a trainer reading the cache never sees half a file
    return arch, target


def _what_it_is(state, why: str) -> str:
    """What a file that is not the ImageNet weights is instead, as far as can be told safely."""
    if state is None:
        return f"it is not a PyTorch weights file at all ({why})"
    if isinstance(state, dict) and "model" in state and "config" in state:
        return ("it is a retino checkpoint (a trained run), not ImageNet weights: to start from it, use "
                "'Start from a weights file' on the Train page (--weights)")
    if isinstance(state, dict):
        return ("it is a PyTorch state dict, but not the published one (another model's weights, or a "
                "re-saved or changed copy): to start from it, use 'Start from a weights file' (--weights)")
    return f"it holds a {type(state).__name__}, not a state dict of tensors"


def install_from(path: str | os.PathLike) -> tuple[str, Path]:
    """install() for a file on this machine (the Train page's path field)."""
    source = Path(path).expanduser()
    if not source.is_file():
        raise WeightsError(f"{source} is not a file")
    if source.stat().st_size > 1_000_000_000:
        raise WeightsError(f"{source} is {source.stat().st_size / 1e9:.1f} GB: not a ResNet's weights")
    return install(source.read_bytes(), str(source))


def refused_pretrained(configs: list) -> list[tuple[object, str]]:
    """The configs (TrainConfig or dicts) whose ImageNet weights are not to be had now, with
    the reason; a config with its own ``weights`` file is not checked here."""
    out, checked = [], {}
    for cfg in configs:
        get = cfg.get if isinstance(cfg, dict) else lambda k, c=cfg: getattr(c, k)
        if not get("pretrained") or get("weights"):
            continue
        arch = get("arch")
        if arch not in checked:
            checked[arch] = ready(arch)
        ok, reason = checked[arch]
        if not ok:
            out.append((cfg, reason))
    return out
