"""Folding scored batches into window sketches, per model, with the clock passed in."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

import numpy as np

from driftline.detectors.fairness import SKETCH_VALUES, SegmentCounts
from driftline.detectors.profile import CategoricalReference, ReferenceProfile
from driftline.detectors.sketch import WindowSketch, fine_maps, window_bounds
from driftline.schemas.columnar import Columns


class SeenIds:
    """Request ids of one model's current and last window on this worker, to count repeated requests.

    A producer that retries without idempotence sends a request twice, and
    both copies carry one key (the request's or its entity's), so they land
    on one partition and one worker sees both: counting here is exact
    without any exchange between workers. At most ``cap`` ids are kept per
    window, as their 64-bit string hashes (about 60 bytes each with their
    set slots, whatever the id's length; the process's hash, which nothing
    outside it sees; a collision, about one in 10^13 pairs at the cap, would
    count one repeat too many): beyond, the window's later requests are not
    checked (and not counted as checked), so memory stays bounded at any
    rate. C loops only (map and set operations): about 0.2–0.3 µs per request.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.current: set[int] = set()
        self.previous: set[int] = set()

    def roll(self) -> None:
        """A new window: the current one's ids become the ones a repeat may come after."""
        self.previous, self.current = self.current, set()

    def count(self, ids: np.ndarray) -> tuple[int, int]:
        """(requests checked, those whose id came before: earlier in the batch, this window or the last)."""
        room = self.cap - len(self.current)
        if room <= 0 or len(ids) == 0:
            return 0, 0
        batch = ids[:room].tolist()
        fresh = set(map(hash, batch))  # 64-bit hashes: memory per id whatever its length
        fresh -= self.current
        repeated = len(batch) - len(fresh) + (len(fresh & self.previous) if self.previous else 0)
        self.current |= fresh
        return len(batch), repeated


FOLD_ROWS = 512  # scored rows held before they are folded into the window's sketch (see _Held)


