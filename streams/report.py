"""``driftline report``: one self-contained HTML file per model on the drift of a period.

The data are what the workers already publish: the window sketches on
``{ns}.sketches`` (merged here exactly as the drift agent merges them) and
the alerts on ``{ns}.alerts``; the reference profile comes from the model
version's directory. Nothing is fetched by the page: the charts are inline
SVG and there is no script.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import numpy as np

from detectors.evaluate import ColumnResult, bin_labels, dead_letter_result, evaluate
from detectors.profile import CategoricalReference, NumericReference, ReferenceProfile
from detectors.sketch import ColumnSketch, WindowSketch
from streams.alerts import millis
from streams.drift import column_label
from streams.errors import ConfigError

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_window(text: str) -> int:
    """'90s', '15m', '1h', '2d' → milliseconds."""
    m = _DURATION.match(text.strip())
    if m is None:
        raise ConfigError(f"--window {text!r}: give a duration such as 30m, 1h or 2d")
    return int(float(m.group(1)) * _UNIT_S[m.group(2)] * 1000)


def merge_windows(sketches: Iterable[WindowSketch], model: str, since_ms: int, until_ms: int
                  ) -> dict[tuple[str, int], WindowSketch]:
    """The model's windows that started in [since, until), each merged over its workers, by (version, start)."""
    out: dict[tuple[str, int], WindowSketch] = {}
    for s in sketches:
        if s.model != model or not since_ms <= s.start_ms < until_ms:
            continue
        key = (s.version, s.start_ms)
        if key in out:
            merged = out[key] + s
            merged.end_ms = max(out[key].end_ms, s.end_ms)
            out[key] = merged
        else:
            out[key] = s
    return out


def total(windows: list[WindowSketch]) -> WindowSketch:
    """All windows of one version summed into one sketch of the period."""
    first = windows[0]
    acc = WindowSketch(first.model, first.version, first.start_ms, first.end_ms, dict(first.columns), first.score,
                       first.messages, first.dead_letters, first.contributors)
    for w in windows[1:]:
        acc.columns = {k: v + w.columns[k] for k, v in acc.columns.items()}
        acc.score = acc.score + w.score
        acc.messages += w.messages
        acc.dead_letters += w.dead_letters
        acc.contributors = acc.contributors | w.contributors
        acc.end_ms = max(acc.end_ms, w.end_ms)
    return acc


@dataclass(frozen=True, slots=True)
class VersionReport:
    version: str
    profile: ReferenceProfile
    windows: list[WindowSketch]
    period: list[ColumnResult]  # over the whole period
    per_window: list[list[ColumnResult]]


def analyse(windows: Mapping[tuple[str, int], WindowSketch], profile_of: Callable[[str], ReferenceProfile | None],
            alpha: float, expected_dead_letter_rate: float) -> list[VersionReport]:
    out = []
    for version in sorted({v for v, _ in windows}):
        profile = profile_of(version)
        if profile is None:
            continue
        ws = [windows[k] for k in sorted(windows) if k[0] == version]

        def results(s: WindowSketch, profile: ReferenceProfile = profile) -> list[ColumnResult]:
            r = evaluate(profile, s, alpha)
            dead = dead_letter_result(s, expected_dead_letter_rate, alpha)
            return r + ([dead] if dead is not None else [])

        out.append(VersionReport(version, profile, ws, results(total(ws)), [results(w) for w in ws]))
    return out


