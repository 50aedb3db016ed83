"""Log lines as text for people, or as JSON for an auditor's and a log pipeline's tools (``--log-format json``).

The events an audit needs are logged with ``extra`` fields (``event``,
``model``, ``version``, ``actor``, ``reason``, ``stage``, ``kind``,
``severity``): a deployment applied or refused, an alert, a retrain stage,
a worker started or stopped. In JSON each of those becomes a field, so a
query can select ``event == "deployment_applied"`` without parsing
sentences. Messages name fields and models, never a request's values.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]
ENV = "DRIFTLINE_LOG_FORMAT"
AUDIT_FIELDS = ("event", "model", "version", "actor", "reason", "stage", "kind", "severity", "request")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the audit fields it has."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if "DRIFTLINE_PROCESS_INDEX" in os.environ:
            out["process"] = int(os.environ["DRIFTLINE_PROCESS_INDEX"])
        for name in AUDIT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def log_format() -> LogFormat:
    """The format this process logs in (``DRIFTLINE_LOG_FORMAT``, set by ``--log-format``); text by default."""
    return "json" if os.environ.get(ENV, "").lower() == "json" else "text"


def configure(level: str, fmt: LogFormat, text_format: str) -> None:
    """Root logging to stderr in ``fmt``; child processes inherit the choice through the environment."""
    os.environ[ENV] = fmt
    if fmt == "json":
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    else:
        logging.basicConfig(level=level.upper(), format=text_format)


def faust_logging_config(level: str) -> dict[str, Any] | None:
    """What Faust's worker configures logging with: ours in JSON (it would install its own text format)."""
    if log_format() != "json":
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"level": level.upper(), "handlers": ["default"]},
    }
