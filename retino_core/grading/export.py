"""Take a run's grader out of the app.

``export_run`` writes, into one folder: the model (ONNX or TorchScript) whose input is a batch
of 8-bit RGB photos at the training size and whose outputs are the probabilities the run
grades with (normalisation, flip averaging and ``Predictor.temperature_for()`` inside the graph), the
probability of referable DR, the referral-first answer at the run's threshold (``would_say_*``)
and the out-of-distribution score; ``preprocessing.json`` (size, resize rule, crop, mean / std,
grade names, the run's operating point and whether validation supports it, the rule that turns
outputs into an answer, the trust verdict); the model card; and, for ONNX, ``predict_onnx.py``,
a grader that needs only onnxruntime, numpy and Pillow and answers through the package's own
``decide``. Before it returns, the export is checked against the app's own
Predictor on the run's test images.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

from .. import runs
from ..config import GRADE_NAMES
from ..data.sources import source_of
from ..data.transforms import tta_views
from ..errors import DataError, ExportError, ImageError
from ..judging import trust
from ..judging.decision import DEFAULT_THRESHOLD, GRADED, NO_USABLE_MODEL, NOT_GRADED, OperatingPoint, referral_first
from ..judging.metrics import REFERABLE_GRADE
from ..models.builders import build_model
from ..report import modelcard
from .exported import FORMATS, PREPROCESSING, default_folder, read_export, zip_folder  # noqa: F401 - re-exported
from .predictor import Predictor
from .standalone import prepare, standalone_script

# 18 is the opset torch's exporter translates to itself (its torchlib); its default, 20, adds a
# version-conversion pass over the graph for nothing. onnxruntime runs opset 18 from 1.14 on.
OPSET = 18


INPUT = "images"


TOLERANCE = 1e-4  # largest allowed difference from Predictor in any probability


OOD_TOLERANCE = 1e-3  # relative, for the feature distance (float32 here, float64 in the app)


VERIFY_IMAGES = 64


SCRIPT = "predict_onnx.py"



class ReferralFirst(nn.Module):
    """judging.decision.referral_first in torch, inside the exported graph: (probabilities (N, 5),
    threshold) -> P(grade >= 2) (N,), refer (N,) bool, and the most probable grade on that side
    (N,) int64. The property test holds it equal to decision.referral_first through onnxruntime."""

    def forward(self, probs: torch.Tensor, threshold: torch.Tensor):
        referable = probs[:, REFERABLE_GRADE:].sum(1)
        refer = referable >= threshold
        grade = torch.where(refer, probs[:, REFERABLE_GRADE:].argmax(1) + REFERABLE_GRADE,
                            probs[:, :REFERABLE_GRADE].argmax(1))
        return referable, refer, grade


class GraderGraph(nn.Module):
    """uint8 (N, H, W, 3) RGB photos at the training size -> graded probabilities (N, 5),
    P(grade >= 2) (N,), what the model would say at the run's referral threshold (refer, and the
    grade on that side: ReferralFirst) and, with the run's feature statistics, the Mahalanobis
    score (N,): what Predictor computes, with its normalisation, flip averaging and temperature
    inside. ``would_say_*`` become a grade only for a photo that passes the checks of a usable
    model (decision.decide, which predict_onnx.py runs)."""

    def __init__(self, model: nn.Module, preprocessing: dict, temperature: float, tta: bool,
                 ood_stats: dict | None = None, threshold: float = DEFAULT_THRESHOLD):
        super().__init__()
        self.fc = model.fc
        model.fc = nn.Identity()  # the rest of the network gives the penultimate features
        self.features = model
        self.register_buffer("mean", torch.tensor(preprocessing["mean"], dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(preprocessing["std"], dtype=torch.float32).view(1, 3, 1, 1))
        self.temperature = float(temperature)
        self.tta = bool(tta)
        self.decide = ReferralFirst()
        self.register_buffer("threshold", torch.tensor(float(threshold), dtype=torch.float32))
        self.outputs = ["probabilities", "referable_probability", "would_say_refer", "would_say_grade"]
        self.has_ood = ood_stats is not None
        if self.has_ood:
            self.register_buffer("ood_means", ood_stats["means"].float())
            self.register_buffer("ood_precision", ood_stats["precision"].float())
            self.outputs.append("ood_score")

    def forward(self, images: torch.Tensor):
        x = images.permute(0, 3, 1, 2).float() / 255.0  # as ToDtype(scale=True) does
        x = (x - self.mean) / self.std
        views = tta_views(x) if self.tta else [x]
        features = [self.features(v) for v in views]
        logits = torch.stack([self.fc(f) for f in features]).mean(0)
        probs = torch.softmax(logits / self.temperature, dim=1)
        referable, refer, grade = self.decide(probs, self.threshold)
        out = [probs, referable, refer, grade]
        if self.has_ood:
            # The unflipped view's features, as the app's feature tap keeps. (f - mu) P (f - mu)
            # per grade rather than the expanded form: float32 keeps its digits that way.
            d = features[0][:, None, :] - self.ood_means[None]
            out.append(((d @ self.ood_precision) * d).sum(-1).min(1).values.clamp_min(0))
        return tuple(out)


def grader_graph(predictor: Predictor) -> GraderGraph:
    """The export graph of a Predictor (a fresh copy of its network: no hooks, contiguous), with
    its run's referral threshold in force."""
    model = build_model(predictor.arch, predictor.model.fc.out_features)
    model.load_state_dict({k: v.contiguous() for k, v in predictor.model.state_dict().items()})
    point = predictor.operating_point or OperatingPoint()
    return GraderGraph(model, predictor.pre, predictor.temperature_for(), predictor.tta, predictor.ood_stats,
                       point.threshold).eval()


