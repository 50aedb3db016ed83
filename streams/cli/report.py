"""``driftline report``: one self-contained HTML file per model on the drift of a period.

The data are what the workers already publish: the window sketches on
``{ns}.sketches`` (merged here exactly as the drift agent merges them) and
the alerts on ``{ns}.alerts``; the reference profile comes from the model
version's directory. Nothing is fetched by the page: the charts are inline
SVG and there is no script.

Both topics are shared with whoever can write to them, so every record is
parsed as the drift agent parses it (:mod:`driftline.streams.core.poison`): one that does
not parse, or does not fit its version's reference profile, is skipped,
logged once with its position and counted in the report.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

import numpy as np

from driftline.detectors.evaluate import ColumnResult, bias_results, bin_labels, evaluate, window_results
from driftline.detectors.fairness import OTHER, disparities, group_rates
from driftline.detectors.importance import ImportanceWindow, importance_shift, rank_correlation, shares
from driftline.detectors.multivariate import MULTIVARIATE
from driftline.detectors.profile import CategoricalReference, NumericReference, ReferenceProfile
from driftline.detectors.sketch import ColumnSketch, WindowSketch, merge_segments
from driftline.schemas.catalog import SchemaCatalog
from driftline.streams.core.drift import column_label, fits_profile, sketch_from_dict
from driftline.streams.core.events import Alert, read_alert
from driftline.streams.core.poison import BadRecord, Skip, SkipLog, load_json
from driftline.streams.core.quality import is_label_batch
from driftline.streams.errors import ConfigError

log = logging.getLogger(__name__)

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
            have = out[key]  # as the drift agent merges: the windows of two workers may end apart
            merged = have + replace(s, end_ms=have.end_ms)
            merged.end_ms = max(have.end_ms, s.end_ms)
            out[key] = merged
        else:
            out[key] = s
    return out


def total(windows: list[WindowSketch]) -> WindowSketch:
    """All windows of one version summed into one sketch of the period."""
    first = windows[0]
    acc = WindowSketch(first.model, first.version, first.start_ms, first.end_ms, dict(first.columns), first.score,
                       first.messages, first.dead_letters, first.contributors, segments=dict(first.segments))
    for w in windows[1:]:
        acc.columns = {k: v + w.columns[k] for k, v in acc.columns.items()}
        acc.score = acc.score + w.score
        acc.messages += w.messages
        acc.dead_letters += w.dead_letters
        acc.contributors = acc.contributors | w.contributors
        acc.segments = merge_segments(acc.segments, w.segments)
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
            alpha: float, expected_dead_letter_rate: float, expected_duplicate_rate: float) -> list[VersionReport]:
    out = []
    for version in sorted({v for v, _ in windows}):
        profile = profile_of(version)
        if profile is None:
            continue
        ws = [windows[k] for k in sorted(windows) if k[0] == version]

        def results(s: WindowSketch, profile: ReferenceProfile = profile) -> list[ColumnResult]:
            return window_results(profile, s, alpha, expected_dead_letter_rate, expected_duplicate_rate)

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
    elif name == "multivariate" and profile.multivariate is not None:
        ref, col = profile.multivariate.errors, sketch.columns[MULTIVARIATE]
    else:
        ref = next(f for f in profile.features if f.name == name)
        col = sketch.columns[name]
    return bin_labels(ref, hidden=name in profile.personal), np.asarray(ref.counts), np.asarray(col.counts)


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#1f2328;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #d0d7de}
h3{font-size:1em;margin:1.4em 0 .3em}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #d0d7de;padding:.2em .5em;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.flag{background:#ffebe9}.dim{color:#656d76}.critical{color:#cf222e}.warning{color:#9a6700}
.legend span{display:inline-block;width:.9em;height:.9em;margin:0 .3em 0 1em;vertical-align:middle}
"""


