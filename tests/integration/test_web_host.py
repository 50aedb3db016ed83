"""Where the web server listens: loopback unless told (the images and manifests say 0.0.0.0, with a token).

The dashboard and metrics describe the data: by default they stay on the machine. Read from the kernel's
own table of listening sockets (/proc/net/tcp), so the test needs no second network interface.
Broker-independent: Tansu only.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from driftline.streams.kafka.broker import Broker
from tests.helpers import WorkerProcess

pytestmark = pytest.mark.kafka
LISTEN = "0A"


def listening_address(port: int) -> str:
    """The IPv4 address a socket listens on at ``port`` (dotted), from /proc/net/tcp."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, hexport = local.split(":")
        if state == LISTEN and int(hexport, 16) == port:
            return ".".join(str(int(addr[i:i + 2], 16)) for i in (6, 4, 2, 0))  # little-endian
    raise AssertionError(f"nothing listens on port {port}")


@pytest.mark.parametrize("broker", ["tansu"], indirect=True)
@pytest.mark.parametrize(("host", "expected"), [(None, "127.0.0.1"), ("0.0.0.0", "0.0.0.0")])  # noqa: S104
def test_the_web_server_listens_where_it_is_told(broker: Broker, namespace: str, tmp_path: Path, host: str | None,
                                                 expected: str) -> None:
    settings = {"web_host": host, "web_open": "true"} if host else {}  # open: this test is about the address
    worker = WorkerProcess(broker.bootstrap, namespace, tmp_path, **settings).start()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                worker.healthz()
                break
            except OSError:
                assert worker.alive(), worker.log()[-2000:]
                assert time.monotonic() < deadline, "the web server never answered"
                time.sleep(0.2)
        assert listening_address(worker.port) == expected
    finally:
        worker.stop()
