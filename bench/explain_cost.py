"""What one explained request costs: ONNX calls, CPU and wall milliseconds, through the explain agent's own code.

    python bench/explain_cost.py [--requests 400] [--samples 64 256] [--batch 1 20 100] [--background 64]

The bundled fraud model (16 features: KernelSHAP, not exact) on one
ONNX Runtime thread, as the explain agent runs it; the requests are the
example generator's, turned into ``{ns}.scored`` values as the score agent
writes them, then given to :class:`ExplainCore` ``batch`` at a time
(the agent explains the picked requests of one poll together). CPU is the
thread's CPU time (``time.thread_time``), so other load on the machine
does not count; wall is printed beside it. One JSON line per setting.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from driftline.inference.model import OnnxModel  # noqa: E402
from driftline.inference.registry import ModelRegistry  # noqa: E402
from driftline.schemas.catalog import SchemaCatalog, builtin_schema_dir  # noqa: E402
from driftline.schemas.codec import encode  # noqa: E402
from driftline.streams.core.explain import ExplainConfig, ExplainCore  # noqa: E402
from driftline.streams.example import fraud_generator  # noqa: E402
from driftline.streams.settings import EXAMPLE_MODELS  # noqa: E402


def scored_values(catalog: SchemaCatalog, model: OnnxModel, n: int) -> list[bytes]:
    records, _ = fraud_generator().generate(n, np.random.default_rng(1))
    profile = model.manifest.profile
    cols = {f.name: np.array([r[f.name] for r in records], dtype=object if hasattr(f, "categories") else np.float64)
            for f in profile.features}
    cols = {k: np.where(np.isnan(v), 0.1, v) if v.dtype != object else v for k, v in cols.items()}
    matrix = profile.encode(cols)
    scores = model.predict(matrix)
    schema = catalog.latest("driftline.Scored")
    return [encode(schema, {"request_id": r["request_id"], "model": "fraud", "model_version": "1",
                            "variant": "champion", "score": float(s), "predicted": None, "event_time": 0,
                            "features": row.astype("<f4").tobytes()})
            for r, s, row in zip(records, scores.tolist(), matrix, strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--samples", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 20, 100])
    ap.add_argument("--background", type=int, default=64)
    args = ap.parse_args()
    catalog = SchemaCatalog.from_dirs([builtin_schema_dir()])
    model = OnnxModel(EXAMPLE_MODELS / "fraud" / "1", providers="cpu", intra_op_threads=1)
    model.load()
    values = scored_values(catalog, model, args.requests)
    machine = f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
    for samples in args.samples:
        for batch in args.batch:
            core = ExplainCore(ModelRegistry(EXAMPLE_MODELS), catalog, "bench.explanations",
                               ExplainConfig(1.0, samples=samples, background=args.background))
            core.batch(values[:1])  # load the version, compute the base: once per version, not per request
            explained = calls = 0
            cpu = wall = 0.0
            for start in range(0, len(values), batch):
                c0, w0 = time.thread_time(), time.perf_counter()
                out, stats = core.batch(values[start:start + batch])
                cpu += time.thread_time() - c0
                wall += time.perf_counter() - w0
                explained += len(out)
                calls += stats.calls
            print(json.dumps({
                "samples": samples, "background": args.background, "batch": batch, "explained": explained,
                "onnx_calls_per_request": round(calls / explained, 3),
                "model_rows_per_request": samples * args.background,
                "cpu_ms_per_request": round(cpu / explained * 1000, 2),
                "wall_ms_per_request": round(wall / explained * 1000, 2),
                "machine": machine, "date": time.strftime("%Y-%m-%d", time.gmtime())}), flush=True)


if __name__ == "__main__":
    main()