def _version_section(rep: VersionReport, alpha: float) -> list[str]:
    """One version: a one-line verdict, the flagged columns first with when each began, their charts since then.

    Columns are ordered by how many windows flagged them, then by when the
    first did (schema order hid the one that mattered in a 36-row table);
    a drifted column is compared with its reference over the windows since
    its first flag, so drift that began late in the period is not diluted
    by the calm before it. Columns without drift share one compact table.
    """
    e = html.escape
    out: list[str] = []
    n_msgs = sum(w.messages for w in rep.windows)
    first: dict[tuple[str, str], int] = {}
    count: dict[tuple[str, str], int] = {}
    for i, rs in enumerate(rep.per_window):
        for r in rs:
            if r.p_value < alpha:
                key = (r.column, r.statistic)
                first.setdefault(key, i)
                count[key] = count.get(key, 0) + 1
    order = sorted(rep.period, key=lambda r: (-count.get((r.column, r.statistic), 0),
                                              first.get((r.column, r.statistic), len(rep.windows)),
                                              column_label(r.column)))
    drifted = [r for r in order if count.get((r.column, r.statistic))]
    calm = [r for r in order if not count.get((r.column, r.statistic))]
    out.append(f"<h2>Version {e(rep.version)}</h2><p>{len(rep.windows)} windows, {n_msgs:,} requests "
               f"({sum(w.dead_letters for w in rep.windows):,} dead letters).</p>")
    if drifted:
        began = min(first[(r.column, r.statistic)] for r in drifted)
        names = ", ".join(e(column_label(r.column)) for r in drifted[:5]) + (" …" if len(drifted) > 5 else "")
        out.append(f"<p class=summary><b>{len(drifted)} of {len(order)} columns above their threshold</b> in at "
                   f"least one window, the first from {_ts(rep.windows[began].start_ms)} (window {began + 1} of "
                   f"{len(rep.windows)}): {names}.</p>")
    else:
        out.append(f"<p class=summary><b>No column above its threshold</b> in any of the {len(rep.windows)} "
                   f"windows (false-alarm rate {alpha:g} per column and window).</p>")
    out.append("<h3>Windows above the threshold</h3><table><tr><th>column</th><th>test</th>"
               "<th class=n>windows flagged</th><th class=n>of</th><th>first flagged</th></tr>")
    for r in order:
        key = (r.column, r.statistic)
        k = count.get(key, 0)
        when = _ts(rep.windows[first[key]].start_ms) if k else "–"
        out.append(f"<tr{' class=flag' if k else ''}><td>{e(column_label(r.column))}</td><td>{e(r.statistic)}"
                   f"</td><td class=n>{k}</td><td class=n>{len(rep.windows)}</td><td>{when}</td></tr>")
    out.append("</table>")
    if drifted:
        out.append('<p class="legend">Since each column was first flagged:<span style="background:#8a96a3"></span>'
                   'reference<span style="background:#2f81f7"></span>current</p>')
    for r in drifted:
        start = first[(r.column, r.statistic)]
        since = total(rep.windows[start:])
        same = (r.column, r.statistic)
        now = next((x for x in evaluate(rep.profile, since, alpha) if (x.column, x.statistic) == same), r)
        name = column_label(r.column)
        out.append(f'<h3 id="col-{e(name)}">{e(name)} <span class=dim>({e(r.kind)}, since '
                   f"{_ts(rep.windows[start].start_ms)})</span></h3>")
        out.append(_stat_table([now], alpha))
        if now.statistic in ("ks", "chi2"):
            labels, ref, cur = _column(rep.profile, since, name)
            out.append(_bars(labels, ref, cur))
    if calm:
        out.append("<h3>Columns without drift (whole period)</h3>")
        out.append(_stat_table(calm, alpha, named=True))
    return out


