"""MLflow tracking: each run folder copied into one MLflow run, idempotently.

A retino run is one MLflow run, found again by its tag ``retino.run_id``, so syncing twice
changes nothing and syncing after more epochs appends them. What goes in:

- params: the whole config.json;
- metrics: every number of each epoch row at its epoch (``val_acc``, ``test_qwk``, ...), every
  number of each step row at its global step (``step/train_loss``, ...), and every number of
  summary.json (``summary/test_acc``, intervals as ``summary/test_acc_ci_lo`` / ``_hi``,
  per-grade lists as ``summary/test_recall_grade0`` ...), each with its own timestamp;
- tags: the verdict and its reasons, the configuration, data, notes and tags;
- artifacts: summary.json, config.json, predictions.csv, the confusion matrix as a PNG, the
  model card (Markdown and HTML), and the checked ONNX export with its predict_onnx.py.

Watermark tags record what is in already (the last epoch and step, hashes of summary.json and
of the artifact files). Metrics carry the time of their row, so one sent twice (a sync that
died before its watermark) is stored once. The MLflow client is mlflow-skinny's.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import threading
from pathlib import Path

from .. import runs
from ..config import NUM_CLASSES
from ..errors import TrackingError

DEFAULT_EXPERIMENT = "retino"
TAG_RUN, TAG_EPOCH, TAG_STEP = "retino.run_id", "retino.synced_epoch", "retino.synced_step"
TAG_SUMMARY, TAG_FILES = "retino.synced_summary", "retino.synced_files"
STATUS = {"done": "FINISHED", "failed": "FAILED", "interrupted": "KILLED", "cancelled": "KILLED",
          "running": "RUNNING", "queued": "SCHEDULED"}
# Set before mlflow is imported (it reads telemetry settings then): no usage reports from a
# lab's machines, nothing printed on stdout, and an unreachable server fails in seconds.
QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
         "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
         "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
         "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
_NOT_METRICS = {"kind", "epoch", "step", "steps", "global_step", "time", "best", "trust"}


_PLAIN_CAUSES = (("Connection refused", "connection refused: is the server running, on that host and port?"),
                 ("Name or service not known", "no such host"), ("timed out", "no answer in time"),
                 ("CERTIFICATE_VERIFY_FAILED", "its TLS certificate is not trusted"))


def why(err: BaseException) -> str:
    """One line on why MLflow failed: the plain cause when it is a known one, else its message."""
    text = " ".join(str(getattr(err, "message", None) or err).split())
    for marker, plain in _PLAIN_CAUSES:
        if marker in text:
            return plain
    return (text[:300] + "…") if len(text) > 300 else text or type(err).__name__


def connect(uri: str):
    """An MlflowClient for ``uri`` that has answered once; TrackingError saying why not."""
    for key, value in QUIET.items():
        os.environ.setdefault(key, value)
    if not uri:
        raise TrackingError("no tracking URI: give --tracking-uri (e.g. http://mlflow.lab:5000) or set MLFLOW_TRACKING_URI")
    try:
        from mlflow import MlflowClient
    except ImportError as err:
        raise TrackingError(f"the MLflow client is not installed ({err}): pip install -r requirements.txt") from None
    try:
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)
    except Exception as err:  # noqa: BLE001 - refused, DNS, TLS, a store it cannot open: all say why
        raise TrackingError(f"cannot use the MLflow tracking server at {uri}: {why(err)}") from None
    return client


def run_url(client, mlflow_run) -> str:
    """Where the run is in MLflow's UI (for an http(s) server), else the tracking URI."""
    uri = client.tracking_uri
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{mlflow_run.info.experiment_id}/runs/{mlflow_run.info.run_id}"
    return uri


def experiment_id(client, name: str) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise TrackingError(f"experiment {name!r} is deleted in MLflow: restore it there or pick another --experiment")
        return found.experiment_id
    try:
        return client.create_experiment(name, tags={"retino": "runs of the retino DR grader"})
    except MlflowException as err:  # made meanwhile by another sync
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


