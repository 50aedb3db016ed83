"""Folding scored batches into window sketches, per model, with the clock passed in."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

import numpy as np

from driftline.detectors.profile import CategoricalReference, ReferenceProfile
from driftline.detectors.sketch import WindowSketch, fine_maps, window_bounds
from driftline.schemas.columnar import Columns


class WindowFolder:
    """The current window of one model on this worker; hands back windows as they close.

    Windows are aligned processing-time tumbling windows of ``length_ms``
    (every worker cuts at the same instants, so the drift agent can merge
    their sketches), or, with ``length_events``, windows of that many
    messages (for tests and replays).
    """

    def __init__(self, profile: ReferenceProfile, model: str, version: str, contributor: str, *,
                 length_ms: int | None = 60_000, length_events: int | None = None) -> None:
        if (length_ms is None) == (length_events is None):
            raise ValueError("give exactly one of length_ms and length_events")
        self.profile = profile
        self.model = model
        self.version = version
        self.contributor = contributor
        self.length_ms = length_ms
        self.length_events = length_events
        self.current: WindowSketch | None = None
        self._maps = fine_maps(profile)
        self._categories: dict[str, tuple[str, ...] | None] = {}

    def hide(self, personal: Iterable[str]) -> None:
        """Fold these features' bins only: their sums (a one-request window's sum is its value) stay 0."""
        self.profile = replace(self.profile, personal=self.profile.personal | frozenset(personal))

    def accept_codes(self, categories: Mapping[str, tuple[str, ...]]) -> None:
        """Category lists the validator encodes with; its codes are reused where they match the profile's."""
        for ref in self.profile.features:
            if isinstance(ref, CategoricalReference) and categories.get(ref.name) == ref.categories:
                self._categories[ref.name] = ref.categories

    def _open(self, now_ms: int) -> WindowSketch:
        if self.length_ms is not None:
            start, end = window_bounds(now_ms, self.length_ms)
        else:
            start, end = now_ms, now_ms
        return WindowSketch.empty(self.profile, self.model, self.version, start, end, self.contributor)

    def fold(self, columns: Columns | None, rows: np.ndarray | None, scores: np.ndarray, messages: int,
             dead_letters: int, now_ms: int, codes: Mapping[str, np.ndarray] | None = None) -> list[WindowSketch]:
        """Add one batch: the scored ``rows`` of ``columns`` with their scores, and the batch's counts."""
        closed = self.tick(now_ms)
        if self.current is None:
            self.current = self._open(now_ms)
        if columns is None:
            values, nulls, rows = _empty_columns(self.profile), {}, None
        else:
            values, nulls = columns.values, columns.nulls
        usable = {k: v for k, v in (codes or {}).items() if self._categories.get(k) is not None}
        self.current.fold(self.profile, values, nulls, scores, messages, dead_letters, rows, self._maps, usable)
        if self.length_events is not None:
            self.current.end_ms = now_ms
            if self.current.messages >= self.length_events:
                closed.append(self.current)
                self.current = None
        return closed

    def tick(self, now_ms: int) -> list[WindowSketch]:
        """Close the time window if ``now_ms`` is past its end."""
        cur = self.current
        if cur is None or self.length_ms is None or now_ms < cur.end_ms:
            return []
        self.current = None
        return [cur] if cur.messages else []


def _empty_columns(profile: ReferenceProfile) -> dict[str, np.ndarray]:
    return {f.name: np.empty(0, dtype=object) for f in profile.features}
