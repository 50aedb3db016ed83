"""Train the example fraud model and write it as a model version (needs the ``train`` extra).

    python examples/fraud/train.py --out examples/models --version 1

A scikit-learn pipeline (standard scaling + a small MLP) on synthetic
transactions from ``generator.py``, exported to ONNX with skl2onnx. The
feature profile written into the manifest holds the valid ranges (what is
physically possible, not what training saw: values the model has not seen
are drift, not errors), the categories and the missing-value policy.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import generator  # noqa: E402

from driftline.inference.registry import write_version  # noqa: E402
from driftline.schemas.catalog import SchemaCatalog, builtin_schema_dir  # noqa: E402
from driftline.schemas.columnar import columns_from_records, flat_fields  # noqa: E402
from driftline.schemas.profile import InputProfile  # noqa: E402
from driftline.schemas.validation import Validator  # noqa: E402

SUBJECT = "driftline.examples.CardTransaction"
RANGES = {
    "amount": (0, 1e6), "merchant_risk": (0, 1), "distance_from_home_km": (0, 20_040),
    "distance_from_last_km": (0, 20_040), "ratio_to_median_amount": (0, 1e4), "hour_of_day": (0, 23),
    "tx_count_1h": (0, 1_000), "tx_count_24h": (0, 10_000), "account_age_days": (0, 36_500),
    "velocity_score": (-100, 100), "avg_amount_7d": (0, 1e6), "device_trust": (0, 1),
    "ip_risk": (0, 1), "prior_chargebacks": (0, 1_000),
}
#: Missing is fine for these (imputed with the training median); ip_risk is nullable in
#: the shared schema but this model needs it.
MAY_BE_MISSING = {"avg_amount_7d", "device_trust", "prior_chargebacks"}


def feature_specs(records: list[dict]) -> list[dict]:
    specs: list[dict] = []
    for name in generator.NUMERIC:
        lo, hi = RANGES[name]
        spec = {"name": name, "kind": "numeric", "min": lo, "max": hi,
                "allow_missing": name in MAY_BE_MISSING}
        if name in MAY_BE_MISSING:
            values = np.array([r[name] for r in records if r[name] is not None], dtype=float)
            spec["impute"] = float(np.median(values))
        specs.append(spec)
    specs.append({"name": "merchant_category", "kind": "categorical",
                  "categories": list(generator.CATEGORIES), "encoding": "onehot"})
    specs.append({"name": "channel", "kind": "categorical",
                  "categories": list(generator.CHANNELS), "encoding": "onehot"})
    return specs


def main() -> None:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.metrics import roc_auc_score
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("examples/models"))
    ap.add_argument("--version", default="1")
    ap.add_argument("--rows", type=int, default=60_000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    records, labels = generator.generate(args.rows, rng)
    manifest: dict = {
        "name": "fraud",
        "version": args.version,
        "task": "binary_classification",
        "labels": ["legit", "fraud"],
        "threshold": 0.5,
        "request": {"subject": SUBJECT, "id_field": "request_id", "key_field": "card_id",
                    "time_field": "event_time", "max_string_length": 128},
        "features": feature_specs(records),
        "onnx": {"input": "features", "output": "probabilities", "output_index": 1},
    }
    schema = SchemaCatalog.from_dirs([builtin_schema_dir()]).latest(SUBJECT)
    profile = InputProfile.from_manifest(manifest)
    batch = Validator(profile, schema).validate(columns_from_records(records, flat_fields(schema.raw) or []))
    if len(batch.rows) < 0.9 * len(records):  # a few rows lack ip_risk, which this model needs: they are left out
        raise SystemExit(f"generated data fails its own profile: {batch.failures[:3]}")
    x, y = batch.matrix, np.asarray(labels)[batch.rows]
    split = int(0.8 * len(y))
    model = make_pipeline(
        StandardScaler(),
        MLPClassifier(hidden_layer_sizes=(32, 16), max_iter=60, random_state=args.seed),
    )
    model.fit(x[:split], y[:split])
    auc = float(roc_auc_score(y[split:], model.predict_proba(x[split:])[:, 1]))
    onx = to_onnx(model, initial_types=[("features", FloatTensorType([None, x.shape[1]]))],
                  options={id(model): {"zipmap": False}}, target_opset=17)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,  # noqa: S607
                            text=True, check=False).stdout.strip() or "unknown"
    manifest.update(
        metrics={"holdout_auc": round(auc, 4), "fraud_rate": round(float(y.mean()), 4)},
        training_data={
            "rows": len(y), "generator": "examples/fraud/generator.py", "seed": args.seed,
            "fingerprint": hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest(),
        },
        code_version=commit,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    path = write_version(args.out, onx.SerializeToString(), manifest)
    print(f"wrote {path} (holdout AUC {auc:.3f}, {(path / 'model.onnx').stat().st_size} bytes)")


if __name__ == "__main__":
    main()
