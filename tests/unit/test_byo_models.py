"""Bring your own model (issue #15): multi-input skl2onnx pipelines and MLflow directories, registered and scored.

Real parts throughout: a scikit-learn ColumnTransformer pipeline exported by
skl2onnx, ONNX Runtime sessions, Avro-encoded requests, the real
``driftline model register`` command.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from fastavro import schemaless_reader

from driftline.detectors.profile import CategoricalReference, NumericReference, ReferenceProfile
from driftline.inference.errors import ModelError
from driftline.inference.manifest import Manifest, input_mismatch
from driftline.inference.model import OnnxModel
from driftline.inference.registry import ModelRegistry, register_version
from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import HEADER, encode
from driftline.streams.cli.main import main
from driftline.streams.core.pipeline import ERROR_HEADER, RawMessage, ScorePipeline, ServedModel
from driftline.streams.core.windows import WindowFolder
from tests.byo import CARD, COLUMNS, DEVICE_TRUST_IMPUTE, SPEC, export, sklearn_scores, train, write_mlflow

NOW = 1_767_225_700_000


@pytest.fixture(scope="module")
def trained(generator) -> tuple[Any, bytes]:  # type: ignore[no-untyped-def]
    """The fitted pipeline and its ONNX export (one input per column)."""
    records, labels = generator.generate(4000, np.random.default_rng(7))
    pipe = train(records, labels)
    return pipe, export(pipe)


def _register(capsys: pytest.CaptureFixture[str], models: Path, source: Path, *flags: str,
              version: str = "1") -> tuple[int, str, str]:
    """``driftline model register`` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(["model", "register", str(source), "--name", "cards", "--version", version,
                 "--model-dir", str(models), "--providers", "cpu", *flags])
    out = capsys.readouterr()
    return code, out.out, out.err


def _pipeline(catalog: SchemaCatalog, model: OnnxModel, scored: bool = False) -> ScorePipeline:
    return ScorePipeline({"ns.requests": ServedModel(model, catalog, max_message_bytes=8192)},
                         catalog.latest("driftline.Prediction"), predictions_topic="ns.predictions",
                         deadletter_topic="ns.deadletter", deadletter_max_bytes=1 << 20,
                         scored=(catalog.latest("driftline.Scored"), "ns.scored") if scored else None)


def _messages(catalog: SchemaCatalog, records: list[dict[str, Any]]) -> list[RawMessage]:
    schema = catalog.latest(CARD)
    return [RawMessage("ns.requests", 0, i, r["card_id"].encode(), encode(schema, r), None, NOW - 5)
            for i, r in enumerate(records)]


def _read(catalog: SchemaCatalog, subject: str, value: bytes | None) -> dict[str, Any]:
    assert value is not None
    record = schemaless_reader(io.BytesIO(value[HEADER.size:]), catalog.latest(subject).fast, None)
    assert isinstance(record, dict)
    return record


def _requests(generator, n: int, seed: int) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    records, _ = generator.generate(n, np.random.default_rng(seed))
    return [{**r, "ip_risk": r["ip_risk"] or 0.1} for r in records]


