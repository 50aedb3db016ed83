"""Explanations end to end on the embedded broker: the picked requests are explained, `driftline explain` shows one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from driftline.detectors.explain import picked
from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import decode
from driftline.streams.kafka.broker import Broker
from driftline.streams.kafka.topics import create_topics
from driftline.streams.settings import REPO_ROOT, load_settings
from tests.helpers import Collector, WorkerProcess, produce, valid_requests

pytestmark = pytest.mark.kafka
FRACTION = 0.25
N = 200


def explain_cli(bootstrap: str, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DRIFTLINE_BROKER": bootstrap, "DRIFTLINE_NAMESPACE": namespace}
    return subprocess.run([sys.executable, "-m", "driftline.streams.cli", "explain", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_the_picked_requests_are_explained_and_shown(
    broker: Broker, namespace: str, tmp_path: Path, catalog: SchemaCatalog, generator  # type: ignore[no-untyped-def]
) -> None:
    if broker.kind != "embedded":
        pytest.skip("one broker is enough: the explain agent uses nothing the embedded broker lacks")
    settings = load_settings(broker=broker.bootstrap, namespace=namespace)
    create_topics(settings.confluent(), settings.topic_partitions())
    worker = WorkerProcess(broker.bootstrap, namespace, tmp_path, explain_fraction=str(FRACTION),
                           explain_samples="64", drift="false").start()
    topic = settings.topic("explanations")
    collector = Collector(broker.bootstrap, {topic: settings.partitions.explanations})
    try:
        ids, items = valid_requests(catalog, generator, N, seed=3)
        want = {i for i, k in zip(ids, picked(ids, FRACTION).tolist(), strict=True) if k}
        assert 30 < len(want) < 70
        produce(broker.bootstrap, settings.topic("requests"), items)

        def alive() -> None:
            assert worker.alive(), worker.log()[-3000:]

        got = collector.until(lambda r: len({m.key() for m in r[topic]}) >= len(want), timeout_s=60, check=alive)
        recs = [decode(catalog, m.value())[1] for m in got[topic]]
        assert {r["request_id"] for r in recs} == want  # exactly the deterministic pick
        for r in recs:
            assert np.isclose(sum(r["attributions"]), r["value"] - r["base"], atol=1e-9)  # efficiency
            assert np.isclose(r["value"], np.log(r["score"] / (1 - r["score"])), atol=1e-3)  # the prediction's row
            assert r["method"] == "kernel_shap" and r["samples"] == 64 and r["link"] == "logit"
        metrics = worker.metrics()
        assert f'driftline_explanations_total{{model="fraud"}} {float(len(recs))}' in metrics

        shown = explain_cli(broker.bootstrap, namespace, recs[0]["request_id"])
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert lines[0].startswith(f"request {recs[0]['request_id']}: fraud v1 (champion)")
        table = [ln.split() for ln in lines[3:]]
        assert [t[0] for t in table] == sorted(recs[0]["features"], key=lambda f: -abs(
            recs[0]["attributions"][recs[0]["features"].index(f)]))  # every feature, largest first
        assert all(len(t) == 3 for t in table), shown.stdout  # name, value (no personal field here), attribution
        # the report: importance of the requests' window beside the reference rows' own (the example's requests
        # carry event times of January 2026, hence the long period)
        env = {**os.environ, "DRIFTLINE_BROKER": broker.bootstrap, "DRIFTLINE_NAMESPACE": namespace}
        report = subprocess.run([sys.executable, "-m", "driftline.streams.cli", "report", "--model", "fraud",
                                 "--window", "800d", "--out-dir", str(tmp_path)], cwd=REPO_ROOT, env=env,
                                capture_output=True, text=True, timeout=120, check=False)
        assert report.returncode == 0, report.stderr
        page = (tmp_path / "driftline-report-fraud.html").read_text()
        section = page.split("What the model leans on")[1]
        assert "reference rows" in section and f"<td class=n>{len(recs)}</td>" in section
        missing = next(i for i in ids if i not in want)
        gone = explain_cli(broker.bootstrap, namespace, missing)
        assert gone.returncode == 1 and f"request {missing} has no explanation" in gone.stderr
    finally:
        collector.close()
        worker.stop()