def _stat_table(results: list[ColumnResult], alpha: float, named: bool = False) -> str:
    e = html.escape
    rows = [f"<table><tr>{'<th>column</th>' if named else ''}<th>statistic</th><th class=n>value</th>"
            "<th class=n>threshold</th><th class=n>p</th><th class=n>PSI</th><th class=n>PSI chance level</th>"
            "<th class=n>n</th></tr>"]
    for r in results:
        rows.append(f"<tr{' class=flag' if r.p_value < alpha else ''}>"
                    f"{f'<td>{e(column_label(r.column))}</td>' if named else ''}<td>{e(r.statistic)}</td>"
                    f'<td class=n data-value="{r.value!r}">{r.value:.4g}</td><td class=n>{r.threshold:.4g}</td>'
                    f"<td class=n>{r.p_value:.3g}</td><td class=n>{r.psi:.4g}</td>"
                    f"<td class=n>{r.psi_threshold:.4g}</td><td class=n>{r.n:,}</td></tr>")
    rows.append("</table>")
    return "".join(rows)


def _impact_section(alerts: list[Alert]) -> list[str]:
    """Per window with data-drift alerts, its drifted features in the order of their effect on the score."""
    e = html.escape
    windows: dict[tuple[str, int], list[Alert]] = {}
    for a in alerts:
        if a.kind == "data_drift" and a.feature is not None and a.impact_rank is not None:
            windows.setdefault((a.model_version, a.window_start), []).append(a)
    if not windows:
        return []
    out = ["<h2>Which drift matters</h2><p class=dim>Each window's alerted features, the one with the largest "
           "estimated effect on the model's score first (W1: how far the score distribution moves when that "
           "feature alone moves from its reference to the window, on the profile's reference rows).</p>",
           "<table><tr><th>window</th><th>version</th><th>drifted features by effect on the score</th></tr>"]
    for (version, start), group in sorted(windows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        group.sort(key=lambda a: (a.impact_rank or 0, a.feature or ""))
        of = max(a.drifted_features or 0 for a in group)
        names = ", ".join(f"{a.impact_rank}. {e(a.feature or '')} "
                          f"({'W1 ' + format(a.impact, '.3g') if a.impact is not None else 'by PSI'})" for a in group)
        out.append(f"<tr><td>{_ts(start)}</td><td>{e(version)}</td><td>{names} <span class=dim>(of {of} drifted)"
                   "</span></td></tr>")
    out.append("</table>")
    return out


@dataclass(frozen=True, slots=True)
class ImportanceReport:
    """One version's global importance in the period: the reference rows' own, then each window's."""

    version: str
    features: tuple[str, ...]
    reference: np.ndarray | None  # mean |attribution| of the background explained against itself
    windows: list[tuple[int, ImportanceWindow]]  # (start, sums), by start


def importance_windows(explanations: Iterable[Mapping[str, Any]], model: str, since_ms: int, until_ms: int,
                       window_ms: int) -> dict[str, list[tuple[int, ImportanceWindow]]]:
    """The model's explanations of the period summed per version and window of their event time."""
    out: dict[str, dict[int, ImportanceWindow]] = {}
    for e in explanations:
        at = int(e["event_time"])
        if e["model"] != model or not since_ms <= at < until_ms:
            continue
        start = at // window_ms * window_ms
        windows = out.setdefault(str(e["model_version"]), {})
        w = windows.get(start)
        if w is None or w.features != tuple(e["features"]):
            w = windows[start] = ImportanceWindow.empty(e["features"])
        w.add(np.asarray([e["attributions"]], dtype=np.float64))
    return {v: sorted(ws.items()) for v, ws in out.items()}


def _importance_section(reports: list[ImportanceReport]) -> list[str]:
    """Per version, mean |attribution| per feature per window beside the reference's, and the shift of the shares."""
    e = html.escape
    if not reports:
        return []
    out = ["<h2>What the model leans on (explanations)</h2><p class=dim>Mean |attribution| per feature over the "
           "requests explained in each window (log-odds for classifiers), the features in the order of the "
           "reference rows' own importance (the version's background explained against itself). <b>shift</b>: "
           "the share of importance that moved between features against the reference (total variation "
           "distance of the shares, 0 to 1); <b>ρ</b>: Spearman correlation of the two orders (1: unchanged). "
           "A cell's shade is the feature's share of its row.</p>"]
    for rep in reports:
        order = (np.argsort(-rep.reference, kind="stable") if rep.reference is not None
                 else np.arange(len(rep.features)))
        names = [rep.features[i] for i in order]
        out.append(f"<h3>version {e(rep.version)}</h3><table><tr><th>window</th><th>requests</th><th>shift</th>"
                   "<th>ρ</th>" + "".join(f"<th>{e(n)}</th>" for n in names) + "</tr>")
        rows: list[tuple[str, str, np.ndarray, str, str]] = []
        if rep.reference is not None:
            rows.append(("reference rows", "", rep.reference, "", ""))
        for start, w in rep.windows:
            mean = w.mean_abs
            shift = "" if rep.reference is None else f"{importance_shift(rep.reference, mean):.3f}"
            rho = "" if rep.reference is None else f"{rank_correlation(rep.reference, mean):.2f}"
            rows.append((_ts(start), f"{w.n:,}", mean, shift, rho))
        for label, n, mean, shift, rho in rows:
            share = shares(mean)
            cells = "".join(f"<td class=n style=\"background:rgba(9,105,218,{0.6 * share[i]:.2f})\">"
                            f"{mean[i]:.3g}</td>" for i in order)
            out.append(f"<tr><td>{e(label)}</td><td class=n>{n}</td><td class=n>{shift}</td><td class=n>{rho}</td>"
                       f"{cells}</tr>")
        out.append("</table>")
    return out


@dataclass(frozen=True, slots=True)
class BiasOptions:
    """The bias audit's settings the report applies as the drift agent does."""

    bound: float = 0.1  # bias_max_difference
    max_values: int = 10  # bias_max_values


def _bias_section(reports: list[VersionReport], alpha: float, options: BiasOptions) -> list[str]:
    """Per version and segment field: each value's requests and positive-decision rate over the period, the
    disparities, and how many windows were flagged (spread beyond the bound and significant)."""
    e = html.escape
    out: list[str] = []
    for rep in reports:
        period = total(rep.windows)
        for name, raw in sorted(period.segments.items()):
            counts = raw.capped(options.max_values)
            d = disparities(counts)
            flagged = sum(1 for w in rep.windows for r in bias_results(w.segments, options.bound, options.max_values)
                          if r.column == name and r.value > r.threshold and r.p_value < alpha)
            whole = bias_results({name: raw}, options.bound, options.max_values)
            p = f"{whole[0].p_value:.3g}" if whole else "–"
            out.append(f"<h3>{e(name)} <span class=dim>(version {e(rep.version)})</span></h3>"
                       f"<p>Demographic-parity difference {d.demographic_parity_difference:.3f} (bound "
                       f"{options.bound:g}, p {p} over the period), ratio {d.demographic_parity_ratio:.3f}; "
                       f"{flagged} of {len(rep.windows)} windows flagged.</p>")
            out.append("<table><tr><th>value</th><th class=n>requests</th><th class=n>positive decisions</th></tr>")
            for g in sorted(group_rates(counts), key=lambda g: (g.value == OTHER, -g.requests)):
                out.append(f"<tr><td>{e(g.value)}</td><td class=n>{g.requests:,}</td>"
                           f"<td class=n>{g.positive_rate:.2%}</td></tr>")
            out.append("</table>")
    if not out:
        return []
    return ["<h2>Bias audit</h2><p class=dim>Positive decisions (score at or above the manifest's threshold) per "
            "value of the manifest's segments; a window is flagged when the spread of the rates passes the bound "
            "and Fisher's test (Bonferroni over the values) is significant. The figures describe the model's "
            "decisions, not their causes.</p>", *out]


def render(model: str, reports: list[VersionReport], alerts: list[Alert], since_ms: int, until_ms: int,
           alpha: float, skipped: int = 0, importance: list[ImportanceReport] | None = None,
           bias: BiasOptions | None = None) -> str:
    """The report page; ``skipped``: records of the sketches and alerts topics left out because they do not parse."""
    e = html.escape
    out = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>driftline report: {e(model)}</title>"
           f"<style>{_CSS}</style></head><body>",
           f"<h1>Drift report: {e(model)}</h1>",
           f"<p class=dim>{_ts(since_ms)} to {_ts(until_ms)} · false-alarm rate per column and window "
           f"{alpha:g} · generated {_ts(int(datetime.now(UTC).timestamp() * 1000))}</p>"]
    if skipped:
        out.append(f"<p class=warning>Skipped {skipped:,} records of the sketches and alerts topics that do not "
                   "parse (or do not fit their version's reference profile); the command's log says where.</p>")
    if not reports:
        out.append("<p>No drift window of this model closed in the period (or no reference profile).</p>")
    for rep in reports:
        out.extend(_version_section(rep, alpha))
    out.extend(_impact_section(alerts))
    out.extend(_importance_section(importance or []))
    out.extend(_bias_section(reports, alpha, bias or BiasOptions()))
    out.append("<h2>Alerts of the period</h2>")
    if alerts:
        out.append("<table><tr><th>time</th><th>severity</th><th>kind</th><th>version</th><th>message</th></tr>")
        for a in sorted(alerts, key=lambda a: (a.created_at, a.window_start, a.impact_rank or 0)):
            out.append(f"<tr class=\"{e(a.severity)}\"><td>{_ts(a.created_at)}</td><td>{e(a.severity)}</td>"
                       f"<td>{e(a.kind)}</td><td>{e(a.model_version)}</td><td>{e(a.message)}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p>None.</p>")
    out.append("</body></html>")
    return "\n".join(out)


