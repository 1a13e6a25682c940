"""Both architectures on the CPU; ImageNet weights from the torch cache; local weights."""

from __future__ import annotations

import pytest
import torch
from torchvision import models as tvm

from retino_core.models.builders import WeightsError, build_model, weights_cache_file
from retino_core.models import builders


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_forward_backward_every_parameter_gets_a_gradient(arch):
    torch.manual_seed(0)
    model = build_model(arch)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 5)
    out.logsumexp(1).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name


def test_unknown_arch_names_the_choices():
    with pytest.raises(ValueError, match="unknown arch 'resnet34'; choose one of: resnet18, resnet50"):
        build_model("resnet34")


def test_pretrained_reads_the_offline_torch_cache(tmp_path, monkeypatch):
    """A file in $TORCH_HOME/hub/checkpoints is used as-is, without any download."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    target = weights_cache_file("resnet18")
    assert target.parent == tmp_path / "hub" / "checkpoints"
    assert target.name == "resnet18-f37072fd.pth"
    torch.manual_seed(123)
    reference = tvm.resnet18(num_classes=1000).state_dict()
    target.parent.mkdir(parents=True)
    torch.save(reference, target)

    def no_network(*args, **kwargs):
        raise AssertionError("a cached file must not be downloaded again")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    model = build_model("resnet18", pretrained=True)
    assert torch.equal(model.conv1.weight, reference["conv1.weight"])
    assert torch.equal(model.layer4[1].bn2.running_var, reference["layer4.1.bn2.running_var"])
    assert model.fc.out_features == 5


def test_missing_weights_offline_error_names_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, dst, *args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsError) as err:
        build_model("resnet50", pretrained=True)
    msg = str(err.value)
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in msg
    assert str(tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth") in msg
    assert "--weights" in msg


def test_retino_offline_never_tries_the_network(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("RETINO_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("network used"))
    with pytest.raises(WeightsError, match="RETINO_OFFLINE"):
        builders.imagenet_state_dict("resnet18")


def test_local_weights_imagenet_head_is_dropped_and_checkpoint_accepted(tmp_path):
    torch.manual_seed(1)
    imagenet = tvm.resnet18(num_classes=1000).state_dict()
    path = tmp_path / "r18.pth"
    torch.save(imagenet, path)
    model = build_model("resnet18", weights=path)
    assert torch.equal(model.conv1.weight, imagenet["conv1.weight"])
    assert model.fc.out_features == 5
    ck = tmp_path / "ck.pt"
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}}, ck)
    again = build_model("resnet18", weights=ck)
    assert torch.equal(again.fc.weight, model.fc.weight)


def test_local_weights_of_the_wrong_arch_are_refused(tmp_path):
    path = tmp_path / "r50.pth"
    torch.save(tvm.resnet50(num_classes=5).state_dict(), path)
    with pytest.raises(WeightsError, match="does not fit this architecture"):
        build_model("resnet18", weights=path)
    with pytest.raises(WeightsError, match="not found"):
        build_model("resnet18", weights=tmp_path / "none.pth")
