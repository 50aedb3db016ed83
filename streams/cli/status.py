"""``driftline status``: topics and lag, live models and their provider, the last alerts — one screen.

Lag is the score group's committed offset against the high watermark that
comes back with fetched data (the broker's "latest offset" answer is not
trusted: the embedded broker gets it wrong). A record on the alerts topic
that is not an alert is skipped (logged once with its position) and counted
on the screen.
"""

from __future__ import annotations

import argparse
import logging
import re
import time
import urllib.request
from collections.abc import Mapping
from typing import Any, cast

from confluent_kafka import Consumer, KafkaError, TopicPartition

from driftline.streams.cli.common import Subcommands, cli_settings
from driftline.streams.errors import BrokerError
from driftline.streams.kafka.topics import reader_config

log = logging.getLogger(__name__)


def fetched_watermarks(conf: Mapping[str, Any], topics: Mapping[str, int], timeout_s: float = 10.0,
                       sizes: dict[str, int] | None = None) -> dict[tuple[str, int], tuple[int, int]]:
    """(low, high) per partition, from reading each partition to its end; ``sizes``: bytes per topic, added to.

    The bytes are the records' keys, values and headers as a client receives
    them (the broker's disk holds them compressed or not, plus ~70 bytes of
    framing per batch and index files).
    """
    consumer = Consumer({**reader_config(conf, "driftline-status"), "log_level": 0})
    try:
        parts = [TopicPartition(t, p, 0) for t, n in topics.items() for p in range(n)]
        consumer.assign(parts)
        pending = {(tp.topic, tp.partition) for tp in parts}
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, timeout=0.3):
                err = msg.error()
                if err is None and sizes is not None:
                    size = len(msg.key() or b"") + len(msg.value() or b"")
                    size += sum(len(k) + len(v or b"") for k, v in cast(list[tuple[str, bytes | None]],
                                                                        msg.headers() or []))
                    sizes[str(msg.topic())] = sizes.get(str(msg.topic()), 0) + size
                if err is None or err.code() == KafkaError._PARTITION_EOF:
                    pending.discard((str(msg.topic()), int(msg.partition() or 0)))
        if pending:
            names = ", ".join(f"{t}[{p}]" for t, p in sorted(pending)[:4])
            raise BrokerError(f"the broker at {conf.get('bootstrap.servers')} sent no data for {names}"
                              f"{' ...' if len(pending) > 4 else ''} within {timeout_s:.0f}s; is it overloaded, "
                              "or are these partitions without a leader?")
        return {(tp.topic, tp.partition): consumer.get_watermark_offsets(tp, cached=True) for tp in parts}
    finally:
        consumer.close()


def committed(conf: Mapping[str, Any], group: str, topics: Mapping[str, int]) -> dict[tuple[str, int], int]:
    consumer = Consumer({**conf, "group.id": group, "enable.auto.commit": False, "log_level": 0})
    try:
        parts = [TopicPartition(t, p) for t, n in topics.items() for p in range(n)]
        return {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(parts, timeout=10)}
    finally:
        consumer.close()


def worker_models(url: str, token: str | None = None) -> list[dict[str, str]]:
    """``driftline_model_info`` series of a running worker's /metrics (model, version, variant, provider).

    ``token``: the worker's web token (``DRIFTLINE_WEB_TOKEN``), sent as a bearer token.
    """
    request = urllib.request.Request(url.rstrip("/") + "/metrics",  # noqa: S310 - the operator's URL
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=3) as r:  # noqa: S310
        text = r.read().decode(errors="replace")
    out = []
    for labels in re.findall(r"^driftline_model_info\{(.*)\} 1\.0$", text, re.M):
        out.append(dict(re.findall(r'(\w+)="([^"]*)"', labels)))
    return out