def read_sketch(value: bytes | None) -> WindowSketch | Skip | None:
    """A record of ``{ns}.sketches`` checked field by field, as the drift agent reads it, or why not; never raises.

    None for a label batch (the quality monitor's record on the same topic): not a window, not garbage either.
    """
    try:
        data = load_json(value)
        return None if is_label_batch(data) else sketch_from_dict(data)
    except BadRecord as exc:
        return exc.skip()


def fitting(sketch: WindowSketch, profile_of: Callable[[str, str], ReferenceProfile | None]) -> WindowSketch | Skip:
    """``sketch`` if its columns have the shape of its version's reference profile (so it merges), else why not."""
    profile = profile_of(sketch.model, sketch.version)
    if profile is None:
        return Skip("unknown_model", f"no reference profile for model {sketch.model!r} v{sketch.version!r} "
                                     "in this registry")
    try:
        fits_profile(sketch, profile)
    except BadRecord as exc:
        return exc.skip()
    return sketch


def _skip(skips: SkipLog, msg: Any, why: Skip) -> None:
    skips.skip(str(msg.topic()), msg.partition(), msg.offset(), msg.key(), why)


def read_sketches(messages: Iterable[Any], models: Collection[str], since_ms: int, until_ms: int,
                  profile_of: Callable[[str, str], ReferenceProfile | None], skips: SkipLog) -> list[WindowSketch]:
    """The sketches of ``models`` whose window started in [since, until), each fitting its profile.

    A record that does not parse, or a sketch of the period that does not
    fit its version's profile (it would not merge), goes to ``skips``;
    sketches of other models or periods are not looked at further.
    """
    out = []
    for msg in messages:
        got = read_sketch(msg.value())
        if got is None:
            continue
        if not isinstance(got, Skip):
            if got.model not in models or not since_ms <= got.start_ms < until_ms:
                continue
            got = fitting(got, profile_of)
        if isinstance(got, Skip):
            _skip(skips, msg, got)
        else:
            out.append(got)
    return out