def find_run(client, exp_id: str, run_id: str):
    """The MLflow run of retino run ``run_id`` in the experiment, or None."""
    found = client.search_runs([exp_id], filter_string=f"tags.`{TAG_RUN}` = '{runs.check_run_id(run_id)}'",
                               max_results=2)
    if len(found) > 1:
        raise TrackingError(f"two MLflow runs carry {TAG_RUN} = {run_id} in experiment {exp_id}; delete one")
    return found[0] if found else None


def numbers(values: dict, prefix: str = "") -> dict[str, float]:
    """The numbers of a metrics row or a summary as MLflow metrics: scalars (booleans as 0 / 1),
    intervals ``x_ci`` as ``x_ci_lo`` / ``x_ci_hi``, per-grade lists as ``x_grade0`` ..., other
    lists as ``x_0`` ..., nested dicts as dotted keys; matrices and text are left out."""
    out: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key in _NOT_METRICS or value is None or isinstance(value, str):
            continue
        if isinstance(value, (bool, int, float)):
            out[name] = float(value)
        elif isinstance(value, dict):
            out.update(numbers(value, f"{name}."))
        elif isinstance(value, list) and value and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                       for x in value):
            if key.endswith("_ci") and len(value) == 2:
                out[f"{name}_lo"], out[f"{name}_hi"] = float(value[0]), float(value[1])
            else:
                label = "_grade" if len(value) == NUM_CLASSES else "_"
                out.update({f"{name}{label}{i}": float(x) for i, x in enumerate(value)})
    return out


