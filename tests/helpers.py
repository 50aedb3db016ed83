"""Shared test helpers: example data, a second model, a worker process, output collection."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from driftline.inference.registry import write_version
from driftline.streams.kafka.broker import free_port
from driftline.streams.settings import EXAMPLE_MODELS, REPO_ROOT

HOUSING_SCHEMAS = Path(__file__).parent / "fixtures" / "housing"
HOUSING_SUBJECT = "driftline.tests.HouseSale"


def housing_records(n: int, rng: np.random.Generator) -> tuple[list[dict[str, Any]], np.ndarray]:
    rooms = rng.integers(1, 8, n)
    area = rng.uniform(20, 250, n)
    age = rng.uniform(0, 100, n)
    price = 50_000 + 3_000 * area + 10_000 * rooms - 800 * age + rng.normal(0, 5_000, n)
    records = [
        {"sale_id": f"sale-{i}-{rng.integers(1 << 40)}", "listed_at": 1_767_225_600_000 + i,
         "house_id": f"house-{i % 97}", "rooms": int(rooms[i]), "area_m2": float(area[i]),
         "age_years": None if i % 11 == 0 else float(age[i])}
        for i in range(n)
    ]
    return records, price


def train_housing(model_dir: Path) -> Path:
    """Register a linear regressor on three features as ``housing`` v1 (scikit-learn → ONNX)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(3)
    records, price = housing_records(2000, rng)
    x = np.array([[r["rooms"], r["area_m2"], r["age_years"] if r["age_years"] is not None else 40.0]
                  for r in records], dtype=np.float32)
    model = LinearRegression().fit(x, price)
    onx = to_onnx(model, initial_types=[("features", FloatTensorType([None, 3]))], target_opset=17)
    manifest = {
        "name": "housing", "version": "1", "task": "regression",
        "request": {"subject": HOUSING_SUBJECT, "id_field": "sale_id", "key_field": "house_id",
                    "time_field": "listed_at", "max_string_length": 64},
        "features": [
            {"name": "rooms", "kind": "numeric", "min": 0, "max": 50},
            {"name": "area_m2", "kind": "numeric", "min": 1, "max": 10_000},
            {"name": "age_years", "kind": "numeric", "min": 0, "max": 500, "allow_missing": True,
             "impute": 40.0},
        ],
        "onnx": {"input": "features", "output": "variable"},
    }
    return write_version(model_dir, onx.SerializeToString(), manifest)


def model_dir_with_both(target: Path) -> Path:
    shutil.copytree(EXAMPLE_MODELS / "fraud", target / "fraud")
    train_housing(target)
    return target