def read_alerts(messages: Iterable[Any], catalog: SchemaCatalog, skips: SkipLog) -> list[Alert]:
    """Every alert of ``messages``; the other records go to ``skips``."""
    out = []
    for msg in messages:
        got = read_alert(catalog, msg.value())
        if isinstance(got, Skip):
            _skip(skips, msg, got)
        else:
            out.append(got)
    return out


def skipped_count(skips: SkipLog) -> int:
    """How many records ``skips`` has taken since the last call (each record once)."""
    counts, _ = skips.drain()
    return sum(counts.values())


def write_reports(settings: Any, models: list[str], window_ms: int, out_dir: Any, now_ms: int) -> list[Any]:
    """Read the sketches and alerts topics once and write ``driftline-report-<model>.html`` per model.

    Records that do not parse are skipped (each logged once with its
    position); their number is logged and written into every report.
    """
    from pathlib import Path

    from driftline.inference.registry import ModelRegistry
    from driftline.streams.catalog import build_catalog
    from driftline.streams.core.profiling import ProfileStore
    from driftline.streams.kafka.topics import iter_topic

    conf = settings.confluent(**{"log_level": 0})
    since_ms, until_ms = now_ms - window_ms, now_ms
    catalog = build_catalog(settings)
    profiles = ProfileStore(ModelRegistry(settings.model_dir), catalog)
    skips = SkipLog(log)
    sketches = read_sketches(iter_topic(conf, settings.topic("sketches")), set(models), since_ms, until_ms,
                             profiles.get, skips)
    alerts = read_alerts(iter_topic(conf, settings.topic("alerts")), catalog, skips)
    explanations = read_explanations(conf, settings.topic("explanations"), catalog)
    skipped = skipped_count(skips)
    if skipped:
        log.warning("skipped %d records that do not parse on %s and %s (or do not fit their reference profile)",
                    skipped, settings.topic("sketches"), settings.topic("alerts"))
    written = []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for model in models:
        windows = merge_windows(sketches, model, since_ms, until_ms)
        reports = analyse(windows, partial(profiles.get, model), settings.drift_alpha,
                          settings.expected_dead_letter_rate, settings.expected_duplicate_rate)
        mine = [a for a in alerts if a.model == model and since_ms <= a.created_at < until_ms]
        importance = importance_reports(settings, catalog, model, importance_windows(
            explanations, model, since_ms, until_ms, int(settings.window_s * 1000)))
        path = out / f"driftline-report-{model}.html"
        path.write_text(render(model, reports, mine, since_ms, until_ms, settings.drift_alpha, skipped, importance,
                               BiasOptions(settings.bias_max_difference, settings.bias_max_values)))
        written.append(path)
    return written


