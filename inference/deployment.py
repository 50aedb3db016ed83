"""Deployment state of one model and the routing of entities to its variants.

The state is one small record per model on the control topic (last record
wins): the champion, at most one experiment (a canary with a traffic
fraction, or an A/B split between two versions), any number of shadow
versions, and the earlier champions for rollback. Transitions are pure
functions returning a new state, so the CLI, the tests and the worker agree
on what a command means.

Routing is by a hash of the entity key, not of the request: an entity (a
card, a user) stays on its variant for the whole experiment, which keeps
per-entity features and outcomes comparable between arms.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from driftline.inference.errors import ModelError

CHAMPION, CANARY, SHADOW, ARM_A, ARM_B = "champion", "canary", "shadow", "a", "b"
HISTORY = 20  # earlier champions kept for rollback
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


@dataclass(frozen=True, slots=True)
class Deployment:
    """What serves one model now. Invariant: no version plays two live roles at once."""

    model: str
    champion: str
    canary: str | None = None
    canary_fraction: float = 0.0
    ab: tuple[str, str] | None = None
    ab_split: float = 0.5  # share of entities on arm B
    shadows: tuple[str, ...] = ()
    history: tuple[str, ...] = ()  # earlier champions, oldest first
    updated_at: int = 0

    def __post_init__(self) -> None:
        if self.canary is not None and self.ab is not None:
            raise ModelError(f"{self.model}: a canary and an A/B test at once; stop one first")
        if self.canary is not None and not 0.0 < self.canary_fraction < 1.0:
            raise ModelError(f"{self.model}: canary fraction must be in (0, 1), got {self.canary_fraction}")
        if self.ab is not None and not 0.0 < self.ab_split < 1.0:
            raise ModelError(f"{self.model}: A/B split must be in (0, 1), got {self.ab_split}")
        live = self.routes_versions()
        if len(set(live)) != len(live):
            raise ModelError(f"{self.model}: version {_dupe(live)} would serve two variants at once")
        if set(self.shadows) & set(live) or len(set(self.shadows)) != len(self.shadows):
            raise ModelError(f"{self.model}: a shadow version must not also serve traffic or be listed twice")

    # -- transitions -----------------------------------------------------------------

    def promote(self, version: str, now_ms: int) -> Deployment:
        """Make ``version`` the champion; an experiment or shadow of it ends, the old champion goes to history."""
        if version == self.champion:
            raise ModelError(f"{self.model}: version {version} is already the champion")
        ab = self.ab if self.ab is None or version not in self.ab else None
        return replace(
            self, champion=version, canary=None if self.canary == version else self.canary,
            canary_fraction=0.0 if self.canary == version else self.canary_fraction, ab=ab,
            shadows=tuple(s for s in self.shadows if s != version),
            history=(*self.history, self.champion)[-HISTORY:], updated_at=now_ms,
        )

    def start_canary(self, version: str, fraction: float, now_ms: int) -> Deployment:
        return replace(self, canary=version, canary_fraction=fraction,
                       shadows=tuple(s for s in self.shadows if s != version), updated_at=now_ms)

    def stop_canary(self, now_ms: int) -> Deployment:
        if self.canary is None:
            raise ModelError(f"{self.model}: no canary is running")
        return replace(self, canary=None, canary_fraction=0.0, updated_at=now_ms)

    def start_ab(self, a: str, b: str, split: float, now_ms: int) -> Deployment:
        """Split traffic between versions ``a`` and ``b`` (``split`` of the entities on ``b``)."""
        return replace(self, ab=(a, b), ab_split=split,
                       shadows=tuple(s for s in self.shadows if s not in (a, b)), updated_at=now_ms)

    def stop_ab(self, now_ms: int) -> Deployment:
        if self.ab is None:
            raise ModelError(f"{self.model}: no A/B test is running")
        return replace(self, ab=None, ab_split=0.5, updated_at=now_ms)

    def add_shadow(self, version: str, now_ms: int) -> Deployment:
        return replace(self, shadows=(*self.shadows, version), updated_at=now_ms)

    def remove_shadow(self, version: str, now_ms: int) -> Deployment:
        if version not in self.shadows:
            raise ModelError(f"{self.model}: version {version} is not in shadow")
        return replace(self, shadows=tuple(s for s in self.shadows if s != version), updated_at=now_ms)

    def rollback(self, now_ms: int) -> Deployment:
        """Undo the last risk taken: end a running canary or A/B test, else restore the previous champion."""
        if self.canary is not None or self.ab is not None:
            return replace(self, canary=None, canary_fraction=0.0, ab=None, ab_split=0.5, updated_at=now_ms)
        if not self.history:
            raise ModelError(f"{self.model}: nothing to roll back to (no earlier champion)")
        previous = self.history[-1]
        return replace(self, champion=previous, history=self.history[:-1],
                       shadows=tuple(s for s in self.shadows if s != previous), updated_at=now_ms)

    # -- what serves -----------------------------------------------------------------

    def versions(self) -> list[str]:
        """Every version that must be loaded: the champion (also during an A/B test), the arms, the shadows."""
        return list(dict.fromkeys([self.champion, *self.routes_versions(), *self.shadows]))

    def routes_versions(self) -> list[str]:
        if self.ab is not None:
            return list(self.ab)
        return [self.champion, *([self.canary] if self.canary else [])]

    def route(self, buckets: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
        """(variant, version, row indices) for rows whose entities hash to ``buckets`` in [0, 1).

        Entities below the fraction go to the canary (or arm B), so growing the
        fraction only moves more entities over: nobody flips back and forth.
        """
        if self.ab is not None:
            on_b = buckets < self.ab_split
            return _nonempty([(ARM_A, self.ab[0], np.flatnonzero(~on_b)), (ARM_B, self.ab[1], np.flatnonzero(on_b))])
        if self.canary is not None:
            on_c = buckets < self.canary_fraction
            return _nonempty([(CHAMPION, self.champion, np.flatnonzero(~on_c)),
                              (CANARY, self.canary, np.flatnonzero(on_c))])
        return _nonempty([(CHAMPION, self.champion, np.arange(len(buckets)))])

    def describe(self) -> str:
        parts = [f"champion v{self.champion}"]
        if self.canary:
            parts.append(f"canary v{self.canary} at {self.canary_fraction:.0%}")
        if self.ab:
            parts.append(f"A/B v{self.ab[0]} vs v{self.ab[1]} ({self.ab_split:.0%} on B)")
        if self.shadows:
            parts.append("shadow " + ", ".join(f"v{s}" for s in self.shadows))
        return f"{self.model}: " + "; ".join(parts)

    # -- wire format -----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "champion": self.champion, "canary": self.canary,
                "canary_fraction": self.canary_fraction, "ab": list(self.ab) if self.ab else None,
                "ab_split": self.ab_split, "shadows": list(self.shadows), "history": list(self.history),
                "updated_at": self.updated_at}

    @staticmethod
    def from_dict(d: Any) -> Deployment:
        """A deployment from its wire form; ModelError saying what is wrong for anything else.

        The record comes from a topic anyone with access can write to, so
        every field's type is checked here instead of coerced: a coercion
        like ``str(None)`` or ``int(1e999)`` would either invent a version or
        raise something no caller expects.
        """
        if not isinstance(d, Mapping):
            raise ModelError(f"deployment record does not parse: a JSON {_json_type(d)}, not an object")
        ab = d.get("ab")
        if ab is not None and (not isinstance(ab, list | tuple) or len(ab) != 2):
            raise ModelError(f"deployment record does not parse: ab must be null or two versions, got {_brief(ab)}")
        return Deployment(  # __post_init__ checks the combination (ModelError naming the model)
            model=_text(d, "model"), champion=_text(d, "champion"),
            canary=None if d.get("canary") is None else _text(d, "canary"),
            canary_fraction=_number(d, "canary_fraction", 0.0),
            ab=None if ab is None else (_name(ab[0], "ab"), _name(ab[1], "ab")),
            ab_split=_number(d, "ab_split", 0.5),
            shadows=_texts(d, "shadows"), history=_texts(d, "history"),
            updated_at=_integer(d, "updated_at", 0),
        )


def live_variants(dep: Deployment) -> list[tuple[str, str]]:
    """(variant, version) of everything that scores: the traffic arms, then the shadows."""
    if dep.ab is not None:
        arms = [(ARM_A, dep.ab[0]), (ARM_B, dep.ab[1])]
    else:
        arms = [(CHAMPION, dep.champion), *([(CANARY, dep.canary)] if dep.canary else [])]
    return [*arms, *((SHADOW, s) for s in dep.shadows)]


def key_buckets(keys: np.ndarray, salt: str = "") -> np.ndarray:
    """Each key's deterministic position in [0, 1): FNV-1a over its code points, then a 64-bit mix.

    Vectorised over the batch (one numpy pass per character position), the
    same on every worker and every run, independent of ``PYTHONHASHSEED``.

    >>> b = key_buckets(np.array(["card-1", "card-2", "card-1"], dtype=object))
    >>> bool(b[0] == b[2]) and bool(b[0] != b[1]) and bool(((b >= 0) & (b < 1)).all())
    True
    """
    text = np.asarray(keys, dtype=np.str_)
    n = len(text)
    if n == 0:
        return np.empty(0, dtype=np.float64)
    width = text.dtype.itemsize // 4
    codes = text.view(np.uint32).reshape(n, width) if width else np.zeros((n, 0), np.uint32)
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    for ch in salt:
        h = (h ^ np.uint64(ord(ch))) * _FNV_PRIME
    for j in range(width):
        c = codes[:, j].astype(np.uint64)
        h = np.where(c != 0, (h ^ c) * _FNV_PRIME, h)
    h ^= h >> np.uint64(33)  # murmur3's finaliser: spreads FNV's weak high bits
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _nonempty(routes: list[tuple[str, str, np.ndarray]]) -> list[tuple[str, str, np.ndarray]]:
    return [r for r in routes if len(r[2])]


def _dupe(items: list[str]) -> str:
    return next(i for i in items if items.count(i) > 1)


_MAX_NAME = 200  # model and version names are directory names: short
_MAX_MS = 2**53  # epoch ms beyond this are not times
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80


def _brief(value: Any) -> str:
    """A short repr of untrusted data, whatever its size or depth."""
    return _REPR.repr(value)


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number" if isinstance(value, int | float) else type(value).__name__)


def _text(d: Mapping[str, Any], key: str) -> str:
    """A required name (model or version)."""
    if key not in d:
        raise ModelError(f"deployment record does not parse: {key!r} is missing")
    return _name(d[key], key)


def _name(value: Any, what: str) -> str:
    """A non-empty printable name of bounded length, as ``driftline model`` and the trainer write them.

    Printable excludes control characters and lone surrogates (JSON can
    spell ``"\\ud800"``): a name goes into metric labels, log lines and
    Avro alerts, and a surrogate cannot be encoded as UTF-8 in any of them.
    """
    if not isinstance(value, str) or not value or len(value) > _MAX_NAME or not value.isprintable():
        raise ModelError(f"deployment record does not parse: {what} must be a non-empty printable string of at "
                         f"most {_MAX_NAME} characters, got a JSON {_json_type(value)} {_brief(value)}")
    return value


def _texts(d: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = d.get(key, ())
    if not isinstance(value, list | tuple):
        raise ModelError(f"deployment record does not parse: {key} must be a list of versions, "
                         f"got a JSON {_json_type(value)}")
    return tuple(_name(v, key) for v in value)


def _number(d: Mapping[str, Any], key: str, default: float) -> float:
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ModelError(f"deployment record does not parse: {key} must be a number, got a JSON {_json_type(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = float("inf")
    if not math.isfinite(number):
        raise ModelError(f"deployment record does not parse: {key} must be finite, got {_brief(value)}")
    return number


def _integer(d: Mapping[str, Any], key: str, default: int) -> int:
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _MAX_MS:
        raise ModelError(f"deployment record does not parse: {key} must be epoch milliseconds, got {_brief(value)}")
    return value
