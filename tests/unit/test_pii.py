"""Personal fields: marked in the schema or the manifest; never in a failure message or a dead letter in clear."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastavro import schemaless_reader

from driftline.inference.errors import ModelError
from driftline.inference.model import OnnxModel
from driftline.schemas.catalog import SchemaCatalog, builtin_schema_dir
from driftline.schemas.codec import HEADER, decode, encode
from driftline.schemas.pii import PSEUDONYM, Redactor, personal_fields, pseudonym
from driftline.streams.app.score import pii_key_for, redactor_for
from driftline.streams.core.pipeline import ERROR_HEADER, RawMessage, ScorePipeline, ServedModel
from driftline.streams.core.sealing import Opener
from driftline.streams.errors import ConfigError
from driftline.streams.settings import EXAMPLE_MODELS, load_settings
from driftline.streams.trainer.service import LabeledRecord, decode_labeled

KEY = b"p" * 32
CARD = "driftline.examples.CardTransaction"
SECRET_CARD = "4111-1111-1111-1111"


@pytest.fixture
def marked(tmp_path: Path) -> SchemaCatalog:
    """The example request schema, v3: card_id marked personal in the schema itself."""
    raw = json.loads((builtin_schema_dir() / "card_transaction.v2.avsc").read_text())
    next(f for f in raw["fields"] if f["name"] == "card_id")["driftline.pii"] = True
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "card_transaction.v3.avsc").write_text(json.dumps(raw))
    return SchemaCatalog.from_dirs([builtin_schema_dir(), tmp_path / "schemas"])


def model_listing(tmp_path: Path, personal: list[str]) -> OnnxModel:
    """The example model with a manifest that lists ``personal`` fields."""
    target = tmp_path / "models" / "fraud"
    shutil.copytree(EXAMPLE_MODELS / "fraud", target)
    manifest = json.loads((target / "1" / "manifest.json").read_text())
    # segments on personal fields are refused at start: this manifest audits none
    (target / "1" / "manifest.json").write_text(json.dumps({**manifest, "personal": personal, "segments": []}))
    model = OnnxModel(target / "1", providers="cpu")
    model.load()
    return model


def pipeline(catalog: SchemaCatalog, model: OnnxModel, redactor: Redactor | None) -> ScorePipeline:
    served = {"ns.requests": ServedModel(model, catalog, max_message_bytes=1 << 16)}
    return ScorePipeline(served, catalog.latest("driftline.Prediction"), predictions_topic="ns.predictions",
                         deadletter_topic="ns.deadletter", deadletter_max_bytes=1 << 20, redactor=redactor,
                         pii_key=KEY)


def bad_requests(catalog: SchemaCatalog, generator, rng) -> list[RawMessage]:  # type: ignore[no-untyped-def]
    """An out-of-range amount and an unknown channel (a personal field here), each from the secret card."""
    records, _ = generator.generate(2, rng)
    schema = catalog.latest(CARD)
    bad = [{**records[0], "card_id": SECRET_CARD, "amount": -5.0, "ip_risk": 0.1},
           {**records[1], "card_id": SECRET_CARD, "channel": "Dr. Jane Roe's phone", "ip_risk": 0.1}]
    return [RawMessage("ns.requests", 0, i, SECRET_CARD.encode(), encode(schema, r), [], 0)
            for i, r in enumerate(bad)]


def test_marks_come_from_the_schema_and_the_manifest(marked: SchemaCatalog) -> None:
    assert personal_fields(marked.latest(CARD).raw) == {"card_id"}
    assert personal_fields(marked.latest(CARD).raw, ["channel"]) == {"card_id", "channel"}
    assert personal_fields(marked.get(CARD, 2).raw) == frozenset()


def test_dead_letters_carry_pseudonyms_and_messages_no_personal_value(
    marked: SchemaCatalog, tmp_path: Path, generator, rng  # type: ignore[no-untyped-def]
) -> None:
    model = model_listing(tmp_path, ["channel"])
    out = pipeline(marked, model, Redactor(marked, KEY)).process(bad_requests(marked, generator, rng),
                                                                            1_767_225_700_000)
    assert len(out.deadletters) == 2
    for dead in out.deadletters:
        everything = (dead.key or b"") + (dead.value or b"") + b"".join(v or b"" for _, v in dead.headers or [])
        assert SECRET_CARD.encode() not in everything and b"Jane Roe" not in everything
        headers = dict(dead.headers or [])
        assert headers[ERROR_HEADER + "pii"].startswith(b"redacted: card_id,channel")
        record = schemaless_reader(io.BytesIO(dead.value[HEADER.size:]), marked.latest(CARD).fast, None)  # type: ignore[index]
        assert record["card_id"] == pseudonym(KEY, SECRET_CARD) and record["card_id"].startswith(PSEUDONYM)
        assert dead.key == pseudonym(KEY, SECRET_CARD.encode()).encode()  # the entity key is the card
    channel = next(d for d in out.deadletters if b"unknown_category" in dict(d.headers or [])[ERROR_HEADER + "reason"])
    message = dict(channel.headers or [])[ERROR_HEADER + "exception.message"].decode()
    assert message.startswith("channel = (a personal value, not shown)"), message
    amount = next(d for d in out.deadletters if d is not channel)
    assert "-5.0" in dict(amount.headers or [])[ERROR_HEADER + "exception.message"].decode()  # not personal: shown


def test_keep_leaves_the_bytes_and_says_so(marked: SchemaCatalog, fraud_model: OnnxModel, generator, rng) -> None:  # type: ignore[no-untyped-def]
    msgs = bad_requests(marked, generator, rng)
    out = pipeline(marked, fraud_model, None).process(msgs, 1_767_225_700_000)
    assert [d.value for d in out.deadletters] == [m.value for m in msgs]
    assert {dict(d.headers or [])[ERROR_HEADER + "pii"] for d in out.deadletters} == {b"kept: deadletter_pii=keep"}


def test_bytes_that_do_not_decode_are_kept_and_said_so(marked: SchemaCatalog, fraud_model: OnnxModel) -> None:
    junk = RawMessage("ns.requests", 0, 0, b"k", b"\x00\x00\x00\x00\x07garbage", [], 0)
    out = pipeline(marked, fraud_model, Redactor(marked, KEY)).process([junk], 1_767_225_700_000)
    assert out.deadletters[0].value == junk.value
    assert dict(out.deadletters[0].headers or [])[ERROR_HEADER + "pii"].startswith(b"kept: the record does not")


def test_a_personal_model_without_a_key_stops_at_start_and_a_typo_is_refused(
    marked: SchemaCatalog, fraud_model: OnnxModel, tmp_path: Path
) -> None:
    served = pipeline(marked, fraud_model, None).served
    with pytest.raises(ConfigError, match="DRIFTLINE_PII_KEY"):
        redactor_for(load_settings(), marked, served)
    assert redactor_for(load_settings(deadletter_pii="keep"), marked, served) is None
    assert redactor_for(load_settings(pii_key="k" * 20), marked, served) is not None
    with pytest.raises(ModelError, match="personal lists 'cardid'"):
        ServedModel(model_listing(tmp_path, ["cardid"]), marked, max_message_bytes=1 << 16)


def scoring(catalog: SchemaCatalog, model: OnnxModel, key: bytes | None = KEY) -> ScorePipeline:
    """A pipeline that also emits each prediction with its input row on ``ns.scored`` (feedback on)."""
    served = {"ns.requests": ServedModel(model, catalog, max_message_bytes=1 << 16)}
    return ScorePipeline(served, catalog.latest("driftline.Prediction"), predictions_topic="ns.predictions",
                         deadletter_topic="ns.deadletter", deadletter_max_bytes=1 << 20, redactor=None,
                         scored=(catalog.latest("driftline.Scored"), "ns.scored"), pii_key=key)


def requests(catalog: SchemaCatalog, generator, rng, n: int = 50) -> tuple[list[RawMessage], list[dict]]:  # type: ignore[no-untyped-def]
    records, _ = generator.generate(n, rng)
    records = [{**r, "card_id": f"{SECRET_CARD}-{i}"} for i, r in enumerate(records)]
    schema = catalog.latest(CARD)
    return [RawMessage("ns.requests", 0, i, r["card_id"].encode(), encode(schema, r), [], 1)
            for i, r in enumerate(records)], records


def test_rows_of_a_model_reading_personal_fields_travel_sealed_and_the_trainer_opens_them(
    tmp_path: Path, generator, rng  # type: ignore[no-untyped-def]
) -> None:
    catalog = SchemaCatalog.from_dirs([builtin_schema_dir()])
    msgs, records = requests(catalog, generator, rng)
    clear = scoring(catalog, model_listing(tmp_path / "a", [])).process(msgs, 1_767_225_700_000)
    sealed = scoring(catalog, model_listing(tmp_path / "b", ["amount", "channel"])).process(msgs, 1_767_225_700_000)
    assert len(sealed.scored) == len(clear.scored) == len(msgs)
    labeled = catalog.latest("driftline.Labeled")
    for plain, secret, record in zip(clear.scored, sealed.scored, records, strict=True):
        a, b = decode(catalog, plain.value)[1], decode(catalog, secret.value)[1]
        assert a["sealed"] is False and b["sealed"] is True and a["request_id"] == b["request_id"]
        amount = np.float32(record["amount"]).tobytes()
        assert amount in a["features"] and amount not in secret.value  # the clear value is in the plain row only
        # through the join's record (what {ns}.labeled carries) to the trainer, which opens it with the key
        joined = {**b, "label": "fraud", "target": None, "label_time": 2}
        row = decode_labeled(catalog, encode(labeled, joined), Opener(KEY))
        assert isinstance(row, LabeledRecord) and row.features == a["features"]
        other_key = decode_labeled(catalog, encode(labeled, joined), Opener(b"another key"))
        assert other_key.reason == "sealed_labeled" and "another PII key" in other_key.detail  # type: ignore[union-attr]
        other_model = {**joined, "model": "credit"}  # the same request id scored by another model
        assert decode_labeled(catalog, encode(labeled, other_model), Opener(KEY)).reason == "sealed_labeled"
        no_key = decode_labeled(catalog, encode(labeled, joined))
        assert no_key.reason == "sealed_labeled" and "DRIFTLINE_PII_KEY" in no_key.detail  # type: ignore[union-attr]
        moved = {**joined, "request_id": "another request"}  # a sealed row moved onto another record
        assert decode_labeled(catalog, encode(labeled, moved), Opener(KEY)).reason == "sealed_labeled"
    # a model whose features are not personal (only the card is) sends rows in clear
    card_only = scoring(catalog, model_listing(tmp_path / "c", ["card_id"])).process(msgs, 1_767_225_700_000)
    assert all(decode(catalog, s.value)[1]["sealed"] is False for s in card_only.scored)


def test_a_personal_entity_key_reaches_predictions_as_its_pseudonym(
    tmp_path: Path, generator, rng  # type: ignore[no-untyped-def]
) -> None:
    catalog = SchemaCatalog.from_dirs([builtin_schema_dir()])
    msgs, records = requests(catalog, generator, rng, 20)
    out = scoring(catalog, model_listing(tmp_path / "a", ["card_id"])).process(msgs, 1_767_225_700_000)
    keys = [decode(catalog, p.value)[1]["entity_key"] for p in out.predictions]
    assert keys == [pseudonym(KEY, r["card_id"]) for r in records]
    assert not any(SECRET_CARD.encode() in p.value for p in out.predictions + out.scored)
    plain = scoring(catalog, model_listing(tmp_path / "b", [])).process(msgs, 1_767_225_700_000)
    assert [decode(catalog, p.value)[1]["entity_key"] for p in plain.predictions] == [r["card_id"] for r in records]


def test_outputs_that_would_carry_personal_values_need_the_key_at_start(tmp_path: Path) -> None:
    catalog = SchemaCatalog.from_dirs([builtin_schema_dir()])
    card = {"ns.requests": ServedModel(model_listing(tmp_path / "a", ["card_id"]), catalog, max_message_bytes=1 << 16)}
    amount = {"ns.requests": ServedModel(model_listing(tmp_path / "b", ["amount"]), catalog, max_message_bytes=1 << 16)}
    keep = {"deadletter_pii": "keep"}
    with pytest.raises(ConfigError, match="entity key card_id is personal"):
        pii_key_for(load_settings(**keep), card)
    with pytest.raises(ConfigError, match=r"reads personal fields \(amount\) and feedback"):
        pii_key_for(load_settings(feedback=True, **keep), amount)
    assert pii_key_for(load_settings(**keep), amount) is None  # no feedback: its rows go nowhere
    assert pii_key_for(load_settings(pii_key="k" * 20), card) == b"k" * 20
    with pytest.raises(ValueError, match="pass the PII key"):
        scoring(catalog, card["ns.requests"].model, key=None)


def test_profiles_know_their_personal_features(marked: SchemaCatalog, tmp_path: Path) -> None:
    from driftline.inference.registry import ModelRegistry
    from driftline.streams.core.profiling import ProfileStore

    model_listing(tmp_path, ["channel"])  # writes the registry under tmp_path/models
    store = ProfileStore(ModelRegistry(tmp_path / "models"), marked)
    profile = store.get("fraud", "1")
    assert profile is not None and profile.personal == {"channel", "card_id"}  # the manifest's, the schema's mark
    plain = SchemaCatalog.from_dirs([builtin_schema_dir()])
    assert ProfileStore(ModelRegistry(EXAMPLE_MODELS), plain).get("fraud", "1").personal == frozenset()  # type: ignore[union-attr]
    # fails closed: a catalog without the request schema hides every feature; a manifest that does not read, all
    (tmp_path / "no-schemas").mkdir()
    empty = SchemaCatalog.from_dirs([tmp_path / "no-schemas"])
    hidden = ProfileStore(ModelRegistry(tmp_path / "models"), empty).get("fraud", "1")
    assert hidden is not None and hidden.personal == {f.name for f in hidden.features}
    (tmp_path / "models" / "fraud" / "1" / "manifest.json").write_text("{not json")
    assert ProfileStore(ModelRegistry(tmp_path / "models"), marked).get("fraud", "1") is None


def test_window_sketches_carry_no_sum_of_a_personal_feature(tmp_path: Path, generator, rng) -> None:  # type: ignore[no-untyped-def]
    """A window of one request would carry its value in the column's sum: personal features keep bins only."""
    from driftline.streams.app.score import build_folder

    catalog = SchemaCatalog.from_dirs([builtin_schema_dir()])
    model = model_listing(tmp_path, ["amount"])
    folder = build_folder(load_settings(window_events=10), model, "w1")
    served = {"ns.requests": ServedModel(model, catalog, max_message_bytes=1 << 16, folder=folder)}
    pipe = ScorePipeline(served, catalog.latest("driftline.Prediction"), predictions_topic="ns.predictions",
                         deadletter_topic="ns.deadletter", deadletter_max_bytes=1 << 20)
    msgs, records = requests(catalog, generator, rng, 10)
    (sketch,) = pipe.process(msgs, 1_767_225_700_000).sketches
    amount, risk = sketch.to_dict()["columns"]["amount"], sketch.to_dict()["columns"]["merchant_risk"]
    assert amount["n"] == 10 and amount["sum"] == 0.0 and amount["sum_sq"] == 0.0
    assert risk["sum"] == pytest.approx(sum(r["merchant_risk"] for r in records))  # not personal: as before
    assert not any(repr(r["amount"]) in json.dumps(sketch.to_dict()) for r in records)


