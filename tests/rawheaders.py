"""Produce records whose header names are not UTF-8, as kcat or a Java client can and the Python clients cannot.

confluent-kafka and aiokafka both encode header names from ``str``; aiokafka's
pure-Python record builder calls ``name.encode("utf-8")``, so a ``str`` whose
``encode`` returns the raw bytes puts exactly those bytes on the wire.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any


class RawName(str):
    """A header name that encodes to arbitrary bytes."""

    raw: bytes

    def __new__(cls, raw: bytes) -> RawName:
        obj = super().__new__(cls, raw.decode("latin-1"))
        obj.raw = raw
        return obj

    def encode(self, *_args: Any, **_kwargs: Any) -> bytes:  # type: ignore[override]
        return self.raw


def produce_raw_headers(bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes, list[tuple[bytes, bytes]]]],
                        partition: int = 0) -> None:
    """Produce (key, value, [(raw header name, value)]) records to one partition with aiokafka's Python builder."""
    os.environ["AIOKAFKA_NO_EXTENSIONS"] = "1"  # read at import: the C builder would reject the name

    async def run() -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
        await producer.start()
        try:
            for key, value, headers in items:
                await producer.send_and_wait(topic, value, key=key, partition=partition,
                                             headers=[(RawName(n), v) for n, v in headers])
        finally:
            await producer.stop()

    asyncio.run(run())
