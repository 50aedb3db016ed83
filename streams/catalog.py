"""The schema catalog a process uses: driftline's built-in ``.avsc`` files, the configured folders, and a registry.

Its own light module (no Faust, no Kafka clients), so commands that only
read or write records start without importing the worker.
"""

from __future__ import annotations

from driftline.schemas.catalog import SchemaCatalog, builtin_schema_dir
from driftline.streams.settings import Settings


def file_catalog(settings: Settings) -> SchemaCatalog:
    """driftline's built-in ``.avsc`` files and those in ``schema_dirs``, at their file ids (no registry)."""
    return SchemaCatalog.from_dirs([builtin_schema_dir(), *settings.schema_dirs])


def build_catalog(settings: Settings, *, writes: bool = False) -> SchemaCatalog:
    """The files' schemas; with ``schema_registry.url``, ids the files lack are looked up there.

    ``writes``: this process writes driftline's output records, which are
    then framed with the registry's ids (registered first when
    ``schema_registry.auto_register``). Raises ``ConfigError`` with one line
    when the registry does not answer.
    """
    catalog = file_catalog(settings)
    if settings.schema_registry.url is None:
        return catalog
    from driftline.streams.registry import SchemaRegistry, use_registry_ids

    registry = SchemaRegistry(settings.schema_registry)
    registry.check()
    catalog.source = registry
    if writes:
        use_registry_ids(catalog, registry, settings, register=settings.schema_registry.auto_register)
    return catalog