def test_a_version_that_marks_other_fields_cannot_be_deployed_beside_the_served_one(tmp_path: Path) -> None:
    """The worker protects what it started with: a version listing other personal fields waits for a restart."""
    from driftline.inference.manifest import input_mismatch

    v1 = model_listing(tmp_path / "a", []).manifest
    v2 = model_listing(tmp_path / "b", ["card_id", "amount"]).manifest
    assert "other personal fields" in (input_mismatch(v1, v2) or "")
    assert input_mismatch(v2, v2) is None


def test_the_request_id_cannot_be_personal(tmp_path: Path, marked: SchemaCatalog) -> None:
    with pytest.raises(ModelError, match="request id 'request_id' cannot be personal"):
        ServedModel(model_listing(tmp_path / "a", ["request_id"]), marked, max_message_bytes=1 << 16)
    raw = json.loads((builtin_schema_dir() / "card_transaction.v2.avsc").read_text())
    raw["fields"][0]["driftline.pii"] = True  # request_id, marked in the schema
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "card_transaction.v3.avsc").write_text(json.dumps(raw))
    with pytest.raises(ModelError, match="cannot be personal"):
        ServedModel(model_listing(tmp_path / "b", []), SchemaCatalog.from_dirs([builtin_schema_dir(), tmp_path / "s"]),
                    max_message_bytes=1 << 16)
