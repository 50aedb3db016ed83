from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram

from driftline.streams.metrics import observe_many


def test_observe_many_equals_observe_one_by_one() -> None:
    buckets = (0.01, 0.1, 1.0, 10.0)
    a = Histogram("a", "a", buckets=buckets, registry=CollectorRegistry())
    b = Histogram("b", "b", buckets=buckets, registry=CollectorRegistry())
    values = np.random.default_rng(0).exponential(0.5, 1000)
    values[:4] = [0.01, 0.1, 10.0, 50.0]  # on bucket edges and above the last one
    observe_many(a, values, buckets)
    for v in values:
        b.observe(v)
    sa = {s.name + str(s.labels): s.value for m in a.collect() for s in m.samples if "created" not in s.name}
    sb = {s.name + str(s.labels): s.value for m in b.collect() for s in m.samples if "created" not in s.name}
    assert sa.keys() == {k.replace("b_", "a_", 1) for k in sb}
    for k, v in sb.items():
        assert sa[k.replace("b_", "a_", 1)] == pytest.approx(v)
