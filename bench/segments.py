"""CPU per event the bias audit adds to the score path, no broker: the same batches scored with and without segments.

    python bench/segments.py [--batches 40] [--batch 1000] [--rounds 5]

First the bias audit's own steps alone, on a batch of 1,000 rows: the fold
of two segments into a window sketch, and the joining of their values for
the scored records. Then scores the example model's traffic through :class:`ScorePipeline` (decode,
validate, ONNX, encode, window fold) in four configurations: the example
manifest without ``segments`` and with its two (``country``, ``channel``),
each without and with the scored records the label join reads (which then
carry the joined segment values). Rounds alternate the configurations so
a noisy neighbour hits them alike; the median round is reported. Prints
one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from driftline.detectors.fairness import SKETCH_VALUES, SegmentCounts, join_values, segment_text
from driftline.detectors.profile import ReferenceProfile
from driftline.detectors.sketch import ColumnSketch, WindowSketch
from driftline.examples.fraud import generator
from driftline.inference.model import OnnxModel
from driftline.schemas.catalog import SchemaCatalog, builtin_schema_dir
from driftline.schemas.codec import encode_many
from driftline.streams.core.pipeline import RawMessage, ScorePipeline, ServedModel
from driftline.streams.core.profiling import PROFILE_FILE
from driftline.streams.core.windows import WindowFolder
from driftline.streams.settings import EXAMPLE_MODELS


def pipeline(catalog: SchemaCatalog, directory: Path, segments: list[str], scored: bool) -> ScorePipeline:
    manifest = json.loads((EXAMPLE_MODELS / "fraud" / "1" / "manifest.json").read_text())
    target = directory / ("-".join(segments) or "none") / "fraud"
    shutil.copytree(EXAMPLE_MODELS / "fraud", target, dirs_exist_ok=True)
    (target / "1" / "manifest.json").write_text(json.dumps({**manifest, "segments": segments}))
    model = OnnxModel(target / "1", providers="cpu")
    model.load()
    profile = ReferenceProfile.load(target / "1" / PROFILE_FILE)
    folder = WindowFolder(profile, "fraud", "1", "w0", length_ms=60_000)
    return ScorePipeline({"req": ServedModel(model, catalog, max_message_bytes=8192, folder=folder)},
                         catalog.latest("driftline.Prediction"), predictions_topic="p", deadletter_topic="d",
                         deadletter_max_bytes=8192,
                         scored=(catalog.latest("driftline.Scored"), "s") if scored else None)


def alone(batch: int, rounds: int) -> dict[str, float]:
    """µs per event of the segment fold and of the value join by themselves (median of ``rounds``)."""
    rng = np.random.default_rng(0)
    country = rng.choice(np.array(generator.COUNTRIES, dtype=object), batch)
    channel = rng.choice(np.array(["pos", "online", "atm", "contactless"], dtype=object), batch)
    scores = rng.random(batch)
    window = WindowSketch("fraud", "1", 0, 1, {}, ColumnSketch(np.zeros(1, np.int64), np.zeros(0, np.int64)))

    def fold() -> None:
        decided = scores >= 0.5
        window.add_segments({"country": SegmentCounts.fold(country, decided),
                             "channel": SegmentCounts.fold(channel, decided)}, SKETCH_VALUES)

    def join() -> None:
        join_values([segment_text(country), segment_text(channel)])

    out = {}
    for name, step in (("fold_alone_us", fold), ("join_alone_us", join)):
        times = []
        for _ in range(rounds):
            start = time.process_time()
            for _ in range(200):
                step()
            times.append((time.process_time() - start) / (200 * batch) * 1e6)
        out[name] = round(statistics.median(times), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    catalog = SchemaCatalog.from_dirs([builtin_schema_dir()])
    records, _ = generator.generate(args.batch * args.batches, np.random.default_rng(0), drift=generator.NO_DRIFT)
    values = encode_many(catalog.latest("driftline.examples.CardTransaction"), records)
    batches = [[RawMessage("req", 0, i, None, v) for i, v in enumerate(values[b * args.batch:(b + 1) * args.batch])]
               for b in range(args.batches)]
    configs = {(segs, scored): None for segs in ((), ("country", "channel")) for scored in (False, True)}
    runs: dict[tuple[tuple[str, ...], bool], list[float]] = {k: [] for k in configs}
    with tempfile.TemporaryDirectory() as tmp:
        pipes = {k: pipeline(catalog, Path(tmp), list(k[0]), k[1]) for k in configs}
        for p in pipes.values():  # warm-up
            p.process(batches[0], 1_000)
        for _ in range(args.rounds):
            for k, p in pipes.items():
                start = time.process_time()
                for b in batches:
                    p.process(b, 1_000)
                runs[k].append((time.process_time() - start) / (args.batch * args.batches) * 1e6)
    us = {k: statistics.median(v) for k, v in runs.items()}
    result: dict[str, float] = {
        **alone(args.batch, args.rounds),
        "us_per_event_no_segments": round(us[((), False)], 2),
        "us_per_event_two_segments": round(us[(("country", "channel"), False)], 2),
        "us_per_event_no_segments_scored": round(us[((), True)], 2),
        "us_per_event_two_segments_scored": round(us[(("country", "channel"), True)], 2),
    }
    result["added_us_window_fold"] = round(result["us_per_event_two_segments"] - result["us_per_event_no_segments"], 2)
    result["added_us_with_scored"] = round(result["us_per_event_two_segments_scored"]
                                           - result["us_per_event_no_segments_scored"], 2)
    for k, v in result.items():
        print(f"{k:36} {v}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