class WorkerProcess:
    """``driftline worker`` as a child process with its own namespace, killable at will."""

    def __init__(self, bootstrap: str, namespace: str, data_dir: Path, *, args: tuple[str, ...] = (),
                 options: tuple[str, ...] = (), port: int | None = None, **settings: Any) -> None:
        """``args``: the worker command's; ``options``: driftline's own, before it (``--log-level debug``)."""
        self.args, self.options = args, options
        self.port = port or free_port()
        self.log_path = data_dir / f"worker-{namespace}-{time.monotonic_ns()}.log"
        self.env = {
            **os.environ,
            "DRIFTLINE_BROKER": bootstrap,
            "DRIFTLINE_NAMESPACE": namespace,
            "DRIFTLINE_WEB_PORT": str(self.port),
            "DRIFTLINE_DATA_DIR": str(data_dir / namespace),
            "DRIFTLINE_SESSION_TIMEOUT_S": "6",
            "PYTHONUNBUFFERED": "1",
        }
        for key, value in settings.items():
            self.env[f"DRIFTLINE_{key.upper()}"] = value if isinstance(value, str) else json.dumps(value)
        self.token: str | None = settings.get("web_token")  # sent to the pages that need it
        self.scheme = "https" if "web_tls_cert_file" in settings else "http"
        self.ssl_context: ssl.SSLContext | None = None  # trusting the test CA, for https
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "driftline.streams.cli", *self.options, "worker", *self.args], env=self.env,
            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthz(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as r:  # noqa: S310
            return json.loads(r.read())

    def readyz(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) of /readyz; 503 is an answer, not an error."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=5) as r:  # noqa: S310
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def wait_log(self, pattern: str, timeout_s: float = 60) -> re.Match[str]:
        """The first match of ``pattern`` in the worker's log, waiting for it (fails if the worker dies)."""
        deadline = time.monotonic() + timeout_s
        while (m := re.search(pattern, self.log(), re.M)) is None:
            assert self.alive(), self.log()[-3000:]
            assert time.monotonic() < deadline, f"no {pattern!r} within {timeout_s}s in: {self.log()[-3000:]}"
            time.sleep(0.1)
        return m

    def metrics(self) -> str:
        return self.page("/metrics").decode()

    def page(self, path: str) -> bytes:
        """A page that needs the web token (sent when the worker has one)."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        request = urllib.request.Request(f"{self.scheme}://127.0.0.1:{self.port}{path}",  # noqa: S310 - loopback
                                         headers=headers)
        with urllib.request.urlopen(request, timeout=5, context=self.ssl_context) as r:  # noqa: S310 - loopback
            return r.read()

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def score_end_to_end(worker: WorkerProcess, settings: Any, catalog: Any, generator: Any, rng: np.random.Generator,
                     n: int, timeout_s: float = 90.0) -> None:
    """Both client stacks of a running worker work: ``n`` requests scored, and a drift window closed.

    The test's own clients use ``settings`` (its broker and security). The
    worker must run with ``window_events`` at most ``n`` and no grace, so its
    score path (librdkafka) writes ``n`` predictions and window sketches, and
    its drift agent (Faust/aiokafka) consumes those sketches and writes a
    window's state to ``{ns}.drift-state``.
    """
    from driftline.schemas.codec import encode_many
    from driftline.streams.kafka.topics import latest_by_key

    conf = settings.confluent()
    records, _ = generator.generate(n, rng, start_ms=int(time.time() * 1000), step_ms=0)
    records = [{**r, "ip_risk": r["ip_risk"] or 0.1} for r in records]  # a null ip_risk is a dead letter
    producer = Producer({**conf, "linger.ms": 5})
    for r, v in zip(records, encode_many(catalog.latest("driftline.examples.CardTransaction"), records), strict=True):
        producer.produce(settings.topic("requests"), v, r["card_id"].encode())
    assert producer.flush(30) == 0
    consumer = Consumer({**conf, "group.id": "e2e-check", "enable.auto.commit": False})
    topic = settings.topic("predictions")
    consumer.assign([TopicPartition(topic, p, 0) for p in range(settings.partitions.predictions)])
    got, deadline = 0, time.monotonic() + timeout_s
    try:
        while got < n:
            assert worker.alive(), worker.log()[-3000:]
            assert time.monotonic() < deadline, f"{got} of {n} predictions within {timeout_s}s: {worker.log()[-3000:]}"
            got += sum(1 for m in consumer.consume(1000, timeout=0.5) if m.error() is None)
    finally:
        consumer.close()

    def windows_closed() -> int:
        state = latest_by_key(conf, settings.topic("drift-state")).get(b"fraud")
        return 0 if state is None else int(json.loads(state)["policy"]["window_index"])

    deadline = time.monotonic() + timeout_s
    while windows_closed() < 1:
        assert worker.alive(), worker.log()[-3000:]
        assert time.monotonic() < deadline, f"no drift window closed within {timeout_s}s: {worker.log()[-3000:]}"
        time.sleep(0.5)


def produce(bootstrap: str, topic: str, items: Iterable[tuple[bytes | None, bytes | None]],
            headers: list[tuple[str, bytes]] | None = None, partitioner: str = "consistent_random") -> int:
    """Produce every item; fails unless the broker acknowledged them all (a refusal is not silent)."""
    refused = produce_refusals(bootstrap, topic, items, headers=headers, partitioner=partitioner)
    assert not refused[1], f"the broker refused {len(refused[1])} of {refused[0]} records on {topic}: {refused[1][0]}"
    return refused[0]


def produce_refusals(bootstrap: str, topic: str, items: Iterable[tuple[bytes | None, bytes | None]],
                     headers: list[tuple[str, bytes]] | None = None, partitioner: str = "consistent_random",
                     **config: Any) -> tuple[int, list[KafkaError]]:
    """(records produced, the errors of those the broker refused): for records one broker takes and another not."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "partitioner": partitioner, **config})
    errors: list[KafkaError] = []

    def delivered(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            errors.append(err)

    n = 0
    for key, value in items:
        while True:
            try:
                p.produce(topic, value, key, headers=headers, on_delivery=delivered)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                p.poll(0.1)
        n += 1
    assert p.flush(30) == 0
    return n, errors


def send_labels(producer: Producer, topic: str, schema: Any, request_ids: Iterable[str],
                labels: Iterable[bool]) -> None:
    """Queue one ``driftline.Feedback`` label per request (``fraud`` for true), keyed by request id, stamped now."""
    from driftline.schemas.codec import encode

    now = int(time.time() * 1000)
    for rid, y in zip(request_ids, labels, strict=True):
        rec = {"request_id": rid, "label": "fraud" if y else "legit", "target": None, "event_time": now}
        producer.produce(topic, encode(schema, rec), rid.encode())


def valid_requests(catalog: Any, generator: Any, n: int, seed: int) -> tuple[list[str], list[tuple[bytes, bytes]]]:
    """``n`` valid card transactions: their request ids, and (key, Avro value) pairs to produce."""
    from driftline.schemas.codec import encode_many

    records, _ = generator.generate(n, np.random.default_rng(seed), step_ms=0)
    records = [{**r, "ip_risk": r["ip_risk"] or 0.1} for r in records]  # a null ip_risk is a dead letter
    values = encode_many(catalog.latest("driftline.examples.CardTransaction"), records)
    return [r["request_id"] for r in records], [(r["card_id"].encode(), v) for r, v in zip(records, values,
                                                                                            strict=True)]


@dataclass
class StoredMessage:
    """What driftline's readers use of a confluent_kafka ``Message``, for tests of readers without a broker."""

    topic_: str
    value_: bytes | None
    offset_: int
    partition_: int = 0
    key_: bytes | None = b"fraud"
    headers_: Any = None

    def topic(self) -> str:
        return self.topic_

    def value(self) -> bytes | None:
        return self.value_

    def offset(self) -> int:
        return self.offset_

    def partition(self) -> int:
        return self.partition_

    def key(self) -> bytes | None:
        return self.key_

    def headers(self) -> Any:
        return self.headers_

    def error(self) -> None:
        return None


class Collector:
    """Reads topics from the beginning and keeps every record, until a condition holds."""

    def __init__(self, bootstrap: str, partitions: dict[str, int]) -> None:
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-collector",
                                  "enable.auto.commit": False, "fetch.wait.max.ms": 10})
        self.consumer.assign([TopicPartition(t, p, 0) for t, n in partitions.items() for p in range(n)])
        self.records: dict[str, list[Any]] = {t: [] for t in partitions}

    def until(self, done: Callable[[dict[str, list[Any]]], bool], timeout_s: float,
              check: Callable[[], None] | None = None) -> dict[str, list[Any]]:
        deadline = time.monotonic() + timeout_s
        while not done(self.records):
            if time.monotonic() > deadline:
                counts = {t: len(v) for t, v in self.records.items()}
                raise AssertionError(f"condition not met within {timeout_s}s; have {counts}")
            if check is not None:
                check()
            for m in self.consumer.consume(10_000, timeout=0.2):
                if m.error() is None:
                    self.records[m.topic()].append(m)
        return self.records

    def close(self) -> None:
        self.consumer.close()


