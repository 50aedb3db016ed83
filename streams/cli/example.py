"""``driftline example [DIR]``: write the bundled fraud example out, for a user of the installed wheel.

What it writes (all shipped in the wheel as ``driftline.examples`` and the
built-in schemas): ``DIR/models/fraud/1`` (a model registry: ONNX file,
manifest, reference profile), ``DIR/schemas`` (the example's request schema,
``driftline.examples.CardTransaction``, every version) and ``DIR/fraud``
(the traffic generator and the training script). Then::

    DRIFTLINE_MODEL_DIR=DIR/models driftline worker
    python DIR/fraud/generator.py --rows 10000 | driftline produce -
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from driftline.streams.cli.common import Subcommands

EXAMPLE_SUBJECT_PREFIX = "driftline.examples."


def example_files(target: Path) -> list[tuple[Path, Path]]:
    """(source, destination) of every file ``driftline example`` writes under ``target``."""
    from driftline.schemas.catalog import builtin_schema_dir, load_schema_file
    from driftline.streams.errors import ConfigError
    from driftline.streams.settings import EXAMPLE_DIR, EXAMPLE_MODELS

    if not EXAMPLE_MODELS.is_dir():
        raise ConfigError(f"the bundled example is missing at {EXAMPLE_DIR}; reinstall driftline")
    pairs = [(src, target / "models" / src.relative_to(EXAMPLE_MODELS))
             for src in sorted(EXAMPLE_MODELS.rglob("*")) if src.is_file() and "__pycache__" not in src.parts]
    pairs += [(src, target / "schemas" / src.name) for src in sorted(builtin_schema_dir().glob("*.avsc"))
              if load_schema_file(src).subject.startswith(EXAMPLE_SUBJECT_PREFIX)]
    pairs += [(EXAMPLE_DIR / "fraud" / name, target / "fraud" / name) for name in ("generator.py", "train.py")]
    return pairs


def write_example(target: Path, *, force: bool = False) -> list[Path]:
    """Copy the example under ``target``; a different file already there is an error unless ``force``."""
    from driftline.streams.errors import ConfigError

    pairs = example_files(target)
    clash = [dst for src, dst in pairs if dst.exists() and (not dst.is_file() or dst.read_bytes() != src.read_bytes())]
    if clash and not force:
        raise ConfigError(f"{clash[0]} exists and differs from the example ({len(clash)} of its {len(pairs)} files "
                          "do); choose an empty folder, or pass --force to overwrite them")
    for src, dst in pairs:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    return [dst for _, dst in pairs]


def cmd_example(args: argparse.Namespace) -> int:
    target = Path(args.dir)
    written = write_example(target, force=args.force)
    models = target / "models"
    rows = [(models / "fraud" / "1", "a model registry: the fraud model (ONNX file, manifest, reference profile)"),
            (target / "schemas", "its request schema, every version (built in: a copy to read or evolve)"),
            (target / "fraud", "generator.py (example traffic), train.py (how the model was trained)")]
    width = max(len(str(path)) for path, _ in rows)
    print(f"wrote the fraud example under {target} ({len(written)} files):")
    for path, what in rows:
        print(f"  {str(path).ljust(width)}  {what}")
    print("next, with a broker at DRIFTLINE_BROKER (`driftline up` runs all of it on a broker of its own):")
    print(f"  DRIFTLINE_MODEL_DIR={models} driftline worker")
    print(f"  python {target / 'fraud' / 'generator.py'} --rows 10000 | driftline produce -")
    return 0


def add_example_command(sub: Subcommands) -> None:
    ex = sub.add_parser("example", help="write the bundled fraud example (model registry, schemas, generator)")
    ex.add_argument("dir", nargs="?", default="driftline-example", help="where (default ./driftline-example)")
    ex.add_argument("--force", action="store_true", help="overwrite files that differ from the example")
    ex.set_defaults(func=cmd_example)