def test_a_multi_input_pipeline_registers_from_its_graph_and_scores_as_scikit_learn_does(
    tmp_path: Path, trained, catalog: SchemaCatalog, generator, capsys: pytest.CaptureFixture[str]  # type: ignore[no-untyped-def]
) -> None:
    pipe, onnx_bytes = trained
    (tmp_path / "model.onnx").write_bytes(onnx_bytes)
    (tmp_path / "spec.json").write_text(json.dumps(SPEC))
    train_rows = _requests(generator, 1500, 3)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train_rows))
    code, out, err = _register(capsys, tmp_path / "models", tmp_path / "model.onnx", "--subject", CARD,
                               "--spec", str(tmp_path / "spec.json"), "--data", str(tmp_path / "train.jsonl"))
    assert code == 0, err
    assert "merchant_category: 8 categories from the graph's OneHotEncoder" in out
    assert "channel: 4 categories from the graph's OneHotEncoder" in out

    version = ModelRegistry(tmp_path / "models").path("cards", "1")
    manifest = Manifest.read(version)
    assert [(i.name, i.field, i.type) for i in manifest.inputs] == [(n, n, t) for n, t in COLUMNS]
    features = {f.name: f for f in manifest.profile.features}
    assert features["merchant_category"].categories == tuple(sorted(generator.CATEGORIES))  # type: ignore[union-attr]
    assert features["device_trust"].allow_missing and features["device_trust"].impute == DEVICE_TRUST_IMPUTE  # type: ignore[union-attr]
    assert features["amount"].maximum == 1e6 and manifest.labels == ("legit", "fraud")  # type: ignore[union-attr]
    assert manifest.request_subject == CARD and manifest.profile.key_field == "card_id"
    # the drift reference is built from the request columns, not from a model matrix
    reference = ReferenceProfile.load(version / "profile.json")
    assert [f.name for f in reference.features] == [n for n, _ in COLUMNS]
    cat = next(f for f in reference.features if f.name == "merchant_category")
    assert isinstance(cat, CategoricalReference) and int(cat.counts.sum()) == len(train_rows)
    assert isinstance(next(f for f in reference.features if f.name == "hour_of_day"), NumericReference)

    model = OnnxModel(version, providers="cpu")
    model.load()
    assert not model.uses_io_binding
    records = _requests(generator, 400, 11)
    records[0]["device_trust"] = None  # imputed as the manifest says, as scikit-learn saw it in training
    bad = [{**records[1], "request_id": "unknown-category", "merchant_category": "crypto"},
           {**records[2], "request_id": "negative-amount", "amount": -5.0},
           {**records[3], "request_id": "long-string", "channel": "x" * 100}]
    pipeline = _pipeline(catalog, model)
    served = pipeline.served["ns.requests"]
    served.set_folder(WindowFolder(reference, "cards", "1", "test", length_ms=None, length_events=len(records) + 3))
    outcome = pipeline.process(_messages(catalog, records + bad), NOW)

    preds = [_read(catalog, "driftline.Prediction", p.value) for p in outcome.predictions]
    assert [p["request_id"] for p in preds] == [r["request_id"] for r in records]
    scores = np.array([p["score"] for p in preds])
    np.testing.assert_allclose(scores, sklearn_scores(pipe, records), atol=1e-5)
    assert [p["label"] for p in preds] == ["fraud" if s >= 0.3 else "legit" for s in scores]
    reasons = {dict(d.headers or [])[ERROR_HEADER + "reason"] for d in outcome.deadletters}
    assert reasons == {b"unknown_category", b"out_of_range", b"string_too_long"}
    (sketch,) = outcome.sketches  # the drift window folds the request columns of the scored rows
    assert sketch.messages == len(records) + len(bad) and sketch.dead_letters == len(bad)
    assert int(sketch.columns["merchant_category"].counts.sum()) == len(records)
    nulls = sum(r["device_trust"] is None for r in records)
    assert nulls > 1 and sketch.columns["device_trust"].nulls == nulls  # the requests' nulls, not the imputed value


def test_an_mlflow_directory_registers_from_its_signature_and_graph(
    tmp_path: Path, trained, catalog: SchemaCatalog, generator, capsys: pytest.CaptureFixture[str]  # type: ignore[no-untyped-def]
) -> None:
    pipe, onnx_bytes = trained
    directory = write_mlflow(tmp_path / "mlruns" / "1" / "abc" / "artifacts" / "model", onnx_bytes)
    (tmp_path / "spec.json").write_text(json.dumps({k: v for k, v in SPEC.items() if k != "request"}))
    code, out, err = _register(capsys, tmp_path / "models", directory, "--subject", CARD, "--key-field", "card_id",
                               "--spec", str(tmp_path / "spec.json"))
    assert code == 0, err
    assert f"manifest from MLflow model {directory}" in out and "from the graph's OneHotEncoder" in out
    version = ModelRegistry(tmp_path / "models").path("cards", "1")
    assert (version / "model.onnx").read_bytes() == onnx_bytes
    raw = json.loads((version / "manifest.json").read_text())
    assert raw["source"]["format"] == "mlflow" and raw["source"]["run_id"] == "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
    assert [i["type"] for i in raw["onnx"]["inputs"]] == [t for _, t in COLUMNS]
    assert raw["request"] == {"subject": CARD, "key_field": "card_id"}

    model = OnnxModel(version, providers="cpu")
    model.load()
    records = _requests(generator, 200, 12)
    outcome = _pipeline(catalog, model).process(_messages(catalog, records), NOW)
    scores = [_read(catalog, "driftline.Prediction", p.value)["score"] for p in outcome.predictions]
    np.testing.assert_allclose(scores, sklearn_scores(pipe, records), atol=1e-5)