def _example(size: int) -> torch.Tensor:
    # Two photos: an example batch of one would let the exporter fix the batch size at 1.
    return torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def write_onnx(graph: GraderGraph, image_size: int, path: Path) -> None:
    """The graph as ONNX (opset OPSET, torch's dynamo exporter), any batch size."""
    program = torch.onnx.export(graph, (_example(image_size),), dynamo=True, input_names=[INPUT],
                                output_names=graph.outputs, opset_version=OPSET, verbose=False,
                                dynamic_shapes=({0: torch.export.Dim("batch")},))
    tmp = path.with_name(f".{path.name}.tmp")
    program.save(str(tmp))
    tmp.replace(path)


def write_torchscript(graph: GraderGraph, image_size: int, path: Path) -> None:
    """The graph as TorchScript (``torch.jit.load`` reads it; no retino code needed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch >= 2.10 deprecates TorchScript; it still runs
        traced = torch.jit.trace(graph, _example(image_size), check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
    runs.atomic_write(path, buf.getvalue())


def load_runner(fmt: str, path: Path, names: list[str]) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """A function from a uint8 (N, H, W, 3) batch to the exported model's outputs by ``names``."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: dict(zip(names, session.run(names, {INPUT: x})))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path))

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            return {n: t.numpy() for n, t in zip(names, module(torch.from_numpy(x)))}
    return run


def _verification_images(config: dict, size: int, n: int) -> tuple[list[Image.Image], str]:
    """The first ``n`` test images of the run's data (all for n <= 0), else random pictures."""
    try:
        split = source_of(config).splits["test"]
        count = len(split) if n <= 0 else min(n, len(split))
        return [split.image(i) for i in range(count)], "test-split"
    except (DataError, ImageError, KeyError) as err:
        rng = np.random.default_rng(0)
        pictures = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(max(n, 8))]
        return pictures, f"random (the run's test split could not be opened: {err})"


def verify(predictor: Predictor, run: Callable, images: list[Image.Image], crop: str, chunk: int = 32) -> dict:
    """Largest differences between the export and ``predictor`` on ``images``, and how many of
    the graph's referrals and grades differ from decision.referral_first on the app's
    probabilities (a photo within TOLERANCE of the threshold may fall either side)."""
    worst_p, worst_ood, differ = 0.0, 0.0, 0
    threshold = (predictor.operating_point or OperatingPoint()).threshold
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk]
        want, checks = predictor.run(part)
        got = run(np.stack([prepare(img, predictor.image_size, crop) for img in part]))
        worst_p = max(worst_p, float(np.abs(got["probabilities"] - want).max()))
        for k, p in enumerate(want):
            if abs(float(p[REFERABLE_GRADE:].sum()) - threshold) > TOLERANCE:
                differ += (bool(got["would_say_refer"][k]), int(got["would_say_grade"][k])) != referral_first(p, threshold)
        if "ood_score" in got:
            ref = np.array([c.ood_score for c in checks], dtype=np.float64)
            worst_ood = max(worst_ood, float((np.abs(got["ood_score"] - ref) / np.maximum(np.abs(ref), 1.0)).max()))
    return {"images": len(images), "max_abs_diff": worst_p, "ood_score_max_rel_diff": worst_ood,
            "decisions_differ": differ}


