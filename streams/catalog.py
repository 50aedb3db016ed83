"""The schema catalog a process uses: driftline's built-in ``.avsc`` files and the configured folders.

Its own light module (no Faust, no Kafka clients), so commands that only
read or write records start without importing the worker.
"""

from __future__ import annotations

from driftline.schemas.catalog import SchemaCatalog, builtin_schema_dir
from driftline.streams.settings import Settings


def build_catalog(settings: Settings) -> SchemaCatalog:
    return SchemaCatalog.from_dirs([builtin_schema_dir(), *settings.schema_dirs])
