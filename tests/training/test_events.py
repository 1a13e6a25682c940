"""TensorBoard event files in the run folder, read back record by record (TFRecord framing with
its CRCs, then TensorBoard's Event protos): scalars by step and by epoch, hparams with the final
metrics, and a resumed run's history written again without the rows of the epoch cut off."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from tensorboardX.proto import event_pb2, plugin_hparams_pb2
from tensorboardX.record_writer import masked_crc32c

from retino_core import runs
from retino_core.training.events import TensorBoardEvents


def read_events(folder: Path) -> list:
    """Every Event of the event files directly in ``folder``, oldest file first."""
    events = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            header = data[at:at + 8]
            (length,) = struct.unpack("<Q", header)
            assert struct.unpack("<I", data[at + 8:at + 12])[0] == masked_crc32c(header)
            body = data[at + 12:at + 12 + length]
            assert struct.unpack("<I", data[at + 12 + length:at + 16 + length])[0] == masked_crc32c(body)
            event = event_pb2.Event()
            event.ParseFromString(body)
            events.append(event)
            at += 16 + length
    return events


def scalars(events: list) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list] = {}
    for event in events:
        for value in event.summary.value:
            if value.HasField("simple_value"):
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def test_a_trained_run_has_its_scalars_and_hparams(finished_run: Path) -> None:
    found = scalars(read_events(finished_run / "tensorboard"))
    steps = runs.step_rows(finished_run)
    assert found["step/train_loss"] == [(r["global_step"], pytest.approx(r["train_loss"])) for r in steps]
    epochs = runs.epoch_rows(finished_run)
    assert found["epoch/val_acc"] == [(r["epoch"], pytest.approx(r["val_acc"])) for r in epochs]
    assert "epoch/test_qwk" in found and "epoch/val_confusion" not in found  # numbers only

    hp_events = read_events(finished_run / "tensorboard" / "hparams")
    plugin = [v for e in hp_events for v in e.summary.value if v.metadata.plugin_data.plugin_name == "hparams"]
    data = [plugin_hparams_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content) for v in plugin]
    session = next(d.session_start_info for d in data if d.HasField("session_start_info"))
    assert session.hparams["arch"].string_value == "resnet18"
    assert session.hparams["epochs"].number_value == runs.read_json(finished_run / "config.json")["epochs"]
    summary = runs.read_json(finished_run / "summary.json")
    assert scalars(hp_events)["final/test_acc"][0][1] == pytest.approx(summary["test_acc"])


def _write_rows(run_dir: Path, rows: list[dict]) -> None:
    runs.atomic_write(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())


def test_a_resumed_run_gets_one_clean_history(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    step = lambda e, s, loss: {"kind": "step", "epoch": e, "step": s, "global_step": (e - 1) * 2 + s,  # noqa: E731
                               "train_loss": loss, "time": 1000.0 + e * 10 + s}
    rows = [step(1, 1, 1.5), step(1, 2, 1.4), {"kind": "epoch", "epoch": 1, "val_acc": 0.5, "time": 1013.0},
            step(2, 1, 9.0)]  # epoch 2 is cut off after one step
    first = TensorBoardEvents()
    first.start(run_dir)
    for i, row in enumerate(rows):
        _write_rows(run_dir, rows[:i + 1])
        first.row(row["kind"], row)
    first.stop("interrupted")
    assert scalars(read_events(run_dir / "tensorboard"))["step/train_loss"][-1] == (3, 9.0)

    # The trainer resumes from epoch 1: metrics.jsonl loses the cut-off rows, epoch 2 is trained again.
    kept = rows[:3] + [{"kind": "resume", "epoch": 1, "time": 1050.0}]
    again = [step(2, 1, 1.2), step(2, 2, 1.1), {"kind": "epoch", "epoch": 2, "val_acc": 0.6, "time": 1063.0}]
    second = TensorBoardEvents()
    second.start(run_dir)
    for i, row in enumerate(again):
        _write_rows(run_dir, kept + again[:i + 1])
        second.row(row["kind"], row)
    second.stop("interrupted")
    events = read_events(run_dir / "tensorboard")
    # A restart marker before any scalar: a TensorBoard that read the first history drops it.
    marker = [i for i, e in enumerate(events) if e.session_log.status == event_pb2.SessionLog.START]
    assert marker and events[marker[0]].step == 0 and marker[0] < min(i for i, e in enumerate(events) if e.summary.value)
    found = scalars(events)
    assert found["step/train_loss"] == [(1, 1.5), (2, pytest.approx(1.4)), (3, pytest.approx(1.2)),
                                        (4, pytest.approx(1.1))]
    assert found["epoch/val_acc"] == [(1, 0.5), (2, pytest.approx(0.6))]
    assert not (run_dir / "tensorboard" / "hparams").exists()  # only a finished run has final metrics