def bad_corpus(catalog: Any, good: dict[str, Any], max_message_bytes: int) -> list[tuple[str, bytes, str, str]]:
    """The issue's bad-input corpus: (name, value, expected stage, expected reason)."""
    from driftline.schemas.codec import encode

    card = catalog.latest("driftline.examples.CardTransaction")
    valid = encode(card, good)
    retrain = catalog.latest("driftline.RetrainRequest")

    def variant(i: int, **change: Any) -> bytes:
        return encode(card, {**good, "request_id": f"{good['request_id']}-bad{i}", **change})

    rng = np.random.default_rng(99)
    return [
        ("empty value", b"", "decode", "empty"),
        ("random bytes", rng.bytes(64), "decode", "bad_magic"),
        ("wrong magic byte", b"\x07" + valid[1:], "decode", "bad_magic"),
        ("unknown schema id", b"\x00" + (123456).to_bytes(4, "big") + valid[5:], "decode", "unknown_schema"),
        ("truncated body", valid[:-6], "decode", "malformed_avro"),
        ("record of another schema", encode(retrain, {
            "id": "r", "model": "fraud", "model_version": "1", "reason": "x",
            "data_start": 0, "data_end": 0, "requested_at": 0}), "decode", "incompatible_schema"),
        ("NaN", variant(1, amount=float("nan")), "validate", "not_a_number"),
        ("+inf", variant(2, velocity_score=float("inf")), "validate", "non_finite"),
        ("out-of-range value", variant(3, merchant_risk=7.0), "validate", "out_of_range"),
        ("unknown category", variant(4, merchant_category="crypto_exchange"), "validate", "unknown_category"),
        ("null in a non-null field", variant(5, ip_risk=None), "validate", "null_value"),
        ("oversize string", variant(6, card_id="x" * 1000), "validate", "string_too_long"),
        ("over max message size", variant(7, country="y" * (max_message_bytes + 10)), "decode", "too_large"),
    ]
