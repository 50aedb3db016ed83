"""`driftline up`'s live screen keeps the dashboard address on it (it is redrawn every second on a terminal)."""

from __future__ import annotations

from driftline.streams.cli import demo


def test_the_live_screen_shows_the_dashboard_on_every_redraw() -> None:
    watch = demo.Watch()
    screen = demo.render(watch, 12.0, 60.0, 30.0, "127.0.0.1:9092", dashboard="http://127.0.0.1:6066/")
    lines = screen.splitlines()
    assert lines[0].startswith("driftline up — broker 127.0.0.1:9092") and "drift at 30s" in lines[0]
    assert lines[1].split() == ["dashboard", "http://127.0.0.1:6066/"]
    assert "dashboard" not in demo.render(watch, 12.0, 60.0, None, "127.0.0.1:9092")


def test_the_live_screen_shows_decision_rates_per_segment_from_the_sketches() -> None:
    import json

    import numpy as np

    from driftline.detectors.fairness import SegmentCounts
    from driftline.detectors.sketch import ColumnSketch, WindowSketch

    watch = demo.Watch()
    values = np.array(["DE"] * 80 + ["FR"] * 20, dtype=object)
    counts = SegmentCounts.fold(values, np.arange(100) % 10 == 0)
    sketch = WindowSketch("fraud", "1", 0, 10, {}, ColumnSketch(np.zeros(1, np.int64), np.zeros(0, np.int64)),
                          messages=100, segments={"country": counts})
    assert watch.add_sketch(json.dumps(sketch.to_dict()).encode()) and watch.add_sketch(b'{"kind": "labels"}')
    assert not watch.add_sketch(b"junk")
    screen = demo.render(watch, 12.0, 60.0, None, "127.0.0.1:9092")
    line = next(x for x in screen.splitlines() if x.split()[0] == "country")
    assert line.split()[1:5] == ["DE", "10.0%", "FR", "10.0%"] and "(spread 0.0%)" in line


def test_the_live_screen_shows_the_last_explanation_largest_first() -> None:
    watch = demo.Watch()
    assert "explained" not in demo.render(watch, 1.0, 60.0, None, "b:1")
    rec = {"request_id": "req-7", "features": ["amount", "hour\x1b[2J", "merchant_risk", "age"],
           "attributions": [0.5, -1.25, 0.1, 0.0]}
    assert watch.add_explanation(rec) and watch.add_explanation({**rec, "request_id": "req-8"})
    assert not watch.add_explanation({"features": ["a"], "attributions": []})  # unusable: not counted
    line = next(x for x in demo.render(watch, 1.0, 60.0, None, "b:1").splitlines() if "explained" in x)
    assert line.split()[:4] == ["explained", "2", "last", "req-8:"]
    assert "hour?[2J -1.25, amount +0.50, merchant_risk +0.10" in line  # largest first, nothing unprintable
