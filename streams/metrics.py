"""Prometheus metrics of a worker, all declared here, on a registry passed in."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from driftline.detectors.evaluate import BIAS
from driftline.detectors.fairness import SegmentCounts, disparities, group_rates
from driftline.inference.deployment import SHADOW
from driftline.streams.core.drift import ClosedWindow, column_label
from driftline.streams.core.explain import ExplainStats
from driftline.streams.core.pipeline import BatchOutcome

#: the kinds of alert a worker raises (drift agent, label loop, control follower)
ALERT_KINDS = ("data_drift", "prediction_drift", "multivariate_drift", "data_quality", "performance_drop",
               "concept_drift", "model_load_failed", "bad_control_record", "bias")


#: the stages of a batch on the score loop's thread (driftline_score_cpu_seconds_total)
SCORE_STAGES = ("process", "send", "observe")
_THREAD_NUMBER = re.compile(r"(?:[-_:]?\d+)+")


def thread_group(name: str) -> str:
    """A thread's name without its numbers: a pool's threads (``asyncio_0``, ``asyncio_1``), librdkafka's
    broker threads (``rdk:broker111``) and ``Thread-12 (run)`` count together, and the label stays bounded."""
    return _THREAD_NUMBER.sub("", name) or name


def read_thread_cpu(tasks: Path = Path("/proc/self/task")) -> dict[int, tuple[str, float]]:
    """(group, CPU seconds so far) of this process's live threads by thread id; {} without ``/proc``.

    Python threads are named by their ``threading`` name, the others by the
    kernel's: librdkafka names its own (``rdk:*``); threads that do not
    (ONNX Runtime's, numpy's) carry the process's name and count as ``native``.
    """
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[str, float]] = {}
    try:
        process = (tasks.parent / "comm").read_text().strip()
        tasks_now = list(tasks.iterdir())
    except OSError:
        return out
    for task in tasks_now:
        try:
            tid = int(task.name)
            name = names.get(tid) or (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
        group = "native" if tid not in names and name == process else thread_group(name)
        out[tid] = (group, (int(fields[11]) + int(fields[12])) / tick)
    return out


class ThreadCpuCollector(Collector):
    """``driftline_thread_cpu_seconds_total{thread}``: where the worker's CPU goes, without a profiler.

    The score loop (``MainThread``), the consumer (``driftline-consume``),
    the delivery reports (``driftline-deliveries``), librdkafka's network
    threads (``rdk:broker``, ``rdk:main``), the executors (``asyncio``),
    native threads (``native``): read from ``/proc`` at scrape time, so it
    costs nothing between scrapes. A thread that ended keeps, in its group,
    the CPU it had at the last scrape, so each series only grows, as a
    counter must; a thread that starts and ends between two scrapes is not counted.
    """

    def __init__(self, tasks: Path = Path("/proc/self/task")) -> None:
        self._tasks = tasks
        self._lock = threading.Lock()
        self._last: dict[int, tuple[str, float]] = {}  # each thread's group and CPU at the last scrape
        self._retired: dict[str, float] = {}  # CPU of the threads that ended, by group

    def totals(self) -> dict[str, float]:
        """CPU seconds so far by group, ended threads included."""
        with self._lock:
            now = read_thread_cpu(self._tasks)
            for tid, (group, seconds) in now.items():
                before = self._last.get(tid)
                if group == "native" and before is not None and before[0] != "native" and seconds >= before[1]:
                    now[tid] = (before[0], seconds)  # a Python thread just ended, still in /proc: not native
            for tid, (group, seconds) in self._last.items():
                current = now.get(tid)
                if current is None or current[0] != group or current[1] < seconds:  # ended (its id maybe reused)
                    self._retired[group] = self._retired.get(group, 0.0) + seconds
            self._last = now
            out = dict(self._retired)
            for group, seconds in now.values():
                out[group] = out.get(group, 0.0) + seconds
            return out

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("driftline_thread_cpu_seconds", "CPU seconds of the worker's threads so far, "
                                     "by thread name without its numbers (Linux).", labels=["thread"])
        for name, seconds in sorted(self.totals().items()):
            family.add_metric([name], seconds)
        yield family


def build_versions() -> dict[str, str]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist, key in (("driftline", "version"), ("onnxruntime", "onnxruntime"), ("onnxruntime-gpu", "onnxruntime"),
                      ("faust-streaming", "faust"), ("confluent-kafka", "confluent_kafka"), ("river", "river")):
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            out.setdefault(key, "none")
    return out

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_LAG_BUCKETS = (0.1, 1, 10, 60, 300, 900, 3600, 6 * 3600, 86_400, 7 * 86_400)
_SCORE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
_INFER_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


def observe_many(hist: Histogram, values: np.ndarray, buckets: tuple[float, ...]) -> None:
    """Add a whole array to a histogram with one numpy pass instead of one call per value.

    prometheus_client has no batch observe; its per-call lock costs more than
    the rest of a prediction's bookkeeping, so the bucket counts are added
    directly (same result as calling ``observe`` for each value).
    """
    if len(values) == 0:
        return
    counts = np.bincount(np.searchsorted(np.asarray(buckets), values, side="left"),
                         minlength=len(buckets) + 1)
    parts = getattr(hist, "_buckets", None)
    if parts is None or len(parts) != len(counts):
        for v in values.tolist():
            hist.observe(v)
        return
    for bucket, n in zip(parts, counts.tolist(), strict=True):
        if n:
            bucket.inc(n)
    hist._sum.inc(float(values.sum()))  # type: ignore[attr-defined]


def _remove(gauge: Gauge, *labels: str) -> None:
    try:
        gauge.remove(*labels)
    except KeyError:  # never set (a value seen without labeled rows)
        pass


class Metrics:
    """The worker's metrics; agents call :meth:`observe_batch` and nothing else."""

    def __init__(self, registry: CollectorRegistry, segment_values: int = 10) -> None:
        """``segment_values``: segment values exported per field (``bias_max_values``), the rest as (other)."""
        self.registry = registry
        self.requests = Counter(
            "driftline_requests_total", "Requests by model and outcome (predicted, dead_letter).",
            ["model", "outcome"], registry=registry,
        )
        self.dead_letters = Counter(
            "driftline_dead_letters_total", "Dead-lettered messages by stage and reason.",
            ["model", "stage", "reason"], registry=registry,
        )
        self.batch_size = Histogram(
            "driftline_batch_size", "Messages per consumed batch.",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000), registry=registry,
        )
        self.inference = Histogram(
            "driftline_inference_duration_seconds", "One ONNX call for a batch.",
            ["model", "version", "variant", "provider"], buckets=_INFER_BUCKETS, registry=registry,
        )
        self.latency = Histogram(
            "driftline_end_to_end_latency_seconds",
            "Request produced (its Kafka record timestamp) to prediction produced.",
            ["model"], buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.event_lag = Histogram(
            "driftline_event_time_lag_seconds",
            "The request's event_time to its prediction: how old the events are when scored (a producer "
            "replaying history shows here, not as latency).",
            ["model"], buckets=_LAG_BUCKETS, registry=registry,
        )
        self.last_processed = Gauge(
            "driftline_last_processed_timestamp_seconds", "When the worker last finished a batch.",
            registry=registry,
        )
        self.model_info = Info(
            "driftline_model", "A model version being served, its variant and ONNX Runtime provider.",
            ["model", "version", "variant"], registry=registry,
        )
        self.predictions = Counter(
            "driftline_predictions_total", "Predictions by model version and variant (shadow included).",
            ["model", "version", "variant"], registry=registry,
        )
        self.scores = Histogram(
            "driftline_score", "Model scores by version and variant, to compare variants.",
            ["model", "version", "variant"], buckets=_SCORE_BUCKETS, registry=registry,
        )
        self.deployment_changes = Counter(
            "driftline_deployment_changes_total", "Deployments applied (outcome=applied) or refused.",
            ["model", "outcome"], registry=registry,
        )
        self._live: dict[str, set[tuple[str, str]]] = {}
        self.consumer_lag = Gauge(
            "driftline_consumer_lag", "Records behind per assigned requests partition (fetched high watermark "
            "minus the next offset to finish).", ["topic", "partition"], registry=registry,
        )
        self.ready = Gauge("driftline_ready", "1 when /readyz answers ready, else 0.", registry=registry)
        self.drift_statistic = Gauge(
            "driftline_drift_statistic", "Each column's test statistic (chi2, null_rate, dead_letter_rate) "
            "and PSI in the last closed window.", ["model", "feature", "statistic"], registry=registry,
        )
        self.drift_threshold = Gauge(
            "driftline_drift_threshold", "The statistic's threshold at the window's sample size (false-alarm "
            "rate drift_alpha).", ["model", "feature", "statistic"], registry=registry,
        )
        self.drift_p_value = Gauge(
            "driftline_drift_p_value", "Each column's smallest p-value (over its tests) in the last closed window.",
            ["model", "feature"],
            registry=registry,
        )
        self.drift_windows = Counter(
            "driftline_drift_windows_total", "Drift windows evaluated.", ["model"], registry=registry,
        )
        self.alerts = Counter(
            "driftline_alerts_total", "Alerts raised by kind and severity.", ["model", "kind", "severity"],
            registry=registry,
        )
        self.retrains = Counter(
            "driftline_retrain_requests_total", "Retrain requests sent.", ["model"], registry=registry,
        )
        self.labels = Counter(
            "driftline_labels_total", "Labels by outcome: received, joined, duplicate, no_prediction.",
            ["model", "outcome"], registry=registry,
        )
        self.quality = Gauge(
            "driftline_quality", "Quality of the last closed window of labeled events (accuracy, precision, "
            "recall, f1, log_loss; mae, rmse).", ["model", "version", "variant", "metric"], registry=registry,
        )
        self.quality_estimate = Gauge(
            "driftline_quality_estimate", "Label-free estimate of the last window of predictions: accuracy, "
            "precision, recall, f1 (CBPE, classifiers); mae, rmse (DLE, regressors).",
            ["model", "version", "variant", "metric"], registry=registry,
        )
        self.quality_estimate_gap = Gauge(
            "driftline_quality_estimate_gap", "Estimated minus real accuracy (MAE for regressors), when a labeled "
            "window closes.",
            ["model", "version", "variant"], registry=registry,
        )
        self.skipped = Counter(
            "driftline_records_skipped_total", "Records on control, state, sketch, retrain and alert topics that "
            "did not parse or validate and were skipped.", ["topic", "reason"], registry=registry,
        )
        self.feedback_pending = Gauge(
            "driftline_feedback_pending", "Entries held by the label join: predictions and labels waiting, "
            "joined requests remembered for the TTL.", ["kind"], registry=registry,
        )
        self.feedback_pending_bytes = Gauge(
            "driftline_feedback_pending_bytes", "Estimated bytes held by the label join.", registry=registry,
        )
        # -- explanations (the explain agent) --
        self.explanations = Counter(
            "driftline_explanations_total", "Requests explained (attributions published on {ns}.explanations).",
            ["model"], registry=registry,
        )
        self.explanations_skipped = Counter(
            "driftline_explanations_skipped_total", "Requests picked for an explanation and not explained, by "
            "reason: malformed, no_model, no_background, sealed_no_key, seal_error, failed.",
            ["model", "reason"], registry=registry,
        )
        self.explain_calls = Counter(
            "driftline_explain_model_calls_total", "ONNX calls the explanations made.", registry=registry,
        )
        self.explain_cpu = Counter(
            "driftline_explain_cpu_seconds_total", "CPU time of the explain thread in the estimates (divide by "
            "driftline_explanations_total: the cost of an explained request).", registry=registry,
        )
        self.explain_importance = Gauge(
            "driftline_explain_importance", "Global importance: mean |attribution| per feature in the last closed "
            "window of explained requests (link units: log-odds for classifiers).", ["model", "version", "feature"],
            registry=registry,
        )
        self.explain_importance_shift = Gauge(
            "driftline_explain_importance_shift", "Total variation distance between the last window's importance "
            "shares and the reference rows' own: the share of the model's attention that moved (0 to 1).",
            ["model", "version"], registry=registry,
        )
        self.explain_rank_correlation = Gauge(
            "driftline_explain_importance_rank_correlation", "Spearman correlation of the last window's importance "
            "with the reference's (1: the same order of features).", ["model", "version"], registry=registry,
        )
        # bias audits (the manifest's segments): label values bounded by segment_values per field
        self.segment_values = segment_values
        self._segment_series: dict[tuple[str, str, str], set[str]] = {}
        self.segment_requests = Gauge(
            "driftline_segment_requests", "Requests per segment value in the last closed window (the most frequent "
            "values, the rest as (other)).", ["model", "segment", "value"], registry=registry,
        )
        self.segment_positive_rate = Gauge(
            "driftline_segment_positive_rate", "Share of positive decisions (score at or above the manifest's "
            "threshold) per segment value in the last closed window.", ["model", "segment", "value"],
            registry=registry,
        )
        self.segment_quality = Gauge(
            "driftline_segment_quality", "Per segment value, of the last closed window of labeled events: "
            "accuracy, true_positive_rate, false_positive_rate.", ["model", "segment", "value", "metric"],
            registry=registry,
        )
        self.bias_disparity = Gauge(
            "driftline_bias_disparity", "Disparity across a segment's values in the last closed window: "
            "demographic_parity_difference and _ratio (decisions); equal_opportunity_difference and "
            "equalized_odds_difference (labeled windows).", ["model", "segment", "statistic"], registry=registry,
        )
        self.bias_p_value = Gauge(
            "driftline_bias_p_value", "P-value of the test that a segment's values share one positive-decision "
            "rate (Fisher, Bonferroni over the values) in the last closed window.", ["model", "segment"],
            registry=registry,
        )
        self.build_info = Info("driftline_build", "Versions of driftline and its engines.", registry=registry)
        self.build_info.info(build_versions())
        # The process itself (process_resident_memory_bytes, process_cpu_seconds_total, process_open_fds, ...),
        # the interpreter (python_info) and its garbage collector (python_gc_*): the worker's registry is its own,
        # so prometheus_client's default registry, which carries these, is not what /metrics serves.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        registry.register(ThreadCpuCollector())
        self.score_cpu = Counter(
            "driftline_score_cpu_seconds", "CPU seconds of the score loop's thread by stage: process (decode, "
            "validate, score, encode, fold windows), send (hand the outputs to the producer), observe (these "
            "metrics).", ["stage"], registry=registry,
        )
        for stage in SCORE_STAGES:
            self.score_cpu.labels(stage)

    def init_model(self, model: str) -> None:
        """Export the model's alert and request counters at 0 from the start.

        A labelled counter otherwise appears at its first increment with the
        value 1, and Prometheus' ``increase()`` over a series that starts at 1
        is 0: the first model_load_failed or critical drift alert of a
        worker's life would never page (deploy/prometheus/rules.yml).
        """
        for kind in ALERT_KINDS:
            for severity in ("warning", "critical"):
                self.alerts.labels(model, kind, severity)
        for outcome in ("predicted", "dead_letter"):
            self.requests.labels(model, outcome)

    def observe_window(self, closed: ClosedWindow) -> None:
        """The statistics of one evaluated drift window, and the alerts it raised."""
        model = closed.sketch.model
        self.drift_windows.labels(model).inc()
        smallest: dict[str, float] = {}  # a column's tests (distribution, nulls, shares): the most significant
        for r in closed.results:
            if r.kind == BIAS:
                self.bias_p_value.labels(model, r.column).set(r.p_value)
                continue
            feature = column_label(r.column)
            self.drift_statistic.labels(model, feature, r.statistic).set(r.value)
            self.drift_threshold.labels(model, feature, r.statistic).set(r.threshold)
            smallest[feature] = min(r.p_value, smallest.get(feature, 1.0))
            if r.statistic in ("ks", "chi2"):
                self.drift_statistic.labels(model, feature, "psi").set(r.psi)
                self.drift_threshold.labels(model, feature, "psi").set(r.psi_threshold)
        for feature, p in smallest.items():
            self.drift_p_value.labels(model, feature).set(p)
        for a in closed.alerts:
            self.alerts.labels(model, a.result.kind, a.severity).inc()
        if closed.retrain is not None:
            self.retrains.labels(model).inc()
        for segment, counts in closed.sketch.segments.items():
            self.observe_segments(model, segment, counts, labeled=False)

    def observe_segments(self, model: str, segment: str, counts: SegmentCounts, *, labeled: bool) -> None:
        """One window's per-value figures of a segment: decision rates (``labeled``: accuracy, TPR, FPR) and
        disparities; a value no longer among the exported ones loses its series."""
        counts = counts.capped(self.segment_values)
        values: set[str] = set()
        d = disparities(counts)
        if labeled:
            for name in ("equal_opportunity_difference", "equalized_odds_difference"):
                self.bias_disparity.labels(model, segment, name).set(getattr(d, name))
        else:
            for name in ("demographic_parity_difference", "demographic_parity_ratio"):
                self.bias_disparity.labels(model, segment, name).set(getattr(d, name))
        for g in group_rates(counts):
            values.add(g.value)
            if labeled:
                if g.labeled:
                    for metric in ("accuracy", "true_positive_rate", "false_positive_rate"):
                        self.segment_quality.labels(model, segment, g.value, metric).set(getattr(g, metric))
            else:
                self.segment_requests.labels(model, segment, g.value).set(g.requests)
                self.segment_positive_rate.labels(model, segment, g.value).set(g.positive_rate)
        key = (model, segment, "labeled" if labeled else "decisions")
        for gone in self._segment_series.get(key, set()) - values:
            if labeled:
                for metric in ("accuracy", "true_positive_rate", "false_positive_rate"):
                    _remove(self.segment_quality, model, segment, gone, metric)
            else:
                _remove(self.segment_requests, model, segment, gone)
                _remove(self.segment_positive_rate, model, segment, gone)
        self._segment_series[key] = values

    def observe_explain(self, stats: ExplainStats) -> None:
        """What a batch of the explain agent did: explained and skipped requests, and what it cost."""
        for model, n in stats.explained.items():
            self.explanations.labels(model).inc(n)
        for (model, reason), n in stats.skipped.items():
            self.explanations_skipped.labels(model, reason).inc(n)
        self.explain_calls.inc(stats.calls)
        self.explain_cpu.inc(stats.cpu_s)
        for w in stats.closed:
            for feature, value in zip(w.features, w.mean_abs, strict=True):
                self.explain_importance.labels(w.model, w.version, feature).set(value)
            if w.shift is not None and w.rank_correlation is not None:
                self.explain_importance_shift.labels(w.model, w.version).set(w.shift)
                self.explain_rank_correlation.labels(w.model, w.version).set(w.rank_correlation)

    def observe_lag(self, lag: dict[tuple[str, int], int]) -> None:
        self.consumer_lag.clear()  # partitions move between workers
        for (topic, partition), n in lag.items():
            self.consumer_lag.labels(topic, str(partition)).set(n)

    def set_deployment(self, model: str, live: list[tuple[str, str, str]]) -> None:
        """Replace the model's ``driftline_model_info`` series with (version, variant, provider) triples."""
        for version, variant in self._live.pop(model, set()):
            self.model_info.remove(model, version, variant)
        for version, variant, provider in live:
            self.model_info.labels(model, version, variant).info({"provider": provider})
        self._live[model] = {(v, var) for v, var, _ in live}

    def observe_batch(self, size: int, outcome: BatchOutcome, done_s: float) -> None:
        self.batch_size.observe(size)
        for s in outcome.stats:
            if s.variant != SHADOW:
                self.requests.labels(s.model, "predicted").inc(s.scored)
            self.predictions.labels(s.model, s.version, s.variant).inc(s.scored)
            observe_many(self.scores.labels(s.model, s.version, s.variant), s.scores, _SCORE_BUCKETS)
            self.inference.labels(s.model, s.version, s.variant, s.provider).observe(s.inference_s)
            observe_many(self.latency.labels(s.model), s.latency_s, _LATENCY_BUCKETS)
            if len(s.event_lag_s):
                observe_many(self.event_lag.labels(s.model), s.event_lag_s, _LAG_BUCKETS)
        for model, f in outcome.failures:
            self.requests.labels(model, "dead_letter").inc()
            self.dead_letters.labels(model, f.stage, f.reason).inc()
        self.last_processed.set(done_s)
