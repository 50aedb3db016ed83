"""Joining late labels to the predictions they judge, by request id, with a time to live.

Pure and clock-driven: the feedback agent hands in scored records and labels
as they arrive and gets back joined pairs, and, as time passes, the labels
that found no prediction (dead letters, reason ``no_prediction``).

The cases, explicitly:

- a label after its prediction, within ``ttl_ms``: joined;
- a label before its prediction (out of order): it waits up to ``ttl_ms``;
- a second label for a request already joined: a duplicate, counted once
  and dropped (the first label wins);
- a prediction scored twice (at-least-once after a restart): the first wins;
- a request scored by several versions (a shadow next to the champion): the
  label joins each of them, whichever comes first;
- a label whose prediction never comes, or came more than ``ttl_ms``
  earlier: after ``ttl_ms`` it is unmatched and goes to the dead letters.

Every label is counted in exactly one of joined, duplicate, unmatched or
waiting (tests reconcile the counts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Scored:
    request_id: str
    model: str
    version: str
    variant: str
    score: float
    predicted: str | None
    event_time: int
    features: bytes = b""  # the model's float32 input row


@dataclass(frozen=True, slots=True)
class Label:
    request_id: str
    label: str | None  # the true class for classifiers
    target: float | None  # the true value for regressors
    event_time: int
    raw: Any = None  # the original message, for the dead letters


@dataclass(frozen=True, slots=True)
class Joined:
    scored: Scored
    label: Label
    label_delay_ms: int  # label event time minus request event time


@dataclass
class JoinCounts:
    labels: int = 0
    joined: int = 0
    duplicates: int = 0
    unmatched: int = 0
    duplicate_predictions: int = 0
    expired_predictions: int = 0


@dataclass
class FeedbackJoin:
    ttl_ms: int
    predictions: dict[str, tuple[list[Scored], int]] = field(default_factory=dict)  # waiting for a label
    waiting: dict[str, tuple[Label, int]] = field(default_factory=dict)  # labels waiting for a prediction
    done: dict[str, tuple[Label, set[tuple[str, str]], int]] = field(default_factory=dict)  # joined, by request
    counts: JoinCounts = field(default_factory=JoinCounts)

    def add_prediction(self, s: Scored, now_ms: int) -> list[Joined]:
        rid, which = s.request_id, (s.version, s.variant)
        joined = self.done.get(rid)
        if joined is not None:  # the label is here already: join this version too, once
            label, seen, at = joined
            if which in seen:
                self.counts.duplicate_predictions += 1
                return []
            seen.add(which)
            return [Joined(s, label, label.event_time - s.event_time)]
        early = self.waiting.pop(rid, None)
        if early is not None:
            return self._join([s], early[0], now_ms)
        pending = self.predictions.get(rid)
        if pending is None:
            self.predictions[rid] = ([s], now_ms)
        elif any((p.version, p.variant) == which for p in pending[0]):
            self.counts.duplicate_predictions += 1
        else:
            pending[0].append(s)
        return []

    def add_label(self, label: Label, now_ms: int) -> list[Joined]:
        self.counts.labels += 1
        rid = label.request_id
        if rid in self.done or rid in self.waiting:
            self.counts.duplicates += 1
            return []
        pending = self.predictions.pop(rid, None)
        if pending is not None:
            return self._join(pending[0], label, now_ms)
        self.waiting[rid] = (label, now_ms)
        return []

    def expire(self, now_ms: int) -> list[Label]:
        """Forget predictions and joins older than the TTL; return the labels that waited in vain."""
        cutoff = now_ms - self.ttl_ms
        for rid in [r for r, (_, at) in self.predictions.items() if at <= cutoff]:
            del self.predictions[rid]
            self.counts.expired_predictions += 1
        for rid in [r for r, (_, _, at) in self.done.items() if at <= cutoff]:
            del self.done[rid]
        unmatched = [lab for rid, (lab, at) in list(self.waiting.items()) if at <= cutoff]
        for lab in unmatched:
            del self.waiting[lab.request_id]
        self.counts.unmatched += len(unmatched)
        return unmatched

    def _join(self, scored: list[Scored], label: Label, now_ms: int) -> list[Joined]:
        self.done[label.request_id] = (label, {(s.version, s.variant) for s in scored}, now_ms)
        self.counts.joined += 1
        return [Joined(s, label, label.event_time - s.event_time) for s in scored]
