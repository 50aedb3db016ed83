from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from driftline.inference.model import OnnxModel
from driftline.schemas.catalog import SchemaCatalog, builtin_schema_dir
from driftline.streams.example import fraud_generator
from driftline.streams.kafka.broker import Broker, BrokerKind, launch
from driftline.streams.settings import EXAMPLE_MODELS
from tests.helpers import HOUSING_SCHEMAS, train_housing


@pytest.fixture(scope="session")
def catalog() -> SchemaCatalog:
    return SchemaCatalog.from_dirs([builtin_schema_dir(), HOUSING_SCHEMAS])


@pytest.fixture(scope="session")
def generator():  # type: ignore[no-untyped-def]
    return fraud_generator()


@pytest.fixture(scope="session")
def fraud_model() -> OnnxModel:
    model = OnnxModel(EXAMPLE_MODELS / "fraud" / "1", providers="cpu")
    model.load()
    return model


@pytest.fixture(scope="session")
def housing_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_housing(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def housing_model(housing_dir: Path) -> OnnxModel:
    model = OnnxModel(housing_dir, providers="cpu")
    model.load()
    return model


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# Every test that uses `broker` runs on both: the embedded Tansu (what `make demo` uses) and a local Apache
# Kafka (what production runs; its jars are fetched with Maven on first use, see `make kafka`).
BROKERS: dict[str, BrokerKind] = {"tansu": "embedded", "kafka": "kafka"}


@pytest.fixture(scope="session", params=list(BROKERS))
def broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One broker of each kind for the whole session (ids ``tansu`` and ``kafka``); tests isolate by namespace."""
    name: str = request.param
    b = launch(BROKERS[name], log_file=tmp_path_factory.mktemp(f"broker-{name}") / "broker.log")
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}"
