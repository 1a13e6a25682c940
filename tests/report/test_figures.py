"""Chart behaviour a reader relies on: smoothing, log scale, splits told apart without colour,
baseline labels that cannot cover a curve, the parallel-coordinates view."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from retino_core.report import figures



def step_rows(values):
    return [{"epoch": 1, "step": i + 1, "steps": len(values), "train_loss": v} for i, v in enumerate(values)]


def test_smoothing_is_tensorboards_debiased_moving_average():
    assert figures.smooth([1.0, 1.0, 1.0], 0.9) == pytest.approx([1.0, 1.0, 1.0])  # debiased: no dip at the start
    got = figures.smooth([0.0, 1.0], 0.5)
    assert got == pytest.approx([0.0, (0.5 * 0.0 * 0.5 + 0.5 * 1.0) / (1 - 0.25)])
    assert figures.smooth([3.0, 1.0], 0.0) == [3.0, 1.0]


def test_loss_figure_draws_the_raw_line_faint_behind_the_smoothed_one_and_a_log_axis():
    rows = {"run": step_rows([2.0, 1.0, 1.5, 0.8])}
    epochs = {"run": [{"epoch": 1, "val_loss": 1.2, "test_loss": 1.3}]}
    fig = figures.loss_figure(rows, epochs, smoothing=0.6, log_scale=True)
    raw, smoothed = fig.data[0], fig.data[1]
    assert raw.opacity == 0.25 and not raw.showlegend and list(raw.y) == [2.0, 1.0, 1.5, 0.8]
    assert list(smoothed.y) == pytest.approx(figures.smooth([2.0, 1.0, 1.5, 0.8], 0.6))
    assert fig.layout.yaxis.type == "log"
    symbols = {t.name.split(" · ")[1]: t.marker.symbol for t in fig.data[1:]}
    assert len(set(symbols.values())) == 3  # train, val and test differ by marker, not colour alone
    assert len({t.line.dash for t in fig.data[1:]}) == 3
    plain = figures.loss_figure(rows)
    assert len(plain.data) == 1 and plain.layout.yaxis.type != "log"


def test_accuracy_baseline_is_labelled_in_the_legend_not_on_the_plot():
    epochs = {"run": [{"epoch": 1, "train_acc": 0.4, "val_acc": 0.45, "test_acc": 0.44}]}
    fig = figures.accuracy_figure(epochs, {"run": 0.435})
    assert not fig.layout.annotations
    assert any(t.name == "majority-class baseline 43.5%" for t in fig.data)
    single_epoch = [t for t in fig.data if t.name.startswith("run · ")]
    assert len({t.marker.symbol for t in single_epoch}) == 3  # one point each, still told apart


def test_parallel_coordinates_leaves_out_settings_that_never_vary():
    frame = pd.DataFrame({"run": ["a", "b", "c"], "arch": ["resnet18", "resnet50", "resnet18"],
                          "lr": [1e-3, 2e-3, 1e-3], "epochs": [30, 30, 30], "pretrained": [True, False, False],
                          "test_qwk": [0.5, 0.6, 0.55]})
    fig = figures.parallel_coordinates(frame, "test_qwk")
    labels = [d.label for d in fig.data[0].dimensions]
    assert labels == ["architecture", "learning rate", "ImageNet start", "test QWK"]  # readable titles
    assert list(fig.data[0].dimensions[0].ticktext) == ["resnet18", "resnet50"]


def test_a_long_run_is_thinned_to_a_few_hundred_points_keeping_the_last():
    rows = step_rows([1.0 / (k + 1) for k in range(5000)])
    fig = figures.loss_figure({"run": rows})
    assert len(fig.data[0].y) <= figures.MAX_STEP_POINTS + 1 and fig.data[0].y[-1] == rows[-1]["train_loss"]
    assert figures.thin(rows[:10], 600) == rows[:10]


def test_a_flat_grad_cam_shows_no_region() -> None:
    from retino_core.report.figures import FLAT_CAM, cam_stands_out

    mask = np.zeros((40, 40), bool)
    mask[5:35, 5:35] = True
    assert not cam_stands_out(np.zeros((40, 40)), mask)  # nothing positive at all
    assert not cam_stands_out(np.full((40, 40), 0.8) + 0.01 * np.random.default_rng(0).random((40, 40)), mask)
    peaked = np.zeros((40, 40))
    peaked[10:20, 10:20] = 1.0
    assert cam_stands_out(peaked, mask)
    assert FLAT_CAM == "no region stands out for this grade"
