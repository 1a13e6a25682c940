"""Is this photo like the ones the model learned from? The Mahalanobis distance of the model's
own features (Lee et al., "A simple unified framework for detecting out-of-distribution
samples and adversarial attacks", NeurIPS 2018).

At the end of training, class-conditional means and one shared covariance of the
penultimate features are fitted on the training split; an image's score is its squared
distance to the nearest grade's mean. The threshold is the validation split's
THRESHOLD_QUANTILE, so about 1 % of real photos like the training ones are flagged.
The statistics travel in the checkpoint as tensors (``ood`` key).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

THRESHOLD_QUANTILE = 0.99


FIT_MAX_IMAGES = 10_000  # a random subset of a bigger training split fits the statistics


class FeatureTap:
    """Captures the input of ``model.fc`` (the penultimate features) during a forward pass."""

    def __init__(self, model: nn.Module):
        self.features: torch.Tensor | None = None
        self._handle = model.fc.register_forward_pre_hook(self._keep)

    def _keep(self, module, args) -> None:  # noqa: ARG002
        if self.features is None:  # the first forward of a TTA batch: the unflipped view
            self.features = args[0].detach().float()

    def take(self) -> torch.Tensor | None:
        out, self.features = self.features, None
        return out

    def close(self) -> None:
        self._handle.remove()


def fit(features: np.ndarray, labels: np.ndarray) -> dict[str, torch.Tensor]:
    """Class means and a shared precision matrix (Ledoit-Wolf shrinkage) of the features.

    Grades with no training image get no mean: nothing can be near them.
    """
    from sklearn.covariance import LedoitWolf

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    grades = np.unique(y)
    means = np.stack([x[y == g].mean(0) for g in grades])
    centred = x - means[np.searchsorted(grades, y)]
    # Shrinkage: 2,048 dimensions from ~1,000 images leave the plain covariance singular.
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    return {"means": torch.tensor(means, dtype=torch.float32),
            "grades": torch.tensor(grades, dtype=torch.int64),
            "precision": torch.tensor(precision, dtype=torch.float32)}


def scores(features: np.ndarray | torch.Tensor, stats: dict) -> np.ndarray:
    """Squared Mahalanobis distance of each feature row to the nearest class mean."""
    f = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    means = stats["means"].double()
    precision = stats["precision"].double()
    fp = f @ precision
    per_class = (fp * f).sum(1, keepdim=True) - 2 * fp @ means.T + ((means @ precision) * means).sum(1)[None]
    return per_class.min(1).values.clamp_min(0).numpy()


def calibrate(stats: dict, val_features: np.ndarray) -> dict:
    """Set the threshold at the validation split's THRESHOLD_QUANTILE of scores."""
    s = scores(val_features, stats)
    return {**stats, "threshold": torch.tensor(float(np.quantile(s, THRESHOLD_QUANTILE))),
            "quantile": torch.tensor(THRESHOLD_QUANTILE), "fitted_on": torch.tensor(len(s))}
