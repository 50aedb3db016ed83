"""River change detectors over one column's per-window signal.

River's detectors are wrapped, not re-implemented. They see one value per
window (``-log10`` of the window test's p-value, capped), never per-event
values: KSWIN runs a full KS test on every update (~370 µs), which is fine
once a window and far too slow once an event. Their defaults are tuned for
streams of events; window streams are short, so the defaults here check at
every update and need only a few windows of history.

State is the signal history (bounded): restoring replays it into a fresh
detector, which gives the same state as the original (River detectors are
deterministic for a given input; KSWIN is seeded).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from river import drift

from driftline.detectors.bocpd import Bocpd

KINDS = ("adwin", "kswin", "page_hinkley", "bocpd")
HISTORY = 500
SIGNAL_CAP = 50.0


def make(kind: str) -> Any:
    """A River detector configured for one value per window."""
    if kind == "adwin":
        return drift.ADWIN(delta=0.002, clock=1, grace_period=5, min_window_length=2)
    if kind == "kswin":
        return drift.KSWIN(alpha=0.005, window_size=30, stat_size=10, seed=7)
    if kind == "page_hinkley":
        return drift.PageHinkley(min_instances=5, delta=0.5, threshold=25.0)
    if kind == "bocpd":  # not River's: Adams and MacKay's, with River's interface
        return Bocpd()
    raise ValueError(f"detector must be one of {', '.join(KINDS)}, not {kind!r}")


def signal(p_value: float) -> float:
    """The window signal: ``-log10(p)``, capped so a p of 0 stays finite."""
    return min(SIGNAL_CAP, -math.log10(max(p_value, 1e-300)))


class SignalDetector:
    """One River detector fed with a column's window signals.

    >>> d = SignalDetector("adwin")
    >>> [d.update(v) for v in [0.3] * 20 + [40.0] * 6].index(True) > 20
    True
    """

    def __init__(self, kind: str = "adwin") -> None:
        self.kind = kind
        self._detector = make(kind)
        self.history: deque[float] = deque(maxlen=HISTORY)

    @property
    def drift_detected(self) -> bool:
        return bool(self._detector.drift_detected)

    def update(self, value: float) -> bool:
        self.history.append(value)
        self._detector.update(value)
        return self.drift_detected

    def reset(self) -> None:
        self._detector = make(self.kind)
        self.history.clear()

    def snapshot(self) -> dict[str, Any]:
        return {"kind": self.kind, "history": list(self.history)}

    @classmethod
    def restore(cls, state: dict[str, Any]) -> SignalDetector:
        d = cls(state["kind"])
        for v in list(state["history"])[-HISTORY:]:  # what a snapshot can hold: a longer list is not replayed
            d.update(float(v))
        return d
