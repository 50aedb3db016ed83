"""Shared by every ``driftline`` command: settings from its flags and the ``DRIFTLINE_*`` variables.

Also what every command that talks to the broker does first: :func:`require_broker`
waits a short while for it (:data:`CLI_BROKER_WAIT_S`, not the worker's
``broker_wait_s``) and checks the topics it reads, so a broker that is away or
a namespace without topics is one line saying what to do, never a hang or a
traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Iterable
from typing import IO, Any, TypeAlias

from driftline.streams.settings import Settings, load_settings

# What ``add_subparsers()`` returns: each command module adds its command(s) to it.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

CLI_BROKER_WAIT_S = 10.0
"""How long a command (not the worker) waits for the broker, unless DRIFTLINE_BROKER_WAIT_S is set."""


def cli_settings(args: argparse.Namespace, **extra: Any) -> Settings:
    """Settings with ``--broker`` (where the command has it) over ``DRIFTLINE_BROKER``."""
    return load_settings(broker=getattr(args, "broker", None), **extra)


def broker_wait_s(settings: Settings) -> float:
    """A command's wait for the broker: ``DRIFTLINE_BROKER_WAIT_S`` where it is set, else :data:`CLI_BROKER_WAIT_S`."""
    return settings.broker_wait_s if "broker_wait_s" in settings.model_fields_set else CLI_BROKER_WAIT_S


def require_broker(settings: Settings, topics: Iterable[str] = (), wait_s: float | None = None) -> dict[str, int]:
    """Wait (bounded) for the broker and check ``topics`` exist; their partition counts.

    Raises :class:`BrokerError` with one line: the broker address and what to
    check when it does not answer, ``driftline topics create`` when a topic
    is missing.
    """
    from driftline.streams.errors import BrokerError
    from driftline.streams.kafka.topics import wait_for_broker

    meta = wait_for_broker(settings.confluent(), broker_wait_s(settings) if wait_s is None else wait_s)
    wanted = list(topics)
    missing = [t for t in wanted if t not in meta.topics or meta.topics[t].error is not None]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise BrokerError(f"topic {missing[0]}{more} does not exist on the broker at {settings.broker}: run "
                          f"`driftline topics create` (namespace {settings.namespace}), or check DRIFTLINE_NAMESPACE")
    return {t: len(meta.topics[t].partitions) for t in wanted}


def use_colour(stream: IO[str]) -> bool:
    """Colour on a terminal, unless ``NO_COLOR`` is set to anything (https://no-color.org)."""
    return stream.isatty() and not os.environ.get("NO_COLOR")


def event_json(event: Any, **where: Any) -> dict[str, Any]:
    """An alert or retrain event as a JSON-ready dict: its kind, where it was read, and its fields."""
    from driftline.streams.core.events import Alert

    return {"event": "alert" if isinstance(event, Alert) else "retrain", **where, **dataclasses.asdict(event)}
