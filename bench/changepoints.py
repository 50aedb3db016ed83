"""Change detectors on the window signal: precision, recall and F1 against known change points.

    python bench/changepoints.py [--streams 50] [--windows 600] [--seed 1] [--margin 5]

Seeded piecewise streams alternate calm stretches (each window's test
p-value uniform) and drifted ones (the window's z shifted by 1 to 3), 30 to
90 windows each; the signal is ``-log10 p``, what the alert policy feeds
its detector. A detection within ``margin`` windows after a change not
matched yet is a hit, anything else a false alarm. Every detector
``drift_detector`` can name runs with driftline's settings, beside the
"never fires" and "always fires" baselines; then false changes per 1,000
windows on calm streams, and the CPU per update.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from driftline.detectors.changepoints import Score, evaluate, median, piecewise_stream, run, score  # noqa: E402
from driftline.detectors.river_signal import KINDS, make  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=50)
    ap.add_argument("--windows", type=int, default=600)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--margin", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    streams = [piecewise_stream(rng, args.windows) for _ in range(args.streams)]
    calm = [piecewise_stream(rng, args.windows, stretch=(10**9, 10**9)) for _ in range(args.streams)]
    makers = {kind: (lambda kind=kind: make(kind)) for kind in KINDS}
    started = {k: time.process_time() for k in makers}
    scores, onset_recall = {}, {}
    for kind, maker in makers.items():
        started[kind] = time.process_time()
        fired = [run(maker, s) for s in streams]
        started[kind] = time.process_time() - started[kind]
        scores[kind] = sum((score(s.changes, f, args.margin) for s, f in zip(streams, fired, strict=True)),
                           Score(0, 0, 0, ()))
        onset_recall[kind] = sum((score(s.onsets, f, args.margin) for s, f in zip(streams, fired, strict=True)),
                                 Score(0, 0, 0, ())).recall
    baselines = evaluate({}, streams, args.margin)
    false = {kind: evaluate({kind: maker}, calm, args.margin)[kind].detections for kind, maker in makers.items()}
    updates = args.streams * args.windows
    changes = scores[KINDS[0]].changes
    print(f"{args.streams} streams x {args.windows} windows, {changes} changes, margin {args.margin} windows, "
          f"seed {args.seed}\n")
    print("| detector | precision | recall | recall of drift onsets | F1 | median delay (windows) "
          "| false changes per 1,000 calm windows | CPU µs per update |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, s in {**scores, **{k: baselines[k] for k in ("never fires", "always fires")}}.items():
        fp = f"{1000 * false[name] / updates:.1f}" if name in false else ("0.0" if name == "never fires" else "1000")
        cpu = f"{1e6 * started[name] / updates:.0f}" if name in started else "–"
        onsets = f"{onset_recall[name]:.3f}" if name in onset_recall else ("0" if name == "never fires" else "1.000")
        print(f"| {name} | {s.precision:.3f} | {s.recall:.3f} | {onsets} | {s.f1:.3f} | {median(s.delays):.1f} | {fp} "
              f"| {cpu} |")


if __name__ == "__main__":
    main()
