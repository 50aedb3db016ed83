"""Memory held per pending entry of the label join, and the cost of one expire() call at 2M entries.

    python bench/join_memory.py [--n 500000] [--expire-n 2000000]

Each measurement runs in a fresh child process: it reads VmRSS from
/proc/self/status, builds N waiting entries the way the feedback agent does
(a realistic ``driftline.Feedback`` or ``driftline.Scored`` record encoded,
decoded, turned into the join's Label or Scored, added to the join), reads
VmRSS again and prints the difference per entry next to the join's own
estimate (``FeedbackJoin.bytes``, which its byte bound is enforced on).
Predictions carry the example fraud model's input row (26 float32). "joined"
is a request whose label came: what the join remembers of it for the TTL.

The expire child builds a join of ``--expire-n`` waiting labels, then times
a call that expires nothing and one that expires a capped chunk (what the
feedback thread does between two polls), with the entries each examined.

Prints one JSON line per child, and as its last line one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARTITIONS = 4


def rss_bytes() -> int:
    """Resident set size of this process, from the kernel (VmRSS is in kB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def measure(kind: str, n: int) -> dict[str, object]:
    """Fill a join with n waiting labels or predictions; RSS before and after, per entry."""
    import numpy as np

    from driftline.inference.model import OnnxModel
    from driftline.schemas.catalog import SchemaCatalog, builtin_schema_dir
    from driftline.schemas.codec import decode, encode
    from driftline.streams.app.feedback import label_of, scored_of
    from driftline.streams.core.join import FeedbackJoin
    from driftline.streams.settings import EXAMPLE_MODELS

    catalog = SchemaCatalog.from_dirs([builtin_schema_dir()])
    feedback, scored = catalog.latest("driftline.Feedback"), catalog.latest("driftline.Scored")
    width = OnnxModel(EXAMPLE_MODELS / "fraud" / "1", providers="cpu").manifest.profile.width
    rng = np.random.default_rng(7)
    rows = rng.random((1024, width), dtype=np.float32)
    join = FeedbackJoin(3_600_000, max_entries=10 * n, max_bytes=1 << 40)
    now = int(time.time() * 1000)
    gc.collect()
    before = rss_bytes()
    for i in range(n):
        rid = str(uuid.uuid4())
        if kind == "labels":
            value = encode(feedback, {"request_id": rid, "label": "fraud" if i % 30 == 0 else "legit",
                                      "target": None, "event_time": now}, fast=True)
            label = label_of(decode(catalog, value, fast=True)[1], rid.encode(), value)
            assert label is not None  # noqa: S101 - it has a label
            join.add_label(label, now + i // 1000, i % PARTITIONS)
        else:
            value = encode(scored, {"request_id": rid, "model": "fraud", "model_version": "1",
                                    "variant": "champion", "score": float(rows[i % 1024, 0]), "predicted": "legit",
                                    "event_time": now, "features": rows[i % 1024].tobytes()}, fast=True)
            join.add_prediction(scored_of(decode(catalog, value, fast=True)[1]), now + i // 1000, i % PARTITIONS)
            if kind == "joined":  # its label comes at once: a Done entry stays, remembered for the TTL
                value = encode(feedback, {"request_id": rid, "label": "legit", "target": None, "event_time": now},
                               fast=True)
                label = label_of(decode(catalog, value, fast=True)[1], rid.encode(), value)
                assert label is not None  # noqa: S101 - it has a label
                join.add_label(label, now + i // 1000, i % PARTITIONS)
        if i % 10_000 == 0:
            join.take_changed()  # the agent drains these after every batch
    join.take_changed()
    gc.collect()
    after = rss_bytes()
    assert join.size == n, (join.size, n)  # noqa: S101 - nothing evicted
    return {"kind": kind, "n": n, "rss_before_mb": round(before / 2**20, 1), "rss_after_mb": round(after / 2**20, 1),
            "rss_bytes_per_entry": round((after - before) / n), "estimated_bytes_per_entry": round(join.bytes / n)}


def measure_expire(n: int) -> dict[str, object]:
    """One expire() call at n entries: when nothing is due, and when everything is (capped)."""
    from driftline.streams.core.join import EXPIRE_CHUNK, FeedbackJoin, Label

    join = FeedbackJoin(1_000, max_entries=n, max_bytes=1 << 40)
    raw = (b"k" * 36, b"v" * 60)
    for i in range(n):
        rid = f"r{i:09d}"
        join.add_label(Label(rid, "legit", None, 0, raw), i // 1000, i % PARTITIONS)
    join.take_changed()
    out: dict[str, object] = {"kind": "expire", "n": n, "chunk": EXPIRE_CHUNK}
    for name, now in (("nothing_due", 0), ("all_due", 10_000_000)):
        examined = join.examined
        started = time.perf_counter()
        expired = join.expire(now)
        out[f"{name}_ms"] = round((time.perf_counter() - started) * 1000, 3)
        out[f"{name}_examined"] = join.examined - examined
        out[f"{name}_expired"] = len(expired)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500_000, help="waiting entries per memory measurement")
    ap.add_argument("--expire-n", type=int, default=2_000_000, help="entries of the expire measurement")
    ap.add_argument("--child", choices=["labels", "predictions", "joined", "expire"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        result = measure_expire(args.n) if args.child == "expire" else measure(args.child, args.n)
        print(json.dumps(result), flush=True)
        return
    results = []
    for child, n in (("labels", args.n), ("predictions", args.n), ("joined", args.n), ("expire", args.expire_n)):
        done = subprocess.run([sys.executable, __file__, "--child", child, "--n", str(n)], check=True,
                              capture_output=True, text=True)
        line = done.stdout.strip().splitlines()[-1]
        print(line, flush=True)
        results.append(json.loads(line))
    summary = {r["kind"]: r for r in results}
    print(json.dumps({
        "label_rss_bytes": summary["labels"]["rss_bytes_per_entry"],
        "label_estimated_bytes": summary["labels"]["estimated_bytes_per_entry"],
        "prediction_rss_bytes": summary["predictions"]["rss_bytes_per_entry"],
        "prediction_estimated_bytes": summary["predictions"]["estimated_bytes_per_entry"],
        "joined_rss_bytes": summary["joined"]["rss_bytes_per_entry"],
        "joined_estimated_bytes": summary["joined"]["estimated_bytes_per_entry"],
        "expire": summary["expire"],
        "machine": f"{platform.machine()} {len(__import__('os').sched_getaffinity(0))} cores, "
                   f"Python {platform.python_version()}",
        "date": datetime.now(UTC).date().isoformat(),
    }))


if __name__ == "__main__":
    main()
