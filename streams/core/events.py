"""One readable line per alert or retrain event, for people on call."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from driftline.schemas.catalog import SchemaCatalog
from driftline.streams.core.poison import BadRecord, Skip, decode_avro

EVENT_SUBJECTS = ("driftline.Alert", "driftline.RetrainRequest")
_COLOURS = {"critical": "\x1b[1;31m", "warning": "\x1b[33m", "retrain": "\x1b[1;35m"}
_RESET = "\x1b[0m"


def point_alert(model: str, version: str, kind: str, statistic: str, value: float, threshold: float, message: str,
                now_ms: int, *, sample_size: int = 0, scope: tuple[str, ...] = (), severity: str = "critical",
                ) -> dict[str, Any]:
    """A ``driftline.Alert`` record about a moment, not a drift window (a refused load, a quality verdict).

    Its id hashes model, version, ``scope`` (the variant, say), kind and time,
    so the same event sent twice keeps one id.
    """
    text = "|".join((model, version, *scope, kind, str(now_ms)))
    return {
        "id": hashlib.sha256(text.encode()).hexdigest()[:32], "model": model, "model_version": version,
        "kind": kind, "severity": severity, "feature": None, "statistic": statistic, "value": float(value),
        "threshold": float(threshold), "window_start": now_ms, "window_end": now_ms, "sample_size": int(sample_size),
        "reference_size": 0, "top_bins": [], "message": message, "created_at": now_ms,
    }


def millis(value: Any) -> int:
    """An Avro timestamp-millis as epoch ms: the full schema decodes datetimes, the fast one ints."""
    return int(value.timestamp() * 1000) if isinstance(value, datetime) else int(value)


def _when(value: Any) -> str:
    """HH:MM:SS of an epoch-ms timestamp; ``??:??:??`` for one no calendar has (records are untrusted)."""
    try:
        return datetime.fromtimestamp(millis(value) / 1000, tz=UTC).strftime("%H:%M:%S")
    except (ValueError, OverflowError, OSError, TypeError):
        return "??:??:??"


def read_event(catalog: SchemaCatalog, value: bytes | None) -> dict[str, Any] | Skip:
    """An alert or retrain record from ``{ns}.alerts``/``{ns}.retrain`` (timestamps as epoch ms), or why not.

    Never raises: readers of these topics (``driftline alerts``) print what
    they can and skip the rest.
    """
    try:
        return decode_avro(catalog, value, EVENT_SUBJECTS)
    except BadRecord as exc:
        return exc.skip()


def format_event(record: dict[str, Any], *, colour: bool = False) -> str:
    """An alert (has ``severity``) or a retrain request (has ``stage``) as one line."""
    if "severity" in record:
        level = record["severity"]
        text = (f"{_when(record['window_end'])} {level.upper():8} {record['kind']:16} {record['model']} "
                f"v{record['model_version']} {record['message']} (n={record['sample_size']})")
    else:
        level = "retrain"
        candidate = record.get("candidate_version")
        text = (f"{_when(record['requested_at'])} RETRAIN  {record['stage']:16} {record['model']} "
                f"v{record['model_version']}{f' → v{candidate}' if candidate else ''}: {record['reason']}"
                f" ({len(record['alert_ids'])} alerts)")
    return f"{_COLOURS.get(level, '')}{text}{_RESET}" if colour else text
