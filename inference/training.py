"""Training a challenger on labeled records (the ``train`` extra: scikit-learn and skl2onnx).

The challenger reads exactly the champion's input matrix (the labeled
records carry it), so it is a drop-in version of the same model: same
request schema, same features and encodings, same validation. A standard
scaler and a logistic regression (or a ridge regression for regressors):
quick to train on the few thousand labels a drift leaves, hard to overfit,
and exported to ONNX with the input and output names driftline expects.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from driftline.inference.errors import ModelError


def train_challenger(x: np.ndarray, y: np.ndarray, task: str, seed: int = 0) -> tuple[bytes, dict[str, Any]]:
    """(ONNX bytes, the manifest's ``onnx`` section) of a model fitted on ``x`` → ``y``."""
    try:
        from skl2onnx import to_onnx
        from sklearn.linear_model import LogisticRegression, Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError as exc:
        raise ModelError("the trainer needs the train extra: pip install 'driftline[train]'") from exc
    x = np.asarray(x, dtype=np.float32)
    if task == "regression":
        model = make_pipeline(StandardScaler(), Ridge(alpha=1.0))
        model.fit(x, np.asarray(y, dtype=np.float64))
        section: dict[str, Any] = {"input": "features", "output": "variable"}
        options = None
    else:
        if len(np.unique(y)) < 2:
            raise ModelError("the labeled records hold one class only; wait for more labels")
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
        model.fit(x, np.asarray(y, dtype=np.int64))
        section = {"input": "features", "output": "probabilities", "output_index": 1}
        options = {id(model): {"zipmap": False}}
    from skl2onnx.common.data_types import FloatTensorType

    onx = to_onnx(model, initial_types=[("features", FloatTensorType([None, x.shape[1]]))], options=options,
                  target_opset=17)
    return onx.SerializeToString(), section