def _ts(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _bars(labels: list[str], ref: np.ndarray, cur: np.ndarray) -> str:
    """Reference vs current shares per bin as an inline SVG bar chart."""
    p = ref / max(ref.sum(), 1)
    q = cur / max(cur.sum(), 1)
    top = max(float(p.max(initial=0)), float(q.max(initial=0)), 1e-9)
    bw, h, gap = 26, 110, 6
    width = len(labels) * (2 * bw + gap) + 10
    parts = [f'<svg viewBox="0 0 {width} {h + 70}" width="{width}" height="{h + 70}" role="img">']
    for i, label in enumerate(labels):
        x = 5 + i * (2 * bw + gap)
        for j, (share, colour) in enumerate(((p[i], "#8a96a3"), (q[i], "#2f81f7"))):
            bar = share / top * h
            parts.append(f'<rect x="{x + j * bw}" y="{h - bar:.1f}" width="{bw - 2}" height="{bar:.1f}" '
                         f'fill="{colour}"><title>{html.escape(label)}: '
                         f'{"reference" if j == 0 else "current"} {share:.2%}</title></rect>')
        parts.append(f'<text x="{x}" y="{h + 12}" font-size="9" transform="rotate(35 {x} {h + 12})">'
                     f"{html.escape(label[:18])}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _column(profile: ReferenceProfile, sketch: WindowSketch, name: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    ref: NumericReference | CategoricalReference
    col: ColumnSketch
    if name == "score":
        ref, col = profile.score, sketch.score
    else:
        ref = next(f for f in profile.features if f.name == name)
        col = sketch.columns[name]
    return bin_labels(ref), np.asarray(ref.counts), np.asarray(col.counts)


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#1f2328;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #d0d7de}
h3{font-size:1em;margin:1.4em 0 .3em}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #d0d7de;padding:.2em .5em;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.flag{background:#ffebe9}.dim{color:#656d76}.critical{color:#cf222e}.warning{color:#9a6700}
.legend span{display:inline-block;width:.9em;height:.9em;margin:0 .3em 0 1em;vertical-align:middle}
"""


def render(model: str, reports: list[VersionReport], alerts: list[dict[str, Any]], since_ms: int, until_ms: int,
           alpha: float) -> str:
    e = html.escape
    out = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>driftline report: {e(model)}</title>"
           f"<style>{_CSS}</style></head><body>",
           f"<h1>Drift report: {e(model)}</h1>",
           f"<p class=dim>{_ts(since_ms)} to {_ts(until_ms)} · false-alarm rate per column and window "
           f"{alpha:g} · generated {_ts(int(datetime.now(UTC).timestamp() * 1000))}</p>"]
    if not reports:
        out.append("<p>No drift window of this model closed in the period (or no reference profile).</p>")
    for rep in reports:
        profile = rep.profile
        n_msgs = sum(w.messages for w in rep.windows)
        out.append(f"<h2>Version {e(rep.version)}</h2><p>{len(rep.windows)} windows, {n_msgs:,} requests "
                   f"({sum(w.dead_letters for w in rep.windows):,} dead letters).</p>")
        flagged = {(i, r.column, r.statistic) for i, rs in enumerate(rep.per_window) for r in rs if r.p_value < alpha}
        out.append("<h3>Windows above the threshold</h3><table><tr><th>column</th><th>test</th>"
                   "<th class=n>windows flagged</th><th class=n>of</th></tr>")
        for r in rep.period:
            k = sum(1 for i in range(len(rep.windows)) if (i, r.column, r.statistic) in flagged)
            out.append(f"<tr{' class=flag' if k else ''}><td>{e(column_label(r.column))}</td><td>{e(r.statistic)}"
                       f"</td><td class=n>{k}</td><td class=n>{len(rep.windows)}</td></tr>")
        out.append("</table>")
        out.append('<p class="legend">Over the whole period:<span style="background:#8a96a3"></span>reference'
                   '<span style="background:#2f81f7"></span>current</p>')
        for r in rep.period:
            name = column_label(r.column)
            out.append(f'<h3 id="col-{e(name)}">{e(name)} <span class=dim>({e(r.kind)})</span></h3>')
            out.append(
                f"<table><tr><th>statistic</th><th class=n>value</th><th class=n>threshold</th><th class=n>p</th>"
                f"<th class=n>PSI</th><th class=n>PSI chance level</th><th class=n>n</th></tr>"
                f"<tr{' class=flag' if r.p_value < alpha else ''}><td>{e(r.statistic)}</td>"
                f'<td class=n data-value="{r.value!r}">{r.value:.4g}</td><td class=n>{r.threshold:.4g}</td>'
                f"<td class=n>{r.p_value:.3g}</td><td class=n>{r.psi:.4g}</td><td class=n>{r.psi_threshold:.4g}</td>"
                f"<td class=n>{r.n:,}</td></tr></table>")
            if r.statistic in ("ks", "chi2"):
                labels, ref, cur = _column(profile, total(rep.windows), name)
                out.append(_bars(labels, ref, cur))
    out.append("<h2>Alerts of the period</h2>")
    if alerts:
        out.append("<table><tr><th>time</th><th>severity</th><th>kind</th><th>version</th><th>message</th></tr>")
        for a in sorted(alerts, key=lambda a: a["created_at"]):
            out.append(f"<tr class={e(a['severity'])}><td>{_ts(a['created_at'])}</td><td>{e(a['severity'])}</td>"
                       f"<td>{e(a['kind'])}</td><td>{e(a['model_version'])}</td><td>{e(a['message'])}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p>None.</p>")
    out.append("</body></html>")
    return "\n".join(out)


def sketches_from(values: Iterable[bytes | None]) -> list[WindowSketch]:
    out = []
    for v in values:
        if v is None:
            continue
        try:
            out.append(WindowSketch.from_dict(json.loads(v)))
        except (ValueError, KeyError, TypeError):
            continue  # the drift agent ignores these too
    return out


def write_reports(settings: Any, models: list[str], window_ms: int, out_dir: Any, now_ms: int) -> list[Any]:
    """Read the sketches and alerts topics once and write ``driftline-report-<model>.html`` per model."""
    from pathlib import Path

    from inference.registry import ModelRegistry
    from schemas.codec import decode
    from streams.kafka import iter_topic
    from streams.profiling import ProfileStore
    from streams.worker import build_catalog

    conf = settings.confluent(**{"log_level": 0})
    since_ms, until_ms = now_ms - window_ms, now_ms
    sketches = sketches_from(m.value() for m in iter_topic(conf, settings.topic("sketches")))
    catalog = build_catalog(settings)
    alerts = []
    for m in iter_topic(conf, settings.topic("alerts")):
        try:
            _, rec = decode(catalog, m.value() or b"")
        except Exception:  # noqa: BLE001, S112 - a foreign record on the alerts topic is not ours to report
            continue
        alerts.append({**rec, "created_at": millis(rec["created_at"])})
    profiles = ProfileStore(ModelRegistry(settings.model_dir))
    written = []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for model in models:
        windows = merge_windows(sketches, model, since_ms, until_ms)
        reports = analyse(windows, partial(profiles.get, model), settings.drift_alpha,
                          settings.expected_dead_letter_rate)
        mine = [a for a in alerts if a["model"] == model and since_ms <= a["created_at"] < until_ms]
        path = out / f"driftline-report-{model}.html"
        path.write_text(render(model, reports, mine, since_ms, until_ms, settings.drift_alpha))
        written.append(path)
    return written
