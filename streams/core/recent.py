"""A bounded map of the most recently used entries: per-version things loaded from the registry on demand.

Keys often come from a topic (model and version names in sketches), so
what is kept must be bounded; an evicted entry is loaded again when asked for.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class RecentlyUsed(Generic[K, V]):
    """At most ``max_entries`` entries, the least recently used evicted first.

    >>> seen = RecentlyUsed[str, int](max_entries=2)
    >>> [seen.get(k, lambda k=k: len(k)) for k in ("a", "bb", "a", "ccc")]
    [1, 2, 1, 3]
    >>> list(seen.keys())  # "bb" was the least recently used
    ['a', 'ccc']
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K, load: Callable[[], V], keep: Callable[[V], bool] = lambda _: True) -> V:
        """The entry of ``key``, from ``load()`` when not kept; a loaded value is kept when ``keep`` says so."""
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        value = load()
        if keep(value):
            self._entries[key] = value
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return value

    def keys(self) -> list[K]:
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