def params_of(config: dict) -> dict[str, str]:
    """config.json as MLflow params: text as it is, everything else as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in sorted(config.items())}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _ms(seconds) -> int:
    return int(float(seconds) * 1000)


def sync_run(client, run_dir: Path, experiment: str = DEFAULT_EXPERIMENT, live: bool = False) -> dict:
    """Bring the MLflow run of ``run_dir`` up to date; returns what was sent and where it is.

    A run still queued or training is refused (TrackingError) unless ``live``: the trainer's
    own ``train --mlflow`` follows it as it trains.
    """
    run = runs.load_run(Path(run_dir))
    if run.state in runs.ACTIVE_STATES and not live:
        doing = "still training" if run.state == "running" else "queued, not trained yet"
        raise TrackingError(f"run {run.run_id} is {doing}: sync it once it has ended (or follow a run live "
                            f"with train --mlflow URI)")
    exp_id = experiment_id(client, experiment)
    mrun = find_run(client, exp_id, run.run_id)
    created = mrun is None
    if created:
        mrun = _create(client, exp_id, run)
    rid = mrun.info.run_id
    sent = {"run_id": run.run_id, "mlflow_run_id": rid, "experiment_id": exp_id, "created": created,
            "params": _sync_params(client, mrun, run.config), "metrics": _sync_metrics(client, mrun, run)}
    sent["metrics"] += _sync_summary(client, mrun, run)
    sent["artifacts"] = _sync_artifacts(client, mrun, run)
    _sync_labels(client, mrun, run)
    _sync_status(client, mrun, run)
    sent["url"] = run_url(client, mrun)
    return sent


def _create(client, exp_id: str, run: runs.RunInfo):
    from ..report import display

    started = run.status.get("started_ts") or run.status.get("updated_ts")
    tags = {TAG_RUN: run.run_id, TAG_EPOCH: "0", TAG_STEP: "0", "retino.configuration": run.configuration,
            "retino.arch": run.arch, "retino.pretrained": str(run.pretrained).lower(),
            "retino.data": display.data_label(str(run.config.get("data") or "")),
            "retino.preset": str(run.config.get("preset") or "")}
    return client.create_run(exp_id, start_time=_ms(started) if started else None, run_name=run.run_id, tags=tags)


def _sync_params(client, mrun, config: dict) -> int:
    """Params MLflow lacks. MLflow never changes a param: a config value changed since (the
    batch halved after running out of memory, say) is named in a tag instead."""
    from mlflow.entities import Param, RunTag

    have, want = mrun.data.params, params_of(config)
    new = [Param(k, v) for k, v in want.items() if k not in have]
    changed = sorted(k for k, v in want.items() if k in have and have[k] != v[:len(have[k])])
    if new:
        client.log_batch(mrun.info.run_id, params=new)
    if changed and mrun.data.tags.get("retino.config_changed") != ", ".join(changed):
        client.log_batch(mrun.info.run_id, tags=[RunTag("retino.config_changed", ", ".join(changed))])
    return len(new)


def _sync_metrics(client, mrun, run: runs.RunInfo) -> int:
    """Epoch rows past the last synced epoch, and step rows past the last synced step of the
    epochs that ended (the rows of an epoch cut off by a stop are dropped when it resumes)."""
    from mlflow.entities import Metric, RunTag

    rows = runs.read_metrics(run.path)
    tags = mrun.data.tags
    first = str(rows[0].get("time")) if rows else ""
    restarted = rows and tags.get("retino.first_row") not in (None, first)  # trained again from the start
    synced_epoch = 0 if restarted else int(tags.get(TAG_EPOCH) or 0)
    synced_step = 0 if restarted else int(tags.get(TAG_STEP) or 0)
    last = max((int(r["epoch"]) for r in rows if r.get("kind") == "epoch"), default=0)
    metrics, top_step = [], synced_step
    for r in rows:
        when = _ms(r.get("time") or 0)
        if r.get("kind") == "epoch" and int(r["epoch"]) > synced_epoch:
            metrics += [Metric(k, v, when, int(r["epoch"])) for k, v in numbers(r).items()]
        elif r.get("kind") == "step" and int(r.get("epoch", 0)) <= last and int(r.get("global_step", 0)) > synced_step:
            metrics += [Metric(f"step/{k}", v, when, int(r["global_step"])) for k, v in numbers(r).items()]
            top_step = max(top_step, int(r["global_step"]))
    if metrics:
        client.log_batch(mrun.info.run_id, metrics=metrics)  # the client splits it into requests
    marks = {TAG_EPOCH: str(max(last, synced_epoch)), TAG_STEP: str(top_step), "retino.first_row": first}
    # Written after the metrics: a sync that dies in between sends them again, and MLflow keeps a
    # metric sent twice with the same time once.
    if any(tags.get(k) != v for k, v in marks.items()):
        client.log_batch(mrun.info.run_id, tags=[RunTag(k, v) for k, v in marks.items()])
    return len(metrics)


def _sync_summary(client, mrun, run: runs.RunInfo) -> int:
    """summary.json's numbers (``summary/...``) and the verdict, when it is new or changed."""
    from mlflow.entities import Metric, RunTag

    from ..judging import trust

    path = run.path / "summary.json"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    sha = _sha(data)
    if mrun.data.tags.get(TAG_SUMMARY) == sha:
        return 0
    summary, when = json.loads(data), _ms(path.stat().st_mtime)
    metrics = [Metric(f"summary/{k}", v, when, int(summary.get("best_epoch") or 0)) for k, v in numbers(summary).items()]
    verdict = trust.of_summary(summary) or {}
    tags = {"retino.verdict": verdict.get("verdict", "not judged"),
            "retino.verdict_reasons": " ".join(verdict.get("reasons") or []),
            "retino.verdict_basis": verdict.get("basis") or ""}
    client.log_batch(mrun.info.run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])
    client.log_batch(mrun.info.run_id, tags=[RunTag(TAG_SUMMARY, sha)])
    return len(metrics)


ARTIFACTS = ("summary.json", "config.json", "predictions.csv")


def _export_folder(run_dir: Path) -> Path | None:
    """The run's checked ONNX export, or None (grading.export, and with it torch, is loaded only
    for a run that has one)."""
    from ..grading import export

    folder = export.default_folder(run_dir, "onnx")
    return folder if export.read_export(folder) is not None else None