def _mlflow_with_signature(tmp_path: Path, onnx_bytes: bytes, change: dict[str, Any]) -> Path:
    """An MLflow directory whose signature has one column changed (name or type)."""
    directory = write_mlflow(tmp_path / "model", onnx_bytes)
    mlmodel = yaml.safe_load((directory / "MLmodel").read_text())
    columns = json.loads(mlmodel["signature"]["inputs"])
    columns[1].update(change)  # amount
    mlmodel["signature"]["inputs"] = json.dumps(columns)
    (directory / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    return directory


@pytest.mark.parametrize(("change", "expect"), [
    ({"name": "amount_eur"}, "are not the ONNX inputs"),
    ({"type": "string"}, "signature column 'amount' is string but the ONNX input is tensor(float)"),
    ({"type": "boolean"}, "has type 'boolean'"),
])
def test_an_mlflow_signature_unlike_the_graph_is_refused_in_one_line(
    tmp_path: Path, trained, capsys: pytest.CaptureFixture[str], change: dict[str, Any], expect: str  # type: ignore[no-untyped-def]
) -> None:
    directory = _mlflow_with_signature(tmp_path, trained[1], change)
    code, _, err = _register(capsys, tmp_path / "models", directory, "--subject", CARD)
    assert code == 1 and expect in err and err.count("\n") == 1, err
    assert ModelRegistry(tmp_path / "models").versions("cards") == []


def test_an_mlflow_column_the_request_schema_cannot_feed_is_refused(
    tmp_path: Path, generator, capsys: pytest.CaptureFixture[str]  # type: ignore[no-untyped-def]
) -> None:
    """A long (int64) column read from a double field would be truncated: refused before anything is written."""
    columns = (("amount", "int64"), ("merchant_category", "string"))
    records, labels = generator.generate(500, np.random.default_rng(2))
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    x = np.array([[int(r["amount"]), r["merchant_category"]] for r in records], dtype=object)
    pipe = Pipeline([("pre", ColumnTransformer([("n", StandardScaler(), [0]), ("c", OneHotEncoder(), [1])])),
                     ("clf", LogisticRegression())]).fit(x, labels)
    directory = write_mlflow(tmp_path / "model", export(pipe, columns), columns)
    code, _, err = _register(capsys, tmp_path / "models", directory, "--subject", CARD)
    assert code == 1 and err.count("\n") == 1, err
    assert f"signature column 'amount' is long but {CARD} has 'amount' as double" in err


def _spec_with_inputs(tmp_path: Path, edit: dict[str, Any]) -> Path:
    """A hand-written manifest template with named inputs, one of them edited."""
    inputs = [{"name": n, "field": n, "type": t} for n, t in COLUMNS]
    inputs[1] = {**inputs[1], **edit}
    features: list[dict[str, Any]] = [{"name": n, "kind": "categorical" if t == "string" else "numeric"}
                                      for n, t in COLUMNS]
    features[4]["categories"] = ["grocery", "fuel", "restaurant", "travel", "electronics", "online_retail",
                                 "gambling", "other"]
    features[5]["categories"] = ["pos", "contactless", "online", "atm"]
    features[3].update(allow_missing=True, impute=DEVICE_TRUST_IMPUTE)
    spec = {**SPEC, "features": features, "onnx": {"inputs": inputs, "output": "probabilities", "output_index": 1}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    return tmp_path / "spec.json"


@pytest.mark.parametrize(("edit", "expect"), [
    ({}, None),
    ({"name": "amt"}, "are not the manifest's onnx.inputs ['amt', "),
    ({"type": "double"}, "'amount' is tensor(float) but the manifest declares it double; set its type to 'float'"),
    ({"type": "int8"}, "onnx input 'amount' has type 'int8'"),
    ({"field": "hour_of_day", "type": "float"}, "features ['amount'] feed no onnx input"),
])
def test_a_hand_written_manifest_is_checked_against_the_graph(
    tmp_path: Path, trained, catalog: SchemaCatalog, capsys: pytest.CaptureFixture[str],  # type: ignore[no-untyped-def]
    edit: dict[str, Any], expect: str | None,
) -> None:
    (tmp_path / "model.onnx").write_bytes(trained[1])
    code, _, err = _register(capsys, tmp_path / "models", tmp_path / "model.onnx",
                             "--spec", str(_spec_with_inputs(tmp_path, edit)))
    if expect is None:  # the same manifest, right: registered, and a request schema that feeds it
        assert code == 0, err
        manifest = Manifest.read(ModelRegistry(tmp_path / "models").path("cards", "1"))
        manifest.check_request(catalog.latest(CARD))
        return
    assert code == 1 and expect in err and err.count("\n") == 1, err
    assert ModelRegistry(tmp_path / "models").versions("cards") == []


def test_an_integer_input_fed_from_a_double_field_is_refused(
    tmp_path: Path, trained, capsys: pytest.CaptureFixture[str]  # type: ignore[no-untyped-def]
) -> None:
    spec = json.loads(_spec_with_inputs(tmp_path, {}).read_text())
    spec["features"][2]["name"] = spec["onnx"]["inputs"][2]["field"] = "ratio_to_median_amount"  # a double field
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "model.onnx").write_bytes(trained[1])
    code, _, err = _register(capsys, tmp_path / "models", tmp_path / "model.onnx",
                             "--spec", str(tmp_path / "spec.json"))
    assert code == 1 and err.count("\n") == 1, err
    assert f"onnx input 'hour_of_day' is int64 but {CARD} has 'ratio_to_median_amount' as double" in err


def test_string_inputs_without_categories_ask_for_them(
    tmp_path: Path, trained, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    """Without categories in the graph (no onnx package here), --categories gives them; without it: one line."""
    import driftline.inference.byo as byo

    monkeypatch.setattr(byo, "graph_categories", lambda _path: None)
    (tmp_path / "model.onnx").write_bytes(trained[1])
    code, _, err = _register(capsys, tmp_path / "models", tmp_path / "model.onnx", "--subject", CARD)
    assert code == 1 and err.count("\n") == 1
    assert "no categories for the string input 'merchant_category': give --categories" in err
    assert "pip install onnx" in err
    categories = {"merchant_category": ["grocery", "fuel", "restaurant", "travel", "electronics", "online_retail",
                                        "gambling", "other"], "channel": ["pos", "contactless", "online", "atm"]}
    code, out, err = _register(capsys, tmp_path / "models", tmp_path / "model.onnx", "--subject", CARD,
                               "--categories", json.dumps(categories))
    assert code == 0, err
    assert "merchant_category: 8 categories from --categories" in out
    manifest = Manifest.read(ModelRegistry(tmp_path / "models").path("cards", "1"))
    assert manifest.profile.features[5].categories == ("pos", "contactless", "online", "atm")  # type: ignore[union-attr]


def test_the_manifest_refuses_inputs_that_do_not_describe_its_features() -> None:
    base = json.loads((Path(__file__).parents[2] / "examples/models/fraud/1/manifest.json").read_text())
    features = [{"name": "amount"}, {"name": "channel", "kind": "categorical", "categories": ["pos"]}]
    ok = [{"name": "a", "field": "amount", "type": "float"}, {"name": "c", "field": "channel", "type": "string"}]
    m = Manifest.from_dict({**base, "features": features, "onnx": {"inputs": ok, "output": "probabilities"}})
    assert [i.name for i in m.inputs] == ["a", "c"] and m.output_index == 1
    mapping = {"a": {"field": "amount", "type": "float"}, "c": {"field": "channel", "type": "string"}}
    assert Manifest.from_dict({**base, "features": features, "onnx": {"inputs": mapping}}).inputs == m.inputs
    for onnx, expect in [
        ({"inputs": [ok[0], {**ok[1], "type": "float"}]}, "is float but feature 'channel' is categorical"),
        ({"inputs": [ok[0], {**ok[1], "field": "country"}]}, "reads 'country', which is not among the features"),
        ({"inputs": ok, "input": "features"}, "both input (one matrix) and inputs"),
        ({"inputs": [ok[0], {**ok[1], "name": "a"}]}, "names inputs ['a'] twice"),
    ]:
        with pytest.raises(ModelError, match=expect.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            Manifest.from_dict({**base, "features": features, "onnx": onnx})
    int_feature = [{"name": "amount", "allow_missing": True, "impute": 0.5}, features[1]]
    with pytest.raises(ModelError, match="impute 0.5 must be a whole number"):
        Manifest.from_dict({**base, "features": int_feature,
                            "onnx": {"inputs": [{**ok[0], "type": "int64"}, ok[1]]}})


def test_a_single_matrix_challenger_retrains_from_the_scored_rows_of_a_multi_input_champion(
    tmp_path: Path, trained, catalog: SchemaCatalog, generator, capsys: pytest.CaptureFixture[str]  # type: ignore[no-untyped-def]
) -> None:
    """``{ns}.scored`` rows carry the manifest's matrix for a multi-input model too, so the trainer's challenger
    (one float32 matrix) trains on them and serves as a shadow next to the champion."""
    from datetime import UTC, datetime

    from driftline.inference.training import train_challenger

    (tmp_path / "model.onnx").write_bytes(trained[1])
    (tmp_path / "spec.json").write_text(json.dumps(SPEC))
    models = tmp_path / "models"
    assert _register(capsys, models, tmp_path / "model.onnx", "--subject", CARD,
                     "--spec", str(tmp_path / "spec.json"))[0] == 0
    champion = OnnxModel(ModelRegistry(models).path("cards", "1"), providers="cpu")
    champion.load()
    pipeline = _pipeline(catalog, champion, scored=True)
    records, labels = generator.generate(1500, np.random.default_rng(5))
    records = [{**r, "ip_risk": r["ip_risk"] or 0.1} for r in records]
    outcome = pipeline.process(_messages(catalog, records), NOW)
    scored = [_read(catalog, "driftline.Scored", s.value) for s in outcome.scored]
    assert len(scored) == len(records)
    width = champion.manifest.profile.width
    x = np.frombuffer(b"".join(s["features"] for s in scored), dtype="<f4").reshape(len(scored), width)
    served = pipeline.served["ns.requests"]
    checked = served.validator.validate(served.decoder.decode([encode(catalog.latest(CARD), r)
                                                                for r in records]).columns)
    np.testing.assert_array_equal(x, checked.raw(checked.matrix))  # the one-hot matrix, NaN where imputed

    x = np.where(np.isnan(x), DEVICE_TRUST_IMPUTE, x)
    onnx_bytes, section = train_challenger(x, labels, "binary_classification")
    (tmp_path / "challenger.onnx").write_bytes(onnx_bytes)
    register_version(models, tmp_path / "challenger.onnx", {**champion.manifest.raw, "onnx": section}, name="cards",
                     version="2", created_at=datetime.now(UTC), code_version="test")
    challenger = OnnxModel(ModelRegistry(models).path("cards", "2"), providers="cpu")
    challenger.load()
    assert not challenger.manifest.inputs and input_mismatch(champion.manifest, challenger.manifest) is None
    served.deploy(served.deployment.add_shadow("2", NOW), {"1": champion, "2": challenger})
    again = pipeline.process(_messages(catalog, records[:300]), NOW)
    assert len(again.predictions) == len(again.shadow_predictions) == 300 and not again.shadow_errors
    shadow = np.array([_read(catalog, "driftline.Prediction", p.value)["score"] for p in again.shadow_predictions])
    np.testing.assert_allclose(shadow, challenger.predict(x[:300].astype(np.float32)), rtol=1e-6)
    assert Counter(s["variant"] for s in (_read(catalog, "driftline.Scored", r.value) for r in again.scored)) == {
        "champion": 300, "shadow": 300}


def test_an_mlflow_column_signature_over_one_matrix_input_registers_as_a_single_matrix_model(
    tmp_path: Path, catalog: SchemaCatalog, generator, capsys: pytest.CaptureFixture[str]  # type: ignore[no-untyped-def]
) -> None:
    """skl2onnx with one FloatTensorType([None, k]) and a pandas-style signature: the columns are the matrix's."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    names = ("amount", "merchant_risk", "velocity_score")
    records, labels = generator.generate(2000, np.random.default_rng(4))
    x = np.array([[r[n] for n in names] for r in records], dtype=np.float32)
    clf = LogisticRegression(max_iter=1000).fit(x, labels)
    onx = to_onnx(clf, initial_types=[("float_input", FloatTensorType([None, len(names)]))],
                  options={id(clf): {"zipmap": False}}, target_opset=17)
    directory = write_mlflow(tmp_path / "model", onx.SerializeToString(), [(n, "double") for n in names])
    code, out, err = _register(capsys, tmp_path / "models", directory, "--subject", CARD)
    assert code == 0, err
    assert "reads one matrix: its 3 columns are the signature's" in out
    model = OnnxModel(ModelRegistry(tmp_path / "models").path("cards", "1"), providers="cpu")
    model.load()
    assert not model.manifest.inputs and model.manifest.input_name == "float_input"
    assert [f.name for f in model.manifest.profile.features] == list(names)
    requests = _requests(generator, 100, 13)
    outcome = _pipeline(catalog, model).process(_messages(catalog, requests), NOW)
    scores = [_read(catalog, "driftline.Prediction", p.value)["score"] for p in outcome.predictions]
    want = clf.predict_proba(np.array([[r[n] for n in names] for r in requests], dtype=np.float32))[:, 1]
    np.testing.assert_allclose(scores, want, atol=1e-5)
