"""/metrics carries the process and interpreter series (RSS, CPU, open files, GC) besides driftline's own."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from driftline.streams.metrics import Metrics


def test_the_worker_registry_exposes_process_and_python_series() -> None:
    text = generate_latest(Metrics(CollectorRegistry()).registry).decode()  # what /metrics serves
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}
    status = Path(f"/proc/{os.getpid()}/status").read_text()
    rss_kib = int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])
    assert abs(samples["process_resident_memory_bytes"] - rss_kib * 1024) < 0.5 * rss_kib * 1024  # this process
    assert samples["process_cpu_seconds_total"] > 0
    assert 3 <= samples["process_open_fds"] <= samples["process_max_fds"]
    families = {f.name for f in text_string_to_metric_families(text)}
    assert {"python_info", "python_gc_collections", "driftline_requests"} <= families
