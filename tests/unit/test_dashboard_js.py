"""The dashboard's own JavaScript, run by Node.js: recent latency, escaping, the heat map's axis, legend, switches.

The page is one file with no library; its functions are pure given their
inputs (the DOM element is the only thing stubbed here). Chromium renders
the page against a live worker in tests/integration/test_observability.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[2] / "streams" / "app" / "static" / "dashboard.html"


def run_js(test: str) -> dict:
    node = shutil.which("node")
    assert node, "Node.js is needed for this test (it runs the dashboard's script)"
    script = re.search(r"<script>(.*)</script>", PAGE.read_text(), re.S)
    assert script is not None
    done = subprocess.run([node, "-e", script.group(1) + "\n;" + test], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_latency_tiles_read_the_last_minute_not_the_time_since_start() -> None:
    got = run_js("""
      const h = [];
      // 1,000 requests at 8 s long ago (a cold start), then 2,000 at 20 ms in the last minute
      const snap = (t, slow, fast) => ({t, buckets: {"0.025": fast, "0.05": fast, "10": fast + slow,
                                                     "Infinity": fast + slow}});
      h.push(snap(0, 1000, 0)); h.push(snap(100, 1000, 0));
      h.push(snap(130, 1000, 1000)); h.push(snap(160, 1000, 2000));
      const recent = recentBuckets(h, 160, 60);
      const since = quantileOf(h[h.length - 1].buckets, 0.99);
      console.log(JSON.stringify({p99: quantileOf(recent, 0.99), since, kept: h.length,
                                  none: recentBuckets([snap(0, 1, 1)], 0, 60),
                                  reset: recentBuckets([snap(0, 5, 5), snap(1, 0, 1)], 1, 60)}));
    """)
    assert got["p99"] < 0.025 and got["since"] > 5  # since start the slow burst dominates p99
    assert got["kept"] == 3  # the snapshot at the window's start is the baseline; older ones are dropped
    assert got["none"] is None and got["reset"] is None  # one poll, or counters reset by a restart: no number


def heat(windows: list[dict]) -> str:
    return run_js(f"""
      const el = {{attrs: {{}}, innerHTML: "", setAttribute(k, v) {{ this.attrs[k] = v; }}}};
      globalThis.document = {{getElementById: () => el}};
      renderHeat({json.dumps(windows)});
      console.log(JSON.stringify({{html: el.innerHTML}}));
    """)["html"]


def window(start: int, version: str, feature: str, p: float) -> dict:
    return {"model": "fraud", "version": version, "start": start, "end": start + 10_000, "messages": 100,
            "columns": [{"feature": feature, "kind": "data_drift", "statistic": "ks", "value": 0.1,
                         "threshold": 0.2 if p > 0.01 else 0.05, "p_value": p, "psi": 0.0, "n": 100}]}


def test_the_heat_map_has_a_time_axis_a_legend_and_marks_a_version_switch() -> None:
    start = 1_767_225_600_000
    html = heat([window(start + i * 10_000, "1" if i < 12 else "2", "amount", 0.5 if i < 12 else 1e-6)
                 for i in range(20)])
    assert html.count('class="cell"') == 20
    assert html.count('class="time"') == 4  # windows 0, 8, 16 and the last
    assert html.count('<line class="switch"') == 1 and ">fraud v2</text>" in html
    assert html.count('class="legend"') == 6 and "−log10 p" in html and "above the threshold" in html
    assert html.count('stroke="#f85149" stroke-width="2">') == 8  # the flagged windows after the switch


def test_a_column_with_several_tests_is_one_cell_coloured_by_the_most_significant() -> None:
    w = window(1_767_225_600_000, "1", "amount", 0.5)
    w["columns"] += [{**w["columns"][0], "kind": "data_quality", "statistic": "out_of_range_rate", "value": 0.03,
                      "threshold": 0.01, "p_value": 1e-8},
                     {**w["columns"][0], "kind": "data_quality", "statistic": "null_rate", "p_value": 0.9}]
    html = heat([w])
    assert html.count('class="cell"') == 1
    assert 'stroke="#f85149" stroke-width="2">' in html  # flagged: the out-of-range share crossed its threshold
    assert "out_of_range_rate 0.03000" in html and "null_rate" in html and "ks 0.1000" in html
    calm = heat([window(1_767_225_600_000, "1", "amount", 0.5)])
    def colour(page: str) -> str:
        return page.split('class="cell"')[1].split('fill="')[1].split('"')[0]

    assert colour(calm) != colour(html)  # coloured by p = 1e-8, not by the calm tests


@pytest.mark.parametrize("name", ['<img src=x onerror="alert(1)">', "</title><script>alert(1)</script>"])
def test_names_from_manifests_are_escaped(name: str) -> None:
    html = heat([window(1_767_225_600_000, "1", name, 0.5)])
    assert "<img" not in html and "<script" not in html
    assert "&lt;" in html


def quality_rows(samples: list[dict]) -> list[list[str]]:
    """The quality table's cells after renderQuality, with a DOM stub of elements that hold text and children."""
    return run_js(f"""
      const make = () => ({{children: [], dataset: {{}}, textContent: "", className: "",
                           append(...c) {{ this.children.push(...c); }},
                           replaceChildren(...c) {{ this.children = c; }}}});
      const table = make();
      globalThis.document = {{getElementById: () => table, createElement: make}};
      renderQuality({json.dumps(samples)});
      console.log(JSON.stringify({{rows: table.children.map(tr => tr.children.map(td => td.textContent))}}));
    """)["rows"]


