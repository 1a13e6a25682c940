"""The MLflow model of a registered champion ("models from code": MLflow copies this file into
the model and runs it when the model loads). It wraps the run's exported grader, so that
``mlflow.pyfunc.load_model("models:/retino-...@champion").predict(...)`` answers exactly as the
export's ``predict_onnx.py`` does: the same decoding, checks, resize, ONNX model and decision.

It imports nothing from retino (where the model loads, retino need not be installed): only
MLflow, pandas and what predict_onnx.py needs (onnxruntime, numpy, Pillow). Nothing imports it.

Input: a DataFrame with a column ``path`` (photo files) and/or ``image`` (a photo's bytes, as an
upload gives them), and optionally ``name`` (what to call an ``image`` row in the answer).
Output: one row per input row, the export's own row (``predict_onnx.py``'s JSON lines), which is
the row ``predict --json`` gives: the one answer per photo of ``judging.decision.decide``, which
predict_onnx.py carries by source (status graded / not graded / no usable model / unreadable;
grade, grade_name and refer null unless graded; the referral first, at the run's threshold).
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class RetinoGrader(PythonModel):
    def load_context(self, context) -> None:
        export = Path(context.artifacts["export"])  # the run's export/onnx folder
        script = export / "predict_onnx.py"
        # A module name of its own per export: two graders loaded in one process never share one.
        name = "retino_predict_onnx_" + hashlib.sha256(script.read_bytes()).hexdigest()[:16]
        spec = importlib.util.spec_from_file_location(name, script)
        self.grader = importlib.util.module_from_spec(spec)
        sys.modules[name] = self.grader  # its dataclasses look their module up there
        spec.loader.exec_module(self.grader)
        self.pre, self.session = self.grader.load(export)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:  # noqa: ARG002
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        items, shown = [], {}
        with tempfile.TemporaryDirectory(prefix="retino-grader-") as tmp:
            for i, row in enumerate(frame.to_dict("records")):
                path, data, name = row.get("path"), row.get("image"), row.get("name")
                path = path if isinstance(path, str) and path else None
                if isinstance(data, (bytes, bytearray)) and len(data):
                    path = str(Path(tmp) / f"image-{i}")
                    Path(path).write_bytes(bytes(data))
                    shown[path] = name if isinstance(name, str) and name else f"image {i}"
                items.append((path or f"row {i}", None if path else "no path or image given"))
            rows = self.grader.grade_files(self.session, self.pre, items)
        for row in rows:  # an uploaded photo is named as the caller named it, not by its temp file
            for temp, name in shown.items():
                row.update({k: v.replace(temp, name) for k, v in row.items() if isinstance(v, str) and temp in v})
        return pd.DataFrame(rows)


mlflow.models.set_model(RetinoGrader())