def _sync_artifacts(client, mrun, run: runs.RunInfo) -> int:
    """The run's files, its confusion matrix and model card, and its ONNX export, whenever one
    of them is new or changed (a re-sync with nothing new reads file sizes and times only)."""
    files = [run.path / name for name in ARTIFACTS if (run.path / name).is_file()]
    onnx_dir = run.path / "export" / "onnx"
    exported = sorted(p for p in onnx_dir.iterdir() if p.is_file()) if onnx_dir.is_dir() else []
    stamp = _sha(json.dumps([(str(p.relative_to(run.path)), p.stat().st_size, p.stat().st_mtime_ns)
                             for p in files + exported]).encode())
    if mrun.data.tags.get(TAG_FILES) == stamp:
        return 0
    export_dir = _export_folder(run.path) if exported else None
    rid = mrun.info.run_id
    with tempfile.TemporaryDirectory(prefix="retino-mlflow-") as tmp:
        files += _made_files(run, Path(tmp))
        for path in files:
            client.log_artifact(rid, str(path))
    if export_dir is not None:
        client.log_artifacts(rid, str(export_dir), artifact_path="export/onnx")
    client.set_tag(rid, TAG_FILES, stamp)
    return len(files) + (len(exported) if export_dir is not None else 0)


def _made_files(run: runs.RunInfo, folder: Path) -> list[Path]:
    """What the run folder implies but may not hold: the confusion matrix image and the model card."""
    from ..report import modelcard
    from ..report.pictures import confusion_png

    made = []
    split = "test" if run.summary.get("test_confusion") else "val" if run.summary.get("val_confusion") else None
    if split:
        path = folder / "confusion_matrix.png"
        path.write_bytes(confusion_png(run.summary[f"{split}_confusion"], f"{run.run_id}: {split} split, "
                                       f"checkpoint chosen on {run.summary.get('selected_on', 'validation')}"))
        made.append(path)
    if run.summary:
        card = modelcard.build(run.path)
        for name, text in ((modelcard.CARD_MD, modelcard.to_markdown(card)), (modelcard.CARD_HTML, modelcard.to_html(card))):
            (folder / name).write_text(text, encoding="utf-8")
            made.append(folder / name)
    return made


def _sync_labels(client, mrun, run: runs.RunInfo) -> None:
    """The run's notes (MLflow shows them as its description) and tags, when they changed."""
    from mlflow.entities import RunTag

    want = {"mlflow.note.content": run.notes, "retino.tags": ", ".join(run.tags)}
    changed = [RunTag(k, v) for k, v in want.items() if mrun.data.tags.get(k, "") != v]
    if changed:
        client.log_batch(mrun.info.run_id, tags=changed)


def _sync_status(client, mrun, run: runs.RunInfo) -> None:
    want = STATUS.get(run.state, "RUNNING")
    if client.get_run(mrun.info.run_id).info.status == want:
        return
    if want in ("FINISHED", "FAILED", "KILLED"):
        ended = run.status.get("updated_ts")
        client.set_terminated(mrun.info.run_id, status=want, end_time=_ms(ended) if ended else None)
    else:
        client.update_run(mrun.info.run_id, status=want)


class LiveSync:
    """``train --mlflow URI``: the run synced when it starts, after each epoch and when it ends,
    from a thread of its own, so a slow or unreachable server never holds training up. A
    failure is said once on stderr; the next sync sends what was missed."""

    def __init__(self, uri: str, experiment: str = DEFAULT_EXPERIMENT):
        self.client = connect(uri)  # before training starts: a wrong URI fails at once
        self.experiment = experiment
        self.run_dir: Path | None = None
        self.last: dict | None = None
        self._wake, self._ended = threading.Event(), False
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._thread = threading.Thread(target=self._loop, name="retino-mlflow", daemon=True)
        self._thread.start()
        self._wake.set()

    def row(self, kind: str, row: dict) -> None:  # noqa: ARG002 - the listener's interface
        if kind == "epoch":
            self._wake.set()

    def stop(self, state: str, timeout: float = 120.0) -> None:  # noqa: ARG002
        self._ended = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.last:
            print(f"MLflow run {self.last['mlflow_run_id']}: {self.last['url']}", file=sys.stderr, flush=True)

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            ending = self._ended
            try:
                self.last = sync_run(self.client, self.run_dir, self.experiment, live=True)
                if self._failing:
                    print("MLflow: reachable again, the run is up to date", file=sys.stderr, flush=True)
                self._failing = False
            except Exception as err:  # noqa: BLE001 - training goes on whatever the server does
                if not self._failing:
                    print(f"warning: MLflow sync failed ({why(err)}); training goes on and the next epoch "
                          "tries again", file=sys.stderr, flush=True)
                self._failing = True
            if ending:
                return
