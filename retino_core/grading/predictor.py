"""Load a run's checkpoint into a Predictor; grade images (``judging.decision.decide``, with the
run's trust verdict and operating point); explain them with Grad-CAM.
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
from ..config import NUM_CLASSES
from ..data.images import load_image
from ..data.transforms import build_eval_transform, tta_views
from ..errors import (  # torch-free: the CLI and the worker catch it
    CheckpointError,
    refused_load,
)
from ..judging import ood, operating, photo, trust
from ..judging.trust import is_usable_verdict, warning
from ..judging.decision import Decision, OperatingPoint, check_photo, decide
from ..judging.metrics import softmax
from ..judging.ood import FeatureTap
from ..judging.photo import ImageCheck
from ..models.builders import build_model, grad_cam_layer


@dataclass
class Prediction:
    """One photo's answer (``decision``) and the checks it rests on."""

    name: str
    decision: Decision
    check: ImageCheck

    @property
    def probabilities(self) -> list[float]:
        return list(self.decision.probabilities)

    def to_dict(self) -> dict:
        """The JSON and CSV keys: the file, then Decision.to_dict."""
        return {"file": self.name, **self.decision.to_dict()}


def batch_warnings(verdict: dict | None, point: OperatingPoint | None, checks_features: bool) -> list[str]:
    """What holds for every photo a model grades, to say once per batch: its verdict when it is
    not usable, a referral threshold that validation could not support, no feature check."""
    out = [] if is_usable_verdict(verdict) else [warning(verdict)]
    point = point or OperatingPoint(why="the model has no run folder to read one from")
    if not point.reliable:
        out.append(point.sentence())
    if not checks_features:
        out.append("Not checked against the training photos: this checkpoint predates the feature statistics "
                   "(retrain to get them); only the field of view and the retinal detail are checked.")
    return out


class Predictor:
    """A trained model plus the exact preprocessing it was evaluated with."""

    def __init__(self, model: torch.nn.Module, preprocessing: dict, temperature: float = 1.0,
                 arch: str = "", run_id: str = "", tta: bool = False, ood_stats: dict | None = None,
                 trained_on: dict | None = None, verdict: dict | None = None,
                 operating_point: OperatingPoint | None = None):
        # channels_last: 20-30 % faster than NCHW on the CPU, same numbers (bench/cpu_latency.py).
        self.model = model.eval().to(memory_format=torch.channels_last)
        self.pre = preprocessing
        self.temperature = float(temperature or 1.0)
        # Whether grading divides the logits by the temperature (operating.grades_calibrated: not
        # where it made the run's test probabilities worse); the default of every call below.
        self.calibrated = True
        self.arch, self.run_id = arch, run_id
        # Whether the run's metrics and temperature came from flip-averaged logits: the default
        # of every call below, so a prediction matches what the run reported.
        self.tta = bool(tta)
        # Mahalanobis statistics of the training features (None: a checkpoint from before them).
        self.ood_stats = ood_stats if ood_stats and "threshold" in ood_stats else None
        self.trained_on = trained_on or {}
        # How far to trust the run (trust.of_summary) and its referral threshold (operating.of_run):
        # both come from the run folder; a bare checkpoint has neither, so nothing it says is a grade.
        self.verdict = verdict
        self.operating_point = operating_point
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
        predictor = cls.from_checkpoint(runs.checkpoint_path(run_dir, which), run_dir.name)
        summary = runs.read_json(run_dir / "summary.json", {}) or {}
        predictor.verdict = trust.of_summary(summary)
        predictor.calibrated = operating.grades_calibrated(run_dir, summary)
        predictor.operating_point = operating.of_run(run_dir, summary=summary)
        return predictor

    def temperature_for(self, calibrated: bool | None = None) -> float:
        """The temperature the logits are divided by (None: as the run grades)."""
        return self.temperature if (self.calibrated if calibrated is None else calibrated) else 1.0

    @property
    def usable(self) -> bool:
        return is_usable_verdict(self.verdict)

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
            calibrated: bool | None = None) -> tuple[np.ndarray, list[ImageCheck]]:
        """Probabilities (N, 5) and, per image, its checks (decision.check_photo)."""
        logits, features = self._forward(images, tta)
        probs = softmax(logits, self.temperature_for(calibrated))
        scores = ood.scores(features.numpy(), self.ood_stats) if self.ood_stats is not None else None
        threshold = float(self.ood_stats["threshold"]) if self.ood_stats is not None else None
        return probs, [check_photo(img, None if scores is None else float(scores[k]), threshold)
                       for k, img in enumerate(images)]

    def batch_warnings(self) -> list[str]:
        """batch_warnings for this model."""
        return batch_warnings(self.verdict, self.operating_point, self.ood_stats is not None)

    def thumbnail_note(self, size: tuple[int, int]) -> str | None:
        """photo.thumbnail_note for this model's input size and training data."""
        return photo.thumbnail_note(size, self.image_size, self.domain())

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
                      calibrated: bool | None = None) -> np.ndarray:
        return softmax(self.logits(images, tta), self.temperature_for(calibrated))

    def predict(self, images: Sequence[Image.Image], names: Sequence[str] | None = None,
                tta: bool | None = None, calibrated: bool | None = None) -> list[Prediction]:
        """Each image's answer: decision.decide with its checks, this run's operating point and verdict."""
        probs, checks = self.run(images, tta, calibrated)
        names = names or [""] * len(images)
        return [Prediction(n, decide(p, c, self.operating_point, self.usable), c) for p, n, c in zip(probs, names, checks)]

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