def sample(name: str, model: str, value: float, metric: str | None = None) -> dict:
    labels = {"model": model, "version": "1", "variant": "champion"}
    return {"name": name, "labels": {**labels, "metric": metric} if metric else labels, "value": value}


def test_the_quality_table_shows_a_regressors_mae_and_rmse_with_their_label_free_estimates() -> None:
    rows = quality_rows([
        sample("driftline_model_info", "housing", 1), sample("driftline_model_info", "fraud", 1),
        sample("driftline_quality", "housing", 0.84, "mae"), sample("driftline_quality", "housing", 1.15, "rmse"),
        sample("driftline_quality_estimate", "housing", 1.16, "mae"),
        sample("driftline_quality_estimate", "housing", 1.49, "rmse"),
        sample("driftline_quality", "fraud", 0.97, "accuracy"),
        sample("driftline_quality_estimate", "fraud", 0.95, "accuracy"),
    ])
    assert rows[0] == ["housing", "1", "champion", "–", "–", "–", "–", "0.84 (1.16)", "1.15 (1.49)"]
    assert rows[1][:4] == ["fraud", "1", "champion", "0.97 (0.95)"] and rows[1][7:] == ["–", "–"]


def test_importance_rows_rank_features_with_their_shares_and_the_shift() -> None:
    metrics = "\n".join([
        'driftline_explain_importance{model="fraud",version="1",feature="amount"} 0.6',
        'driftline_explain_importance{model="fraud",version="1",feature="channel"} 0.2',
        'driftline_explain_importance{model="fraud",version="1",feature="hour_of_day"} 1.2',
        'driftline_explain_importance_shift{model="fraud",version="1"} 0.25',
        'driftline_explain_importance_rank_correlation{model="fraud",version="1"} 0.5',
        'driftline_explanations_total{model="fraud"} 42.0',
    ])
    got = run_js(f"console.log(JSON.stringify(importanceRows(parseMetrics({json.dumps(metrics)}))));")
    assert len(got) == 1 and got[0]["model"] == "fraud" and got[0]["explained"] == 42
    assert [f["feature"] for f in got[0]["features"]] == ["hour_of_day", "amount", "channel"]
    assert [round(f["share"], 3) for f in got[0]["features"]] == [0.6, 0.3, 0.1]
    assert got[0]["shift"] == 0.25 and got[0]["rho"] == 0.5
    assert run_js("console.log(JSON.stringify(importanceRows([])));") == []
