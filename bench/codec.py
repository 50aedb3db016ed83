"""CPU per record of the score path's codec work: decode a batch of requests, encode as many predictions.

    python bench/codec.py [--sizes 1 32 1000] [--seconds 0.5]

For each codec (fastavro per record, the numpy columnar codec, the compiled
one) and batch size: ``BatchDecoder.decode`` of framed CardTransaction v2
requests from the example generator, then ``BatchEncoder.encode`` of a
Prediction per row, columns as the pipeline passes them. Process CPU time
(not wall time: the machine is shared), batches repeated for ``--seconds``,
the best of three; prints a Markdown table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from driftline.schemas.catalog import SchemaCatalog, builtin_schema_dir  # noqa: E402
from driftline.schemas.codec import BatchDecoder, BatchEncoder, encode_many  # noqa: E402
from driftline.schemas.columnar import IMPLEMENTATIONS  # noqa: E402
from driftline.streams.example import fraud_generator  # noqa: E402

NEVER = 10**9


def codecs() -> dict[str, dict[str, object]]:
    """Keyword arguments of BatchDecoder/BatchEncoder for each codec this install has."""
    out: dict[str, dict[str, object]] = {"fastavro": {"columnar_min_rows": NEVER, "implementation": "numpy"},
                                         "numpy": {"columnar_min_rows": 1, "implementation": "numpy"}}
    if "compiled" in IMPLEMENTATIONS:
        out["compiled"] = {"columnar_min_rows": 1, "implementation": "compiled"}
    return out


def us_per_record(catalog: SchemaCatalog, values: list[bytes], kwargs: dict[str, object], seconds: float) -> float:
    decoder = BatchDecoder(catalog, catalog.latest("driftline.examples.CardTransaction"), 1 << 20,
                           **kwargs)  # type: ignore[arg-type]
    encoder = BatchEncoder(catalog.latest("driftline.Prediction"), **kwargs)  # type: ignore[arg-type]
    n = len(values)
    rng = np.random.default_rng(0)
    scores = rng.random(n)
    labels = ["fraud" if s > 0.9 else None for s in scores]

    def one_batch() -> None:
        out = decoder.decode(values)
        cols = out.columns
        encoder.encode(cols.n, {
            "request_id": cols.values["request_id"], "entity_key": cols.values["card_id"], "model": "fraud",
            "model_version": "1", "variant": "champion", "score": scores, "label": labels,
            "schema_id": out.schema_ids, "provider": "CPUExecutionProvider", "event_time": cols.values["event_time"],
            "scored_at": 1_767_000_000_000,
        })

    best = float("inf")
    for _ in range(3):
        batches = 0
        start = time.process_time()
        while batches < 3 or time.process_time() - start < seconds:
            one_batch()
            batches += 1
        best = min(best, (time.process_time() - start) / (batches * n))
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 32, 1000])
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args()
    catalog = SchemaCatalog.from_dirs([builtin_schema_dir()])
    records, _ = fraud_generator().generate(max(args.sizes), np.random.default_rng(1))
    framed = encode_many(catalog.latest("driftline.examples.CardTransaction"), records)
    results = {name: {size: us_per_record(catalog, framed[:size], kwargs, args.seconds) for size in args.sizes}
               for name, kwargs in codecs().items()}
    print("| codec | " + " | ".join(f"batch {s}" for s in args.sizes) + " |")
    print("| --- | " + " | ".join("---:" for _ in args.sizes) + " |")
    for name, row in results.items():
        print(f"| {name} | " + " | ".join(f"{row[s]:,.1f}" for s in args.sizes) + " |")
    print(json.dumps({"us_per_record": results, "machine": f"{platform.machine()} {platform.processor() or ''}"
                      f" Python {platform.python_version()}, numpy {np.__version__}"}))


if __name__ == "__main__":
    main()