def preprocessing_json(predictor: Predictor, summary: dict, run_id: str, fmt: str, outputs: list[str]) -> dict:
    """What a user of the exported model must know: input, resize, crop, normalisation, outputs,
    grades, the referral rule and its operating point, the detector threshold, the trust verdict."""
    size, pre = predictor.image_size, predictor.pre
    point = predictor.operating_point or OperatingPoint()
    verdict = trust.of_summary(summary)
    return {
        "run": run_id, "arch": predictor.arch, "format": fmt, "model_file": FORMATS[fmt],
        "opset": OPSET if fmt == "onnx" else None,
        "input": {"name": INPUT, "dtype": "uint8", "layout": "NHWC", "shape": ["batch", size, size, 3],
                  "channels": "RGB", "range": [0, 255]},
        "image_size": size,
        "resize": f"Pillow Image.resize(({size}, {size}), Image.BILINEAR) of the whole photo, which Pillow "
                  "antialiases when shrinking; no aspect-ratio padding, no centre crop",
        "crop": pre.get("preprocess", "none"),
        "crop_rule": {"none": "none: the photo is resized as it is",
                      "crop": "cut to the bounding box of pixels brighter than 12 (grey), then padded square on black",
                      "ben_graham": "crop as above, then 4 * (image - Gaussian blur of radius side/30) + 128, rim greyed"
                      }.get(pre.get("preprocess", "none")),
        "colour": "8-bit RGB; greyscale, 16-bit, palette and alpha photos converted first (alpha on black)",
        "mean": list(pre["mean"]), "std": list(pre["std"]),
        "normalisation": "inside the model: (x / 255 - mean) / std per channel",
        "temperature": predictor.temperature_for(), "calibrated": predictor.calibrated,
        "fitted_temperature": predictor.temperature, "flip_averaging": predictor.tta,
        "outputs": outputs, "grade_names": list(GRADE_NAMES),
        "referable": {**point.to_dict(), "grades": list(range(REFERABLE_GRADE, len(GRADE_NAMES))),
                      "rule": "refer when referable_probability >= threshold; the grade is then the most probable "
                              "of grades 2-4, otherwise of grades 0-1 (the graph's would_say_refer, would_say_grade)",
                      "chosen_on": "val", "default_threshold": DEFAULT_THRESHOLD, "says": point.sentence()},
        "decision": {"statuses": [GRADED, NOT_GRADED, NO_USABLE_MODEL],
                     "rule": "a photo is graded only when it passes the field-of-view, retinal-detail and feature "
                             "checks and the model is usable; otherwise grade, grade_name and refer are null and "
                             "would_say_* hold what the model would say (predict_onnx.py applies this)"},
        "ood": None if predictor.ood_stats is None else {
            "threshold": float(predictor.ood_stats["threshold"]), "output": "ood_score",
            "rule": "not like the training photos when ood_score > threshold, or when the photo is not a round "
                    "field of view on black (predict_onnx.py checks both)"},
        "trust": {k: verdict.get(k) for k in ("verdict", "reasons", "basis")} if verdict else
                 {"verdict": "not judged", "reasons": ["the run has no test results"], "basis": ""},
        "trained_on": summary.get("trained_on"),
        "exported_with": {"torch": torch.__version__.split("+")[0]},
    }


def export_run(run: str | Path, fmt: str = "onnx", out: Path | None = None, runs_dir: Path | None = None,
               verify_images: int = VERIFY_IMAGES) -> Path:
    """Export a finished run's best checkpoint into ``out`` (default ``<run>/export/<fmt>``), check
    it against Predictor, write the model card there and into the run folder; returns ``out``."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    run_dir = runs.resolve_run_dir(run, runs_dir)
    summary = runs.read_json(run_dir / "summary.json", {}) or {}
    if not summary:
        raise ExportError(f"run {run_dir.name} has not finished (no summary.json): export a finished run")
    predictor = Predictor.from_run(run_dir)
    out = Path(out) if out is not None else default_folder(run_dir, fmt)
    out.mkdir(parents=True, exist_ok=True)
    (out / PREPROCESSING).unlink(missing_ok=True)  # written last: until then the folder is no export
    graph = grader_graph(predictor)
    model_path = out / FORMATS[fmt]
    (write_onnx if fmt == "onnx" else write_torchscript)(graph, predictor.image_size, model_path)

    pre = preprocessing_json(predictor, summary, run_dir.name, fmt, graph.outputs)
    images, where = _verification_images(runs.read_json(run_dir / "config.json", {}) or {},
                                         predictor.image_size, verify_images)
    checked = verify(predictor, load_runner(fmt, model_path, graph.outputs), images, pre["crop"])
    checked.update(on=where, tolerance=TOLERANCE, passed=checked["max_abs_diff"] <= TOLERANCE
                   and checked["ood_score_max_rel_diff"] <= OOD_TOLERANCE and checked["decisions_differ"] == 0)
    pre.update(verified=checked, sha256=hashlib.sha256(model_path.read_bytes()).hexdigest())
    if not checked["passed"]:
        runs.write_json(out / PREPROCESSING, pre)  # the record of what did not match
        raise ExportError(f"the exported model differs from the app's: probabilities by up to "
                          f"{checked['max_abs_diff']:.2e} (allowed {TOLERANCE:.0e}), feature distance by up to "
                          f"{checked['ood_score_max_rel_diff']:.2e} (allowed {OOD_TOLERANCE:.0e}), "
                          f"{checked['decisions_differ']} referrals or grades (allowed 0); files left in {out}")
    files = [FORMATS[fmt], PREPROCESSING, modelcard.CARD_MD, modelcard.CARD_HTML]
    if fmt == "onnx":
        runs.atomic_write(out / SCRIPT, standalone_script().encode("utf-8"))
        files.append(SCRIPT)
    info = {"format": fmt, "file": FORMATS[fmt], "input": f"{INPUT}: uint8 [batch, {predictor.image_size}, "
            f"{predictor.image_size}, 3] RGB", "outputs": graph.outputs, "verified": checked, "files": files}
    modelcard.write(modelcard.build(run_dir, export=info), out)
    modelcard.write(modelcard.build(run_dir), run_dir)
    runs.write_json(out / PREPROCESSING, pre)
    for name in files:  # an export is handed on: readable by all, the script runnable
        (out / name).chmod(0o755 if name == SCRIPT else 0o644)
    return out
