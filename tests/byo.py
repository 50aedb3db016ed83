"""A model as users bring it: a scikit-learn ColumnTransformer pipeline exported by skl2onnx, one input per column.

Shared by the unit and the worker tests of multi-input ONNX models and MLflow
model directories (issue #15).
"""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

CARD = "driftline.examples.CardTransaction"
#: (column, ONNX element type): every numeric type a named input may have, and string columns. The double
#: comes first: skl2onnx casts the numeric inputs to the first one's type before it concatenates them.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("merchant_risk", "double"), ("amount", "float"), ("hour_of_day", "int64"), ("device_trust", "float"),
    ("merchant_category", "string"), ("channel", "string"),
)
DEVICE_TRUST_IMPUTE = 0.75  # device_trust is nullable in CardTransaction: the spec imputes it, as training did
#: what the model cannot say about itself: labels, entity key, ranges, imputation (merged by the registration)
SPEC: dict[str, Any] = {
    "task": "binary_classification", "labels": ["legit", "fraud"], "threshold": 0.3,
    "request": {"subject": CARD, "key_field": "card_id", "max_string_length": 64},
    "features": [
        {"name": "amount", "kind": "numeric", "min": 0, "max": 1e6},
        {"name": "device_trust", "kind": "numeric", "min": 0, "max": 1, "allow_missing": True,
         "impute": DEVICE_TRUST_IMPUTE},
    ],
}


def table(records: Sequence[dict[str, Any]]) -> np.ndarray:
    """The model's columns of ``records`` as scikit-learn sees them (nulls imputed as the manifest says)."""
    rows = [[DEVICE_TRUST_IMPUTE if r[c] is None and c == "device_trust" else r[c] for c, _ in COLUMNS]
            for r in records]
    return np.array(rows, dtype=object)


def train(records: Sequence[dict[str, Any]], labels: np.ndarray) -> Any:
    """Pipeline(ColumnTransformer(scaler on the numbers, OneHotEncoder on the strings), LogisticRegression)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [i for i, (_, t) in enumerate(COLUMNS) if t != "string"]
    strings = [i for i, (_, t) in enumerate(COLUMNS) if t == "string"]
    pipe = Pipeline([
        ("pre", ColumnTransformer([("num", StandardScaler(), numeric),
                                   ("cat", OneHotEncoder(handle_unknown="ignore"), strings)])),
        ("clf", LogisticRegression(max_iter=1000)),
    ])
    return pipe.fit(table(records), labels)


def export(pipe: Any, columns: Sequence[tuple[str, str]] = COLUMNS) -> bytes:
    """skl2onnx ``to_onnx`` with one ``[None, 1]`` input per column, StringTensorType for the strings."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, Int64TensorType, StringTensorType

    kinds = {"float": FloatTensorType, "double": DoubleTensorType, "int64": Int64TensorType,
             "string": StringTensorType}
    onx = to_onnx(pipe, initial_types=[(name, kinds[t]([None, 1])) for name, t in columns],
                  options={id(pipe.steps[-1][1]): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    return bytes(onx.SerializeToString())


def sklearn_scores(pipe: Any, records: Sequence[dict[str, Any]]) -> np.ndarray:
    """``predict_proba`` of the fraud class on the values the model is fed (float inputs are float32)."""
    x = table(records)
    for i, (_, t) in enumerate(COLUMNS):
        if t == "float":
            x[:, i] = x[:, i].astype(np.float32).astype(np.float64)
    return np.asarray(pipe.predict_proba(x)[:, 1])


MLFLOW_TYPES = {"float": "float", "double": "double", "int64": "long", "string": "string"}


def write_mlflow(directory: Path, onnx_bytes: bytes, columns: Sequence[tuple[str, str]] = COLUMNS) -> Path:
    """An MLflow model directory as ``mlflow.onnx.save_model`` writes it: MLmodel (onnx + python_function
    flavors, column signature), model.onnx and the environment files."""
    import onnx

    directory.mkdir(parents=True)
    (directory / "model.onnx").write_bytes(onnx_bytes)
    inputs = [{"type": MLFLOW_TYPES[t], "name": name, "required": True} for name, t in columns]
    outputs = [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 2]}}]
    mlmodel = {
        "artifact_path": "model",
        "flavors": {
            "onnx": {"code": None, "data": "model.onnx", "onnx_version": onnx.__version__,
                     "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]},
            "python_function": {"data": "model.onnx", "env": {"conda": "conda.yaml", "virtualenv": "python_env.yaml"},
                                "loader_module": "mlflow.onnx", "python_version": platform.python_version()},
        },
        "mlflow_version": "2.14.1",
        "model_size_bytes": len(onnx_bytes),
        "model_uuid": "5d4b2c1e0f9a4b7c8d6e5f4a3b2c1d0e",
        "run_id": "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
        "signature": {"inputs": json.dumps(inputs), "outputs": json.dumps(outputs), "params": None},
        "utc_time_created": "2026-01-05 10:11:12.131415",
    }
    (directory / "MLmodel").write_text(yaml.safe_dump(mlmodel, default_flow_style=False))
    (directory / "conda.yaml").write_text("channels:\n- conda-forge\ndependencies:\n- python=3.11\n- pip\n")
    (directory / "python_env.yaml").write_text("python: 3.11\nbuild_dependencies:\n- pip\ndependencies:\n"
                                               "- -r requirements.txt\n")
    (directory / "requirements.txt").write_text("mlflow==2.14.1\nonnx\nonnxruntime\n")
    return directory