def status_data(settings: Any, worker_url: str, alerts: int = 5) -> dict[str, Any]:
    """What ``driftline status`` shows, as JSON-ready data: topics and lag, models, the workers' providers, alerts."""
    from driftline.streams.catalog import build_catalog
    from driftline.streams.cli.common import event_json
    from driftline.streams.cli.report import read_alerts, skipped_count
    from driftline.streams.core.poison import SkipLog
    from driftline.streams.kafka.control import configured, read_deployments
    from driftline.streams.kafka.topics import iter_topic, topic_retention

    conf = settings.confluent(**{"log_level": 0})
    parts = settings.topic_partitions()
    sizes: dict[str, int] = {}
    marks = fetched_watermarks(conf, parts, sizes=sizes)
    retention = topic_retention(conf, list(parts))
    requests = {settings.requests_topic(b) for b in settings.models}
    done = committed(conf, settings.score_group, {t: parts[t] for t in requests})
    topics = []
    for topic, n in parts.items():
        records = sum(marks[(topic, p)][1] - max(marks[(topic, p)][0], 0) for p in range(n))
        lag = None
        if topic in requests:
            lag = sum(max(0, marks[(topic, p)][1] - (done[(topic, p)] if done[(topic, p)] >= 0 else
                                                     max(marks[(topic, p)][0], 0))) for p in range(n))
        topics.append({"topic": topic, "partitions": n, "records": records, "lag": lag,
                       "bytes": sizes.get(topic, 0), "retention": retention[topic]})
    deployments = read_deployments(settings, timeout_s=10)
    models = []
    for b in settings.models:
        dep = deployments.get(b.name) or configured(settings, b.name)
        models.append({"model": b.name, "describe": dep.describe(), "deployment": dep.to_dict(),
                       "source": "control topic" if b.name in deployments else "settings"})
    workers: list[dict[str, str]] = []
    worker_error = None
    try:
        workers = worker_models(worker_url, settings.web_token_value())
    except OSError as exc:
        worker_error = str(exc)
    skips = SkipLog(log)
    found = read_alerts(iter_topic(conf, settings.topic("alerts")), build_catalog(settings), skips)
    found.sort(key=lambda a: a.created_at)
    return {
        "namespace": settings.namespace, "broker": settings.broker, "topics": topics, "models": models,
        "worker": {"url": worker_url, "models": workers, "error": worker_error},
        "alerts": [event_json(a) for a in found[-alerts:]] if alerts > 0 else [],
        "skipped_alerts": skipped_count(skips), "alerts_topic": settings.topic("alerts"),
    }


def render_status(settings: Any, worker_url: str, alerts: int = 5) -> str:
    return format_status(status_data(settings, worker_url, alerts), alerts)


def format_status(data: dict[str, Any], alerts: int = 5) -> str:
    """:func:`status_data` as one screen of text."""
    from driftline.streams.core.events import Alert, BinShift, format_event

    lines = [f"driftline {data['namespace']} on {data['broker']}", "", "TOPICS"]
    lines.append(f"  {'topic':<40} {'partitions':>10} {'records':>10} {'lag':>10} {'size':>10} {'retention':>10}")
    for t in data["topics"]:
        lag = "-" if t["lag"] is None else str(t["lag"])
        lines.append(f"  {t['topic']:<40} {t['partitions']:>10} {t['records']:>10} {lag:>10} "
                     f"{human_bytes(t.get('bytes', 0)):>10} {t.get('retention', '?'):>10}")
    lines += ["", "MODELS"]
    for m in data["models"]:
        note = "" if m["source"] == "control topic" else " (configured; no control record)"
        lines.append(f"  {m['describe']}{note}")
    worker = data["worker"]
    for m in worker["models"]:
        lines.append(f"  worker at {worker['url']}: {m.get('model')} v{m.get('version')} {m.get('variant')} "
                     f"on {m.get('provider')}")
    if worker["error"] is not None:
        lines.append(f"  provider: unknown (no worker answers at {worker['url']}: {worker['error']})")
    lines += ["", f"LAST {alerts} ALERTS"]
    shown = []
    for a in data["alerts"]:
        fields = {k: v for k, v in a.items() if k not in ("event",)}
        fields["top_bins"] = tuple(BinShift(**b) for b in fields["top_bins"])
        shown.append(f"  {format_event(Alert(**fields), colour=False)}")
    lines += shown or ["  none"]
    if data["skipped_alerts"]:
        lines.append(f"  (skipped {data['skipped_alerts']} records that do not parse as alerts on "
                     f"{data['alerts_topic']})")
    return "\n".join(lines)


def human_bytes(n: int) -> str:
    """1234567 → ``1.2 MB`` (decimal units, as brokers' and clouds' bills count)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from driftline.streams.cli.common import require_broker

    settings = cli_settings(args)
    require_broker(settings, settings.topic_partitions())
    url = args.worker or f"http://127.0.0.1:{settings.web_port}"
    if args.json:
        print(json.dumps(status_data(settings, url, alerts=args.alerts)))
    else:
        print(render_status(settings, url, alerts=args.alerts))
    return 0


def add_status_command(sub: Subcommands) -> None:
    st = sub.add_parser("status", help="topics and lag, live models and provider, the last alerts")
    st.add_argument("--broker")
    st.add_argument("--worker", help="a worker's web address for the provider (default http://127.0.0.1:WEB_PORT)")
    st.add_argument("--alerts", type=int, default=5, help="how many recent alerts (default 5)")
    st.add_argument("--json", action="store_true", help="one JSON object instead of the screen (machine-readable)")
    st.set_defaults(func=cmd_status)
