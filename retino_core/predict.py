"""Load a run's checkpoint into a Predictor; grade images; explain them with Grad-CAM."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from . import runs
from .config import GRADE_NAMES, NUM_CLASSES
from .data import load_image
from .errors import CheckpointError, refused_load  # torch-free: the CLI and the worker catch it
from .metrics import softmax
from .models import build_model, grad_cam_layer
from .transforms import build_eval_transform, tta_views


@dataclass
class Prediction:
    grade: int
    grade_name: str
    probabilities: list[float]
    name: str = ""

    def to_dict(self) -> dict:
        return {"image": self.name, "grade": self.grade, "grade_name": self.grade_name,
                "probabilities": {GRADE_NAMES[i]: p for i, p in enumerate(self.probabilities)}}


class Predictor:
    """A trained model plus the exact preprocessing it was evaluated with."""

    def __init__(self, model: torch.nn.Module, preprocessing: dict, temperature: float = 1.0,
                 arch: str = "", run_id: str = "", tta: bool = False):
        # channels_last: 20-30 % faster than NCHW on the CPU, same numbers (bench/cpu_latency.py).
        self.model = model.eval().to(memory_format=torch.channels_last)
        self._cam_lock = threading.Lock()
        self.pre = preprocessing
        self.temperature = float(temperature or 1.0)
        self.arch, self.run_id = arch, run_id
        # Whether the run's metrics and temperature came from flip-averaged logits: the default
        # of every call below, so a prediction matches what the run reported.
        self.tta = bool(tta)
        self.transform = build_eval_transform(preprocessing["image_size"], preprocessing.get("preprocess", "none"),
                                              preprocessing["mean"], preprocessing["std"])

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, run_id: str = "") -> "Predictor":
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} not found (has the run finished an epoch?)")
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
        except Exception as err:  # noqa: BLE001 - any failure here is 'not our checkpoint'
            raise CheckpointError(f"{path} is not a loadable checkpoint ({refused_load(err)})") from None
        if not isinstance(ck, dict) or "model" not in ck or "preprocessing" not in ck:
            raise CheckpointError(f"{path} is not a retino checkpoint (no model / preprocessing)")
        model = build_model(ck["arch"], ck.get("num_classes", NUM_CLASSES))
        model.load_state_dict(ck["model"])
        return cls(model, ck["preprocessing"], ck.get("temperature", 1.0), ck["arch"], run_id,
                   bool(ck.get("tta", False)))

    @classmethod
    def from_run(cls, run: str | os.PathLike, which: str = "best", runs_dir: Path | None = None) -> "Predictor":
        run_dir = runs.resolve_run_dir(run, runs_dir)
        return cls.from_checkpoint(runs.checkpoint_path(run_dir, which), run_dir.name)

    def batch(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self.transform(img) for img in images]).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def logits(self, images: Sequence[Image.Image], tta: bool | None = None) -> np.ndarray:
        """Logits (N, 5); ``tta=None`` follows the run (``self.tta``)."""
        x = self.batch(images)
        views = tta_views(x) if (self.tta if tta is None else tta) else [x]
        return torch.stack([self.model(v) for v in views]).mean(0).float().numpy()

    def probabilities(self, images: Sequence[Image.Image], tta: bool | None = None,
                      calibrated: bool = True) -> np.ndarray:
        return softmax(self.logits(images, tta), self.temperature if calibrated else 1.0)

    def predict(self, images: Sequence[Image.Image], names: Sequence[str] | None = None,
                tta: bool | None = None, calibrated: bool = True) -> list[Prediction]:
        probs = self.probabilities(images, tta, calibrated)
        names = names or [""] * len(images)
        return [Prediction(int(p.argmax()), GRADE_NAMES[int(p.argmax())], [float(v) for v in p], n)
                for p, n in zip(probs, names)]

    def predict_files(self, paths: Sequence[str | os.PathLike], tta: bool | None = None) -> list[Prediction]:
        """Grade image files; an unreadable file raises ImageError naming it."""
        images = [load_image(p) for p in paths]
        return self.predict(images, [str(p) for p in paths], tta)

    def grad_cam(self, image: Image.Image, target: int | None = None) -> np.ndarray:
        """Grad-CAM heat map (H, W) in [0, 1] at the image's size, via captum's LayerGradCam."""
        from captum.attr import LayerAttribution, LayerGradCam

        x = self.batch([image]).requires_grad_(True)
        if target is None:
            with torch.no_grad():
                target = int(self.model(x).argmax(1))
        # captum hooks the shared model for the call: one explanation at a time per model
        # (the app serves every browser session from one cached Predictor).
        with self._cam_lock:
            cam = LayerGradCam(self.model, grad_cam_layer(self.model)).attribute(
                x, target=target, relu_attributions=True)
        cam = LayerAttribution.interpolate(cam, (image.height, image.width), "bilinear")
        heat = cam.detach()[0, 0].numpy()
        hi = heat.max()
        return heat / hi if hi > 0 else heat


def overlay(image: Image.Image, heat: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """Blend a [0, 1] heat map over the image in a red-yellow ramp."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    h = np.clip(heat, 0, 1)[..., None]
    colour = np.concatenate([np.ones_like(h), h, np.zeros_like(h)], axis=-1) * 255
    out = rgb * (1 - alpha * h) + colour * (alpha * h)
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))
