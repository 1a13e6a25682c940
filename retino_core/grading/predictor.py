"""Load a run's checkpoint into a Predictor; grade images; explain them with Grad-CAM.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .. import runs
from ..config import GRADE_NAMES, NUM_CLASSES
from ..data.images import load_image
from ..data.transforms import build_eval_transform, tta_views
from ..errors import (  # torch-free: the CLI and the worker catch it
    CheckpointError,
    refused_load,
)
from ..judging import ood, photo
from ..judging.metrics import softmax
from ..judging.ood import FeatureTap
from ..judging.photo import ImageCheck, field_of_view
from ..models.builders import build_model, grad_cam_layer


@dataclass
class Prediction:
    grade: int
    grade_name: str
    probabilities: list[float]
    name: str = ""
    check: ImageCheck | None = None

    def to_dict(self) -> dict:
        out = {"image": self.name, "grade": self.grade, "grade_name": self.grade_name,
               "probabilities": {GRADE_NAMES[i]: p for i, p in enumerate(self.probabilities)}}
        if self.check is not None:
            out.update(self.check.to_dict())
        return out


# An upload this many times the training size (on its short side) is said to be shrunk.
THUMBNAIL_FACTOR = 4


class Predictor:
    """A trained model plus the exact preprocessing it was evaluated with."""

    def __init__(self, model: torch.nn.Module, preprocessing: dict, temperature: float = 1.0,
                 arch: str = "", run_id: str = "", tta: bool = False, ood_stats: dict | None = None,
                 trained_on: dict | None = None):
        # channels_last: 20-30 % faster than NCHW on the CPU, same numbers (bench/cpu_latency.py).
        self.model = model.eval().to(memory_format=torch.channels_last)
        self.pre = preprocessing
        self.temperature = float(temperature or 1.0)
        self.arch, self.run_id = arch, run_id
        # Whether the run's metrics and temperature came from flip-averaged logits: the default
        # of every call below, so a prediction matches what the run reported.
        self.tta = bool(tta)
        # Mahalanobis statistics of the training features (None: a checkpoint from before them).
        self.ood_stats = ood_stats if ood_stats and "threshold" in ood_stats else None
        self.trained_on = trained_on or {}
        self._tap = FeatureTap(self.model)
        # One forward at a time per shared model: the tap holds one batch's features, and
        # captum hooks the model for a Grad-CAM (the app serves every session from one Predictor).
        self._forward_lock = threading.Lock()
        self._cam: tuple | None = None
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
                   bool(ck.get("tta", False)), ck.get("ood"), ck.get("trained_on"))

    @classmethod
    def from_run(cls, run: str | os.PathLike, which: str = "best", runs_dir: Path | None = None) -> "Predictor":
        run_dir = runs.resolve_run_dir(run, runs_dir)
        return cls.from_checkpoint(runs.checkpoint_path(run_dir, which), run_dir.name)

    def batch(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self.transform(img) for img in images]).contiguous(memory_format=torch.channels_last)

    @property
    def image_size(self) -> int:
        return int(self.pre["image_size"])

    def domain(self) -> str:
        """What the model learned from, in words: data, its photos' size, the size it sees."""
        t = self.trained_on
        native = t.get("native_size")
        photos = f" photos of {native[0]}×{native[1]} px" if native else ""
        count = f"{t['train_images']:,} " if t.get("train_images") else ""
        data = f"{count}{t.get('name', 'its training')}{photos}" if t else "its training photos"
        return f"learned from {data}, shown at {self.image_size}×{self.image_size} px"

    def run(self, images: Sequence[Image.Image], tta: bool | None = None,
            calibrated: bool = True) -> tuple[np.ndarray, list[ImageCheck]]:
        """Probabilities (N, 5) and, per image, its field-of-view and feature checks with warnings."""
        logits, features = self._forward(images, tta)
        probs = softmax(logits, self.temperature if calibrated else 1.0)
        scores = ood.scores(features.numpy(), self.ood_stats) if self.ood_stats is not None else None
        return probs, [self._check(img, None if scores is None else float(scores[k]))
                       for k, img in enumerate(images)]

    def _check(self, img: Image.Image, score: float | None) -> ImageCheck:
        fov = field_of_view(img)
        threshold = float(self.ood_stats["threshold"]) if self.ood_stats is not None else None
        check = ImageCheck(img.size, fov, score, threshold)
        if not fov.ok:
            check.warnings.append(f"{photo.NOT_LIKE_TRAINING}: {fov.reason}.")
        if check.features_ok is False:
            kind = "it may be a fundus photo, but " if fov.ok else ""
            check.warnings.append(
                f"{photo.NOT_LIKE_TRAINING}: {kind}its features lie far from every grade the model learned "
                f"(distance {score:.0f}, while 99 % of validation photos are under {threshold:.0f}): another "
                "camera, resolution or population than the training photos.")
        elif check.features_ok is None:
            check.warnings.append("Not checked against the training photos: this checkpoint predates "
                                  "the feature statistics (retrain to get them).")
        w, h = img.size
        if min(w, h) >= THUMBNAIL_FACTOR * self.image_size:
            check.warnings.append(
                f"This {w}×{h} photo is graded as a {self.image_size}×{self.image_size} thumbnail: the model "
                f"{self.domain()}, so detail finer than about {max(w, h) // self.image_size} px here is lost to it.")
        return check

    @torch.inference_mode()
    def _forward(self, images: Sequence[Image.Image], tta: bool | None) -> tuple[np.ndarray, torch.Tensor]:
        """Logits (N, 5), averaged over the views, and the unflipped view's penultimate features."""
        x = self.batch(images)
        views = tta_views(x) if (self.tta if tta is None else tta) else [x]
        with self._forward_lock:
            self._tap.take()  # nothing left over from a Grad-CAM
            logits = torch.stack([self.model(v) for v in views]).mean(0).float().numpy()
            return logits, self._tap.take()

    def logits(self, images: Sequence[Image.Image], tta: bool | None = None) -> np.ndarray:
        """Logits (N, 5); ``tta=None`` follows the run (``self.tta``)."""
        return self._forward(images, tta)[0]

    def probabilities(self, images: Sequence[Image.Image], tta: bool | None = None,
                      calibrated: bool = True) -> np.ndarray:
        return softmax(self.logits(images, tta), self.temperature if calibrated else 1.0)

    def predict(self, images: Sequence[Image.Image], names: Sequence[str] | None = None,
                tta: bool | None = None, calibrated: bool = True) -> list[Prediction]:
        probs, checks = self.run(images, tta, calibrated)
        names = names or [""] * len(images)
        return [Prediction(int(p.argmax()), GRADE_NAMES[int(p.argmax())], [float(v) for v in p], n, c)
                for p, n, c in zip(probs, names, checks)]

    def predict_files(self, paths: Sequence[str | os.PathLike], tta: bool | None = None) -> list[Prediction]:
        """Grade image files; an unreadable file raises ImageError naming it."""
        images = [load_image(p) for p in paths]
        return self.predict(images, [str(p) for p in paths], tta)

    def cam_layer(self) -> tuple[str, torch.nn.Module, tuple[int, int]]:
        """Grad-CAM's layer for this model's input size (models.grad_cam_layer), found once."""
        if self._cam is None:
            self._cam = grad_cam_layer(self.model, self.image_size)
        return self._cam

    def grad_cam(self, image: Image.Image, target: int | None = None, mask: bool = True) -> np.ndarray:
        """Grad-CAM heat map (H, W) in [0, 1] at the image's size, via captum's LayerGradCam,
        read at a layer of at least 7 x 7 cells; zero outside the field of view with ``mask``."""
        from captum.attr import LayerAttribution, LayerGradCam

        x = self.batch([image]).requires_grad_(True)
        with self._forward_lock:  # captum hooks the shared model for the call
            _, layer, _ = self.cam_layer()
            if target is None:
                with torch.no_grad():
                    target = int(self.model(x).argmax(1))
            cam = LayerGradCam(self.model, layer).attribute(x, target=target, relu_attributions=True)
            self._tap.take()
        cam = LayerAttribution.interpolate(cam, (image.height, image.width), "bilinear")
        heat = cam.detach()[0, 0].float().numpy()
        if mask:
            heat = np.where(photo.field_of_view_mask(image), heat, 0.0)
        hi = heat.max()
        return heat / hi if hi > 0 else heat
