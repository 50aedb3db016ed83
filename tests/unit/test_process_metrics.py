"""/metrics carries the process and interpreter series (RSS, CPU, open files, GC) besides driftline's own."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from driftline.streams.metrics import Metrics, ThreadCpuCollector, thread_group


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


def test_thread_names_lose_their_trailing_numbers_only() -> None:
    assert thread_group("rdk:broker111") == "rdk:broker"
    assert thread_group("asyncio_3") == "asyncio"
    assert thread_group("ThreadPoolExecutor-0_12") == "ThreadPoolExecutor"
    assert thread_group("driftline-consume_0") == "driftline-consume"
    assert thread_group("rdk:main") == "rdk:main"
    assert thread_group("MainThread") == "MainThread"
    assert thread_group("Thread-12 (serve)") == "Thread (serve)"
    assert thread_group("42") == "42"  # nothing left: the name as it is


def test_thread_cpu_is_counted_per_named_thread() -> None:
    """A thread that burns 0.3 s of CPU shows that much (less two clock ticks) under its name."""
    burned: list[float] = []

    def burn() -> None:
        started = time.thread_time()
        while time.thread_time() - started < 0.3:
            sum(range(1000))
        burned.append(time.thread_time())
        done.wait(30)  # alive while it is read: ended threads are not counted

    done = threading.Event()
    worker = threading.Thread(target=burn, name="burner_7")
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while not burned:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        text = generate_latest(Metrics(CollectorRegistry()).registry).decode()
    finally:
        done.set()
        worker.join()
    cpu = {s.labels["thread"]: s.value for f in text_string_to_metric_families(text)
           if f.name == "driftline_thread_cpu_seconds" for s in f.samples}
    tick = 1 / os.sysconf("SC_CLK_TCK")
    assert burned[0] - 2 * tick <= cpu["burner"] <= burned[0] + 0.1  # user and system time, each in whole ticks
    assert cpu["MainThread"] > 0
    assert "burner_7" not in cpu


def test_a_group_keeps_the_cpu_of_its_ended_threads() -> None:
    """A counter never goes down: when one of a pool's threads ends, its CPU stays in the pool's series."""
    collector = ThreadCpuCollector()
    stop = threading.Event()

    def burn(seconds: float) -> None:
        started = time.thread_time()
        while time.thread_time() - started < seconds:
            sum(range(1000))
        stop.wait(30)

    first = threading.Thread(target=burn, args=(0.2,), name="pool_1")
    second = threading.Thread(target=lambda: burn(0.2), name="pool_2")
    first.start()
    second.start()
    deadline = time.monotonic() + 30
    while collector.totals().get("pool", 0.0) < 0.38:  # both burned (each within two ticks)
        assert time.monotonic() < deadline
        time.sleep(0.02)
    both = collector.totals()["pool"]
    stop.set()
    first.join()
    second.join()
    assert collector.totals()["pool"] >= both  # ended, yet counted
