"""Recipe options of the trainer: the ordinal loss, EMA, flip TTA at final evaluation, the cpu preset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import TINY
from retino_core.config import ARCHS, LOSSES, ConfigError, make_config
from retino_core.judging.metrics import softmax
from retino_core.models.builders import build_model
from retino_core.grading.predictor import Predictor
from retino_core.training.recipe import OrdinalLoss, build_loss
from retino_core.training.lifecycle import prepare_run, run_training


def test_ordinal_loss_trains_a_resnet_and_keeps_five_class_probabilities():
    torch.manual_seed(0)
    model = build_model("resnet18")
    x, y = torch.randn(6, 3, TINY["image_size"], TINY["image_size"]), torch.tensor([0, 1, 2, 3, 4, 2])
    logits = model(x)
    assert logits.shape == (6, 5)
    loss = OrdinalLoss()(logits, y)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    probs = softmax(logits.detach().numpy())
    assert np.allclose(probs.sum(1), 1.0)


def test_ordinal_loss_charges_more_for_a_bigger_miss():
    def confident(grade: int) -> torch.Tensor:
        z = torch.full((1, 5), -8.0)
        z[0, grade] = 8.0
        return z

    target = torch.tensor([0])
    losses = [float(OrdinalLoss()(confident(g), target)) for g in range(5)]
    assert losses == sorted(losses) and losses[0] < 0.01


def test_ordinal_loss_matches_the_cumulative_binary_cross_entropy():
    torch.manual_seed(1)
    logits, y = torch.randn(8, 5), torch.randint(0, 5, (8,))
    p = logits.softmax(1)
    expected = 0.0
    for k in range(4):
        above, t = p[:, k + 1:].sum(1), (y > k).float()
        expected = expected - (t * above.log() + (1 - t) * (1 - above).log())
    assert float(OrdinalLoss()(logits, y)) == pytest.approx(float(expected.mean()), rel=1e-5)


def test_ordinal_is_a_loss_choice():
    assert "ordinal" in LOSSES
    cfg = make_config("cpu", loss="ordinal", label_smoothing=0.1)
    assert isinstance(build_loss(cfg, np.array([0, 1, 2, 3, 4])), OrdinalLoss)
    with pytest.raises(ConfigError, match="ordinal"):
        make_config("cpu", loss="coral")


def test_ordinal_run_with_ema_and_tta_writes_probabilities_the_predictor_reads(tiny_npz, tmp_path):
    cfg = make_config("cpu", data=str(tiny_npz), **{**TINY, "epochs": 2}, loss="ordinal", ema=0.9,
                      tta=True, max_steps_per_epoch=2)
    run_dir = prepare_run(cfg, tmp_path / "runs")
    summary = run_training(run_dir, quiet=True)
    assert summary["tta"] is True and 0 <= summary["test_acc"] <= 1
    preds = pd.read_csv(run_dir / "predictions.csv")
    assert np.allclose(preds[[f"p{c}" for c in range(5)]].sum(1), 1.0, atol=1e-4)
    ck = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert ck["tta"] is True
    # The EMA copy carries running BatchNorm statistics, not the untrained ones (mean 0, var 1).
    assert ck["model"]["bn1.running_mean"].abs().sum() > 0
    predictor = Predictor.from_run(run_dir)
    image = Image.new("RGB", (40, 40), (120, 60, 30))
    image.paste((200, 180, 40), (0, 0, 12, 30))  # not symmetric: flips change what the model sees
    probs = predictor.probabilities([image], tta=True)
    assert probs.shape == (1, 5) and np.isclose(probs.sum(), 1.0)
    # The run was evaluated (and its temperature fitted) on flip-averaged logits: so is a prediction by default.
    assert predictor.tta is True
    assert np.array_equal(predictor.logits([image]), predictor.logits([image], tta=True))
    assert np.array_equal(predictor.logits([image], tta=False), predictor.logits([image], tta=False))


@pytest.mark.parametrize("arch", ARCHS)
def test_cpu_preset_is_a_valid_config_for_each_arch(arch):
    cfg = make_config("cpu", arch=arch)
    assert cfg.data == "retinamnist" and not cfg.pretrained
    assert cfg.epochs >= 1 and cfg.image_size >= 16


def test_cpu_preset_gives_resnet50_fewer_epochs_unless_told():
    from retino_core.config import PRESET_ARCH, PRESETS, make_config

    assert make_config("cpu", arch="resnet18").epochs == PRESETS["cpu"]["epochs"]
    assert make_config("cpu", arch="resnet50").epochs == PRESET_ARCH["cpu"]["resnet50"]["epochs"]
    assert make_config("cpu", arch="resnet50").epochs < make_config("cpu", arch="resnet18").epochs
    assert make_config("cpu", arch="resnet50", epochs=3).epochs == 3


def _ema_follow_share(ema_fn) -> float:
    """How far an EMA has followed a model after 6 SGD steps, as a share of the model's move."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 5))
    start = [p.detach().clone() for p in model.parameters()]
    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=ema_fn, use_buffers=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(64, 8), torch.randint(0, 5, (64,))
    ema.update_parameters(model)
    for _ in range(6):  # a small dataset's epoch: 6 steps
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        ema.update_parameters(model)
    moved = sum(float((p.detach() - s).norm()) for p, s in zip(model.parameters(), start))
    followed = sum(float((p.detach() - s).norm()) for p, s in zip(ema.module.parameters(), start))
    return followed / moved


def test_weight_ema_warms_up_so_a_short_run_is_not_evaluated_on_its_random_start():
    from retino_core.training.recipe import WarmEmaDecay

    fixed = _ema_follow_share(torch.optim.swa_utils.get_ema_multi_avg_fn(0.99))
    warm = _ema_follow_share(WarmEmaDecay(0.99))
    assert fixed < 0.1 and warm > 0.5, (fixed, warm)
    decay = WarmEmaDecay(0.99)
    assert [round(decay.value(t), 3) for t in (1, 6, 100, 1000)] == [0.405, 0.768, 0.969, 0.99]


def test_weight_ema_resumes_its_warm_up_from_the_saved_count():
    from retino_core.training.recipe import weight_ema

    model = torch.nn.Linear(4, 2)
    ema = weight_ema(model, 0.99)
    for _ in range(5):
        ema.update_parameters(model)
    resumed = weight_ema(model, 0.99)
    resumed.load_state_dict(ema.state_dict())
    resumed.update_parameters(model)
    assert resumed.multi_avg_fn.step == 6 and int(resumed.n_averaged) == 6