class _Held:
    """Scored rows of the current window not folded yet: batches are folded together, not one by one.

    Folding costs ~20 numpy calls per monitored column whatever the batch's
    size; at a few thousand requests per second batches hold ~30 rows, and
    folding each one alone cost more than scoring it. Only the monitored
    columns' rows are kept (copies, about :data:`FOLD_ROWS` rows): holding
    thousands made decoding the next batches 2–3 times slower here (the
    allocator no longer reused freed blocks), so large batches fold at once.
    """

    __slots__ = ("codes", "nulls", "rows", "scores", "values")

    def __init__(self) -> None:
        self.values: dict[str, list[np.ndarray]] = {}
        self.nulls: dict[str, list[np.ndarray | None]] = {}
        self.codes: dict[str, list[np.ndarray]] = {}
        self.scores: list[np.ndarray] = []
        self.rows = 0

    def add(self, names: Iterable[str], values: Mapping[str, np.ndarray], nulls: Mapping[str, np.ndarray],
            rows: np.ndarray | None, scores: np.ndarray, codes: Mapping[str, np.ndarray]) -> None:
        for name in names:
            column, mask = values[name], nulls.get(name)
            self.values.setdefault(name, []).append(column if rows is None else column[rows])
            self.nulls.setdefault(name, []).append(mask if mask is None or rows is None else mask[rows])
        for name, c in codes.items():
            self.codes.setdefault(name, []).append(c if rows is None else c[rows])
        self.scores.append(scores)
        self.rows += len(scores)

    def joined(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
        """(values, nulls, scores, codes) of every held row, in the order they came."""
        values = {k: _join(v) for k, v in self.values.items()}
        nulls = {}
        for k, masks in self.nulls.items():
            if any(m is not None for m in masks):
                nulls[k] = _join([np.zeros(len(v), bool) if m is None else m
                                  for m, v in zip(masks, self.values[k], strict=True)])
        whole = len(self.scores)
        codes = {k: _join(c) for k, c in self.codes.items() if len(c) == whole}  # else read from the strings
        return values, nulls, _join(self.scores), codes


def _join(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class WindowFolder:
    """The current window of one model on this worker; hands back windows as they close.

    Windows are aligned processing-time tumbling windows of ``length_ms``
    (every worker cuts at the same instants, so the drift agent can merge
    their sketches), or, with ``length_events``, windows of that many
    messages (for tests and replays).
    """

    def __init__(self, profile: ReferenceProfile, model: str, version: str, contributor: str, *,
                 length_ms: int | None = 60_000, length_events: int | None = None, max_ids: int = 0) -> None:
        """``max_ids``: request ids remembered per window to count repeats (0: none; see :class:`SeenIds`)."""
        if (length_ms is None) == (length_events is None):
            raise ValueError("give exactly one of length_ms and length_events")
        self.profile = profile
        self.model = model
        self.version = version
        self.contributor = contributor
        self.length_ms = length_ms
        self.length_events = length_events
        self._current: WindowSketch | None = None
        self._held = _Held()
        self._maps = fine_maps(profile)
        self._names = self._monitored(profile)
        self._categories: dict[str, tuple[str, ...] | None] = {}
        self._seen = SeenIds(max_ids)
        self._id_field: str | None = None
        self._segments: tuple[str, ...] = ()
        self._threshold = 0.5

    def watch_segments(self, fields: Iterable[str], threshold: float) -> None:
        """Count requests and positive decisions (score >= ``threshold``) per value of these request fields."""
        self._segments, self._threshold = tuple(fields), threshold
        monitored = self._monitored(self.profile)
        self._names = monitored + tuple(f for f in self._segments if f not in monitored)

    @staticmethod
    def _monitored(profile: ReferenceProfile) -> tuple[str, ...]:
        names = [f.name for f in profile.features]
        if profile.multivariate is not None:
            names += [n for n in profile.multivariate.names if n not in names]
        return tuple(names)

    @property
    def current(self) -> WindowSketch | None:
        """The open window with every row so far folded in (None before the first batch of a window)."""
        self._fold_held()
        return self._current

    def _fold_held(self) -> None:
        held, cur = self._held, self._current
        if cur is None or not held.scores:
            return
        self._held = _Held()
        values, nulls, scores, codes = held.joined()
        cur.fold(self.profile, values, nulls, scores, 0, 0, None, self._maps, codes)
        if self._segments:
            decided = scores >= self._threshold
            cur.add_segments({name: SegmentCounts.fold(values[name], decided, nulls.get(name))
                              for name in self._segments if name in values}, SKETCH_VALUES)

    def watch_ids(self, id_field: str) -> None:
        """Count requests whose ``id_field`` repeats an earlier one (when ``max_ids`` allows any)."""
        self._id_field = id_field if self._seen.cap > 0 else None

    def hide(self, personal: Iterable[str]) -> None:
        """Fold these features' bins only: their sums (a one-request window's sum is its value) stay 0."""
        self.profile = replace(self.profile, personal=self.profile.personal | frozenset(personal))

    def accept_codes(self, categories: Mapping[str, tuple[str, ...]]) -> None:
        """Category lists the validator encodes with; its codes are reused where they match the profile's."""
        for ref in self.profile.features:
            if isinstance(ref, CategoricalReference) and categories.get(ref.name) == ref.categories:
                self._categories[ref.name] = ref.categories

    def _open(self, now_ms: int) -> WindowSketch:
        self._seen.roll()
        if self.length_ms is not None:
            start, end = window_bounds(now_ms, self.length_ms)
        else:
            start, end = now_ms, now_ms
        return WindowSketch.empty(self.profile, self.model, self.version, start, end, self.contributor)

    def fold(self, columns: Columns | None, rows: np.ndarray | None, scores: np.ndarray, messages: int,
             dead_letters: int, now_ms: int, codes: Mapping[str, np.ndarray] | None = None) -> list[WindowSketch]:
        """Add one batch: the scored ``rows`` of ``columns`` with their scores, and the batch's counts."""
        closed = self.tick(now_ms)
        if self._current is None:
            self._current = self._open(now_ms)
        cur = self._current
        cur.messages += messages
        cur.dead_letters += dead_letters
        if columns is not None and len(scores):
            usable = {k: v for k, v in (codes or {}).items() if self._categories.get(k) is not None}
            # every monitored feature and segment is a field of the reader schema (checked at start)
            self._held.add(self._names, columns.values, columns.nulls, rows, scores, usable)
            if self._held.rows >= FOLD_ROWS:
                self._fold_held()
            if self._id_field is not None:
                ids = columns.values[self._id_field]
                checked, repeated = self._seen.count(ids if rows is None else ids[rows])
                cur.ids += checked
                cur.duplicates += repeated
        if self.length_events is not None:
            cur.end_ms = now_ms
            if cur.messages >= self.length_events:
                self._fold_held()
                closed.append(cur)
                self._current = None
        return closed

    def tick(self, now_ms: int) -> list[WindowSketch]:
        """Close the time window if ``now_ms`` is past its end."""
        cur = self._current
        if cur is None or self.length_ms is None or now_ms < cur.end_ms:
            return []
        self._fold_held()
        self._current = None
        return [cur] if cur.messages else []

