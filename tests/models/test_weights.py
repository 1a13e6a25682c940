"""ImageNet weights a user brings: checked (hash, safe load, ResNet keys and shapes) before they
go into the torch cache; the Train page's installer; whether a pretrained run can start."""

from __future__ import annotations

import hashlib
import io
import pathlib
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest
from torchvision import models as tvm

from retino_core.models import weights
from retino_core.errors import WeightsError
from retino_core.models.builders import build_model, weights_cache_file

APP = Path(__file__).resolve().parents[2] / "streamlit_app.py"


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("RETINO_OFFLINE", "1")
    return tmp_path / "torch" / "hub" / "checkpoints"


def pretend_published(monkeypatch: pytest.MonkeyPatch, arch: str, data: bytes) -> None:
    """Make ``data`` the file torchvision publishes for ``arch`` (the real one cannot be fetched here)."""
    real = weights.hash_prefix
    prefix = hashlib.sha256(data).hexdigest()[:8]
    monkeypatch.setattr(weights, "hash_prefix", lambda a: prefix if a == arch else real(a))


def test_the_cache_folder_is_torch_hubs(cache: Path):
    assert weights.cache_dir() == Path(torch.hub.get_dir()) / "checkpoints" == cache
    assert weights.cached_file("resnet50") == weights_cache_file("resnet50")
    assert weights.hash_prefix("resnet18") == "f37072fd"


def test_a_right_file_is_installed_and_a_pretrained_model_then_builds_offline(cache: Path, monkeypatch):
    torch.manual_seed(0)
    state = tvm.resnet18(num_classes=1000).state_dict()
    data = saved(state)
    pretend_published(monkeypatch, "resnet18", data)
    assert not weights.ready("resnet18")[0]
    arch, target = weights.install(data, "my-download.pth")
    assert arch == "resnet18" and target == cache / "resnet18-f37072fd.pth" and target.read_bytes() == data
    assert weights.ready("resnet18") == (True, f"ImageNet weights in {target}")
    model = build_model("resnet18", pretrained=True)
    assert torch.equal(model.conv1.weight, state["conv1.weight"])


def test_a_file_with_another_hash_is_refused(cache: Path):
    with pytest.raises(WeightsError, match="its SHA-256 starts .* resnet18-f37072fd.pth"):
        weights.install(saved(tvm.resnet18(num_classes=1000).state_dict()), "other.pth")
    assert not cache.exists() or not list(cache.iterdir())


def test_a_pickle_that_runs_code_is_refused_without_running_it(cache: Path, tmp_path: Path, monkeypatch):
    marker = tmp_path / "PWNED"
    data = saved({"conv1.weight": _Payload(marker)})
    pretend_published(monkeypatch, "resnet18", data)
    with pytest.raises(WeightsError, match="not a loadable state dict"):
        weights.install(data)
    assert not marker.exists() and not (cache / "resnet18-f37072fd.pth").exists()


def test_a_state_dict_of_the_wrong_shape_is_refused(cache: Path, monkeypatch):
    data = saved(tvm.resnet18(num_classes=1000).state_dict())
    pretend_published(monkeypatch, "resnet50", data)  # the hash says ResNet50, the tensors are ResNet18's
    with pytest.raises(WeightsError, match="does not fit a resnet50"):
        weights.install(data, "r18.pth")
    assert not (cache / "resnet50-0676ba61.pth").exists()


def test_refused_pretrained_names_only_what_cannot_start(cache: Path, tmp_path: Path):
    from retino_core.config import make_config

    configs = [make_config("cpu", arch="resnet18", pretrained=True), make_config("cpu", arch="resnet50"),
               make_config("cpu", arch="resnet50", pretrained=True, weights=str(tmp_path / "own.pt"))]
    refused = weights.refused_pretrained(configs)
    assert [c.arch for c, _ in refused] == ["resnet18"] and "RETINO_OFFLINE" in refused[0][1]


def test_the_train_page_installs_a_right_file_and_refuses_a_wrong_one(cache: Path, monkeypatch, runs_dir: Path):
    data = saved(tvm.resnet18(num_classes=1000).state_dict())
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.switch_page("pages/train.py").run()
    at.text_input(key="weights_path").set_value(str(runs_dir / "missing.pth")).run()
    next(b for b in at.button if b.label == "Check and install").click().run()
    assert "Not installed" in at.error[0].value and "is not a file" in at.error[0].value
    source = runs_dir / "download.pth"
    source.write_bytes(data)
    at.text_input(key="weights_path").set_value(str(source)).run()
    next(b for b in at.button if b.label == "Check and install").click().run()
    assert "SHA-256" in at.error[0].value  # not torchvision's file
    pretend_published(monkeypatch, "resnet18", data)
    next(b for b in at.button if b.label == "Check and install").click().run()
    assert not at.exception and "Installed the ImageNet weights of resnet18" in at.success[0].value
    assert (cache / "resnet18-f37072fd.pth").read_bytes() == data


def test_a_wrong_file_is_told_apart_from_the_weights_by_what_it_is(cache: Path):
    def refusal(data: bytes) -> str:
        with pytest.raises(WeightsError) as err:
            weights.install(data, "download.pth")
        return str(err.value)

    text = refusal(b"<html>404 Not Found</html>")  # a web page saved under the file's name
    assert text.startswith("download.pth is not torchvision's ImageNet weights for ResNet18 or ResNet50")
    assert "not a PyTorch weights file at all" in text and "resnet50-0676ba61.pth" in text and "README" not in text
    checkpoint = saved({"model": tvm.resnet18(num_classes=5).state_dict(), "config": {"arch": "resnet18"}, "epoch": 1})
    assert "a retino checkpoint (a trained run), not ImageNet weights" in refusal(checkpoint)
    assert "a PyTorch state dict, but not the published one" in refusal(saved({"w": torch.zeros(2)}))
    assert not cache.exists() or not list(cache.iterdir())


def test_a_failed_download_is_said_in_plain_words(cache: Path, monkeypatch):
    import socket
    from urllib.error import HTTPError, URLError

    offline = URLError(socket.gaierror(-2, "Name or service not known"))
    assert weights.download_failure(offline) == "no network here: the file can't be downloaded"
    assert weights.download_failure(URLError(TimeoutError("timed out"))) == "no network here: the file can't be downloaded"
    assert "answered HTTP 404" in weights.download_failure(HTTPError("u", 404, "Not Found", {}, None))
    monkeypatch.delenv("RETINO_OFFLINE")

    def no_network(*args, **kwargs):
        raise offline

    monkeypatch.setattr(weights, "urlopen", no_network)
    ok, reason = weights.ready("resnet18")
    assert not ok and "no network here: the file can't be downloaded" in reason and "Errno" not in reason
    assert reason.startswith("needs the ImageNet weights file") and "Train page" in reason