def read_explanations(conf: Mapping[str, Any], topic: str, catalog: SchemaCatalog) -> list[dict[str, Any]]:
    """The records of ``{ns}.explanations`` that decode (none when the topic does not exist: explanations off)."""
    from driftline.schemas.codec import decode
    from driftline.streams.errors import BrokerError
    from driftline.streams.kafka.topics import iter_topic

    out = []
    try:
        for msg in iter_topic(conf, topic):
            try:
                rec = decode(catalog, msg.value(), fast=True)[1]
                if len(rec["features"]) == len(rec["attributions"]):
                    out.append(rec)
            except Exception:  # noqa: BLE001,S112 - anyone may write to a topic: what does not decode is not ours
                continue
    except BrokerError as exc:
        log.info("no explanations in the report: %s", exc)
    return out


def importance_reports(settings: Any, catalog: SchemaCatalog, model: str,
                       windows: Mapping[str, list[tuple[int, ImportanceWindow]]]) -> list[ImportanceReport]:
    """Each version's windows with its reference importance (computed here, through its model, when it loads)."""
    from driftline.inference.registry import ModelRegistry
    from driftline.streams.core.explain import ExplainConfig, ExplainCore

    core = ExplainCore(ModelRegistry(settings.model_dir), catalog, settings.topic("explanations"),
                       ExplainConfig(1.0, settings.explain_samples, settings.explain_background,
                                     settings.explain_max_rows), verify_key=settings.model_verify_key())
    out = []
    for version, ws in sorted(windows.items()):
        v = core.version(model, version)
        features = ws[0][1].features
        ref = None if isinstance(v, str) or v.names != features else v.reference
        out.append(ImportanceReport(version, features, ref, ws))
    return out
