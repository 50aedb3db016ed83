"""Generated garbage for the readers' property tests: bytes that no reader of a driftline topic can use."""

from __future__ import annotations

import json

from hypothesis import strategies as st

odd_text = st.sampled_from(["\ud800", "a\udcffb", "line\nbreak", "\x00", "\u202e", "<script>x</script>"])
json_scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(st.characters(), max_size=12)
                | odd_text)  # surrogates, controls, markup
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)
NAMED_POISON: list[bytes | None] = [
    b"null", b"[]", b"5", b'"x"', b"true", b"{}", b"[" * 100_000, b'{"a":' * 50_000, b"1e999", b"-1e999",
    b"9" * 5000, b"NaN", b"Infinity", b"\xff\xfe\xfa", b"\x80abc", "é".encode("latin-1"), b"", None,
    b'{"model": "fraud", "champion": "\\ud800"}', b'{"model": "\\udcff", "champion": "1"}',
    b'{"model": "\\ud800", "version": "1"}', b'{"model": "fraud", "version": "1", "start_ms": 1e999}',
]


def garbage() -> st.SearchStrategy[bytes | None]:
    """Random bytes, JSON of any shape, deep, huge, not UTF-8, empty, a tombstone."""
    return st.one_of(
        st.binary(max_size=300),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.sampled_from(NAMED_POISON),
        st.integers(min_value=1, max_value=20_000).map(lambda n: b"[" * n + b"]" * n),
        st.binary(min_size=1, max_size=50).map(lambda b: b"\xff" + b),  # never valid UTF-8
    )
