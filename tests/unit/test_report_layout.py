"""The drift report leads with its verdict: drifted columns first, when each began, compared since then.

A report used to list every column in schema order over the whole period: 36 rows, the one that mattered
anywhere among them, and drift that began late diluted by the calm before it.
"""

from __future__ import annotations

import re

import numpy as np

from driftline.detectors.profile import ReferenceProfile
from driftline.detectors.sketch import WindowSketch
from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.columnar import columns_from_records, flat_fields
from driftline.streams.cli import report
from driftline.streams.core.profiling import PROFILE_FILE
from driftline.streams.settings import EXAMPLE_MODELS

PROFILE = ReferenceProfile.load(EXAMPLE_MODELS / "fraud" / "1" / PROFILE_FILE)
START = 1_767_225_600_000
WINDOW = 60_000
ALPHA = 1e-4  # 34 columns × 10 windows: at 1 % a few calm windows would flag by chance (seeded, but fragile)


def window(catalog: SchemaCatalog, generator, i: int, drifted: bool) -> WindowSketch:  # type: ignore[no-untyped-def]
    drift = generator.Drift(shift={"amount": 1.0}) if drifted else generator.NO_DRIFT
    records, _ = generator.generate(2_000, np.random.default_rng(100 + i), drift=drift)
    schema = catalog.latest("driftline.examples.CardTransaction")
    cols = columns_from_records(records, flat_fields(schema.raw, skip_others=True))
    sketch = WindowSketch.empty(PROFILE, "fraud", "1", START + i * WINDOW, START + (i + 1) * WINDOW)
    names = [f.name for f in PROFILE.features]
    sketch.fold(PROFILE, {n: cols.values[n] for n in names}, {n: cols.null_mask(n) for n in names},
                np.random.default_rng(i).choice(PROFILE.score.sample, 2_000), 2_000, 0)
    return sketch


def test_the_report_leads_with_the_drifted_column_and_when_it_began(catalog: SchemaCatalog, generator) -> None:  # type: ignore[no-untyped-def]
    windows = {("1", START + i * WINDOW): window(catalog, generator, i, drifted=i >= 7) for i in range(10)}
    [rep] = report.analyse(windows, lambda v: PROFILE, ALPHA, 0.02, 0.001)
    page = report.render("fraud", [rep], [], START, START + 10 * WINDOW, ALPHA)
    summary = re.search(r"<p class=summary>(.*?)</p>", page)
    assert summary is not None and "from 2026-01-01 00:07:00 UTC (window 8 of 10): amount" in summary.group(1)
    rows = re.findall(r"<tr( class=flag)?><td>([a-z_0-9]+)</td><td>(?:ks|chi2|null_rate)</td>", page)
    assert rows[0] == (" class=flag", "amount")  # the drifted column leads the table
    section = page.split('<h3 id="col-amount">')[1].split("<h3")[0]
    assert "since 2026-01-01 00:07:00 UTC" in section and "<svg" in section
    # compared over the 3 drifted windows only: the statistic is the drifted windows', not diluted by 7 calm ones
    since = report.evaluate(PROFILE, report.total([windows[k] for k in sorted(windows)][7:]), ALPHA)
    whole = next(r for r in rep.period if r.column == "amount" and r.statistic == "chi2")
    ks_since = next(r for r in since if r.column == "amount" and r.statistic == "chi2")
    assert ks_since.value > 2 * whole.value
    assert f'data-value="{ks_since.value!r}"' in section
    assert "<h3>Columns without drift (whole period)</h3>" in page
    calm = report.analyse({k: w for k, w in windows.items() if k[1] < START + 7 * WINDOW}, lambda v: PROFILE, 1e-9,
                          0.02, 0.001)
    assert "<b>No column above its threshold</b>" in report.render("fraud", calm, [], START, START, 1e-9)


def test_the_report_has_a_bias_section_per_segment(catalog: SchemaCatalog, generator) -> None:  # type: ignore[no-untyped-def]
    from driftline.detectors.fairness import SegmentCounts

    windows = {}
    for i in range(4):
        w = window(catalog, generator, i, drifted=False)
        values = np.array(["DE"] * 1_500 + ["FR"] * 500, dtype=object)
        declined = np.random.default_rng(i).random(2_000) < np.where(values == "DE", 0.05, 0.2 if i >= 2 else 0.05)
        w.segments = {"country": SegmentCounts.fold(values, declined)}
        windows[("1", w.start_ms)] = w
    [rep] = report.analyse(windows, lambda v: PROFILE, 0.01, 0.02, 0.001)
    page = report.render("fraud", [rep], [], START, START + 4 * WINDOW, 0.01, bias=report.BiasOptions(0.05, 10))
    section = page.split("<h2>Bias audit</h2>")[1].split("<h2>")[0]
    assert "<h3>country <span class=dim>(version 1)</span></h3>" in section
    assert "2 of 4 windows flagged" in section  # the last two decline FR four times as often
    assert re.search(r"<td>DE</td><td class=n>6,000</td>", section)
    assert "<h2>Bias audit</h2>" not in report.render("fraud", report.analyse(
        {k: WindowSketch.from_dict({**w.to_dict(), "segments": {}}) for k, w in windows.items()},
        lambda v: PROFILE, 0.01, 0.02, 0.001), [], START, START, 0.01)
