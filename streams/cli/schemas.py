"""``driftline schemas register``: driftline's schemas into the configured Schema Registry."""

from __future__ import annotations

import argparse

from driftline.streams.cli.common import Subcommands, cli_settings
from driftline.streams.errors import ConfigError


def cmd_schemas_register(args: argparse.Namespace) -> int:
    """Register every output schema and each served model's request schema (all versions, oldest first).

    A schema the subject's compatibility rule refuses stops the command with
    one line; what was registered before it stays registered.
    """
    from driftline.inference.manifest import Manifest
    from driftline.inference.registry import ModelRegistry
    from driftline.streams.catalog import file_catalog
    from driftline.streams.registry import OUTPUTS, SchemaRegistry, register_versions, subjects_of

    settings = cli_settings(args)
    registry = SchemaRegistry.from_settings(settings)
    if registry is None:
        raise ConfigError("no schema registry configured: set schema_registry.url (DRIFTLINE_SCHEMA_REGISTRY__URL)")
    registry.check()
    catalog = file_catalog(settings)
    plan = [(record, subjects_of(settings, record, roles)) for record, roles in OUTPUTS]
    models = ModelRegistry(settings.model_dir)
    for binding in settings.models:
        if models.versions(binding.name):
            subject = Manifest.read(models.path(binding.name, binding.version)).request_subject
            plan.append((subject, [settings.schema_registry.subject(settings.requests_topic(binding), subject)]))
    print(f"schema registry {registry.url}")
    for record, subjects in plan:
        for got in register_versions(catalog, registry, record, subjects, register=True):
            print(f"{got.subject:<48} id {got.id:<10} {'registered now' if got.new else 'already registered'}"
                  f"  ({record})")
    return 0


def add_schemas_commands(sub: Subcommands) -> None:
    schemas = sub.add_parser("schemas", help="Schema Registry administration")
    ssub = schemas.add_subparsers(dest="schemas_command", required=True)
    reg = ssub.add_parser("register", help="register driftline's output schemas and the served models' request "
                                           "schemas, checking each subject's compatibility rule")
    reg.set_defaults(func=cmd_schemas_register)
