"""The MLflow model registry: the champion of each configuration, registered and loadable.

For each data set and configuration, the run that answers for it (``judging.champions``: the
pinned run, else the best finished usable run, ...) is a version of the registered model
``retino-<data>-<configuration>`` (``retino-retinamnist-resnet18-pretrained``) with the alias
``champion``. The version's model is ``grader_model.py`` around the run's checked ONNX export
(exported first when the run has none), logged in the champion's MLflow run under
``grader/<digest>/``, so that::

    mlflow.pyfunc.load_model("models:/retino-retinamnist-resnet18-pretrained@champion").predict(
        pandas.DataFrame({"path": ["photo.jpg"]}))

answers as the export's ``predict_onnx.py`` does, and so as ``predict --json`` does: one row a
photo, decided by ``judging.decision.decide`` at the run's operating point. An export that
would answer otherwise (an older release's) is made again first. Registering again changes
nothing; a new champion gets a version of its own and the alias moves to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import sys
import tempfile
import warnings
from pathlib import Path

from .. import runs
from ..errors import CheckpointError, ExportError, TrackingError
from ..judging import champions, operating, trust
from . import tracking

GRADER = Path(__file__).with_name("grader_model.py")
ALIAS = "champion"
# Written into the model (its requirements.txt): what loading it needs. Given, not inferred:
# inferring loads the model in a subprocess and pins whatever happens to be installed.
PIP_REQUIREMENTS = ["mlflow-skinny>=3.11", "onnxruntime>=1.18", "numpy>=1.26", "pillow>=10.3", "pandas>=2.1"]


def data_slug(spec: str) -> str:
    """``retinamnist``, or the data folder's or file's name, lower case, as a model name allows."""
    text = str(spec or "retinamnist").strip().rstrip("/").rsplit("/", 1)[-1]
    text = re.sub(r"\.(npz|csv)$", "", text, flags=re.I)
    return re.sub(r"[^a-z0-9_.-]+", "-", text.lower()).strip("-.") or "data"


def model_name(run: runs.RunInfo) -> str:
    """``retino-<data>-<arch>-<pretrained|scratch>``."""
    return f"retino-{data_slug(champions.data_of(run))}-{run.arch}-{'pretrained' if run.pretrained else 'scratch'}"


def _signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("string", "path", required=False),
                                         ColSpec("binary", "image", required=False),
                                         ColSpec("string", "name", required=False)]))


def register_champions(client, all_runs: list[runs.RunInfo], experiment: str = tracking.DEFAULT_EXPERIMENT,
                       among: list[runs.RunInfo] | None = None) -> list[dict]:
    """Register the champion of every data set and configuration of ``among`` (default: all
    runs); one result per model: its name, version, run and why that run, or the error."""
    from mlflow.exceptions import MlflowException

    wanted = {(champions.data_of(r), r.configuration) for r in (all_runs if among is None else among)}
    done = []
    for data in sorted({d for d, _ in wanted}):
        for configuration, champ in sorted(champions.champions(all_runs, data).items()):
            if (data, configuration) not in wanted:
                continue
            try:
                done.append(register(client, champ, experiment))
            except (ExportError, CheckpointError, TrackingError, MlflowException) as err:
                text = tracking.why(err) if isinstance(err, MlflowException) else str(err)
                done.append({"model": model_name(champ.run), "run_id": champ.run.run_id, "error": text})
    return done


def _export(run: runs.RunInfo) -> Path:
    """The run's checked ONNX export, made now when it has none or when it would not answer as
    the app does today (a predict_onnx.py of an older release, another referral threshold)."""
    from ..grading import export, standalone

    folder = export.default_folder(run.path, "onnx")
    pre = export.read_export(folder)
    script = folder / export.SCRIPT
    current = pre is not None and script.is_file() and script.read_text(encoding="utf-8") == \
        standalone.standalone_script() and pre.get("calibrated") == operating.grades_calibrated(run.path) \
        and (pre.get("referable") or {}).get("threshold") == operating.of_run(run.path).threshold
    if not current:
        why = "it has no export" if pre is None else "its export answers by an older rule"
        print(f"exporting {run.run_id} ({run.configuration}) to ONNX for the registry: {why}…",
              file=sys.stderr, flush=True)
        export.export_run(run.path, "onnx")
    return folder


def _digest(folder: Path) -> str:
    """What a version's model is: the export (preprocessing.json holds the ONNX file's hash, and
    predict_onnx.py) and the wrapper around it."""
    h = hashlib.sha256()
    for path in (folder / "preprocessing.json", folder / "predict_onnx.py", GRADER):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def register(client, champ, experiment: str = tracking.DEFAULT_EXPERIMENT) -> dict:
    """Register ``champ`` (a judging.champions Champion): its run synced (export included), its
    model a version of ``model_name``, the alias ``champion`` on that version."""
    run = champ.run
    folder = _export(run)
    synced = tracking.sync_run(client, run.path, experiment)
    mrun = client.get_run(synced["mlflow_run_id"])
    name, digest = model_name(run), _digest(folder)
    _ensure_model(client, name, run)
    version = _version(client, name, mrun, folder, digest, champ)
    before = client.get_registered_model(name).aliases.get(ALIAS)
    if str(before) != str(version.version):
        client.set_registered_model_alias(name, ALIAS, version.version)
    if version.tags.get("retino.champion_reason") != champ.reason:
        client.set_model_version_tag(name, version.version, "retino.champion_reason", champ.reason)
    return {"model": name, "version": str(version.version), "alias": ALIAS, "uri": f"models:/{name}@{ALIAS}",
            "run_id": run.run_id, "mlflow_run_id": mrun.info.run_id, "reason": champ.reason,
            "moved_from": None if str(before) == str(version.version) else before}


def _ensure_model(client, name: str, run: runs.RunInfo) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, tags={"retino.data": champions.data_of(run),
                                                   "retino.configuration": run.configuration},
                                       description=f"retino DR grader, {run.configuration} on "
                                                   f"{champions.data_of(run)}: the alias '{ALIAS}' is the run "
                                                   "that answers for this configuration")
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


@contextlib.contextmanager
def _quiet():
    """No MLflow chatter on stderr while a version is made: "no input example" (a photo is not
    one to store with the model) and "Waiting up to 300 seconds for model version..."."""
    logger = logging.getLogger("mlflow")
    level = logger.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            logger.setLevel(level)


def _version(client, name: str, mrun, folder: Path, digest: str, champ):
    """The version of this run's model with this digest; logged and created when there is none."""
    import mlflow.pyfunc

    for found in client.search_model_versions(f"name = '{name}' and run_id = '{mrun.info.run_id}'"):
        if found.tags.get("retino.grader") == digest:
            return found
    path = f"grader/{digest}"
    verdict = trust.of_summary(champ.run.summary) or {}
    # What holds for every photo it answers (predict_onnx.py says it once, before the rows).
    says = str(((runs.read_json(folder / "preprocessing.json", {}) or {}).get("referable") or {}).get("says", ""))
    with tempfile.TemporaryDirectory(prefix="retino-grader-") as tmp, _quiet():
        mlflow.pyfunc.save_model(path=str(Path(tmp) / "grader"), python_model=str(GRADER),
                                 artifacts={"export": str(folder)}, pip_requirements=PIP_REQUIREMENTS,
                                 signature=_signature())
        client.log_artifacts(mrun.info.run_id, str(Path(tmp) / "grader"), artifact_path=path)
        return client.create_model_version(
            name, source=f"{mrun.info.artifact_uri}/{path}", run_id=mrun.info.run_id,
            tags={"retino.run_id": champ.run.run_id, "retino.grader": digest,
                  "retino.verdict": verdict.get("verdict", "not judged"), "retino.operating_point": says},
            description=f"run {champ.run.run_id}: {trust.label(verdict) if verdict else 'not judged'}. {says}")
