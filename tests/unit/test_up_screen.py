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
