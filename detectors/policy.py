"""Alert policy: calibrated per-window decisions, hysteresis, cooldown, severity, retrain.

A column is *flagged* in a window when its test's p-value is below
``alpha``: with no drift that happens in at most ``alpha`` of the windows,
whatever the window size (a bias result also needs its disparity beyond
its bound). An alert fires when a column was flagged in at
least ``k`` of its last ``m`` windows and its last alert of that kind is more
than ``cooldown`` windows ago. Severity is critical when the p-value is
below ``alpha_critical`` and the PSI is at least ``psi_critical`` (strong
evidence and a material shift; a column's null, unseen-category or
out-of-range share, and a segment's decision-rate disparity, need the
p-value alone), or when the column's River detector
(``detector``, ADWIN by default, fed with each window's ``-log10 p``) sees a
change point in a flagged window; warning otherwise. River never decides
alone whether an alert fires, so the false-alarm rate stays ``alpha``.

The state is plain data (``snapshot``/``restore``) so the drift agent can
write it to its state topic and a restarted worker resumes where it stopped.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from driftline.detectors.evaluate import ColumnResult
from driftline.detectors.river_signal import KINDS, SignalDetector, signal

#: a column's rate tests, which have no PSI: strong evidence alone makes them critical
COLUMN_SHARES = frozenset({"null_rate", "unseen_category_rate", "out_of_range_rate"})
#: the bias audit's tests: flagged only beyond their bound, critical on strong evidence alone, no change detector
BIAS_TESTS = frozenset({"demographic_parity_difference"})
#: tests without a change detector: their severity needs none, and each detector's state (up to ~10 KB for
#: ADWIN) is saved with the model's drift state, which must stay below the broker's record size
UNDETECTED = frozenset({"unseen_category_rate", "out_of_range_rate", "duplicate_rate"}) | BIAS_TESTS


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    alpha: float = 0.01
    alpha_critical: float = 1e-4
    psi_critical: float = 0.2
    k: int = 2
    m: int = 3
    cooldown: int = 5
    retrain_features: int = 2
    retrain_windows: int = 2
    retrain_cooldown: int = 30
    detector: str = "adwin"  # River detector on each column's window signal, or "none"

    def __post_init__(self) -> None:
        if self.detector != "none" and self.detector not in KINDS:
            raise ValueError(f"detector must be none or one of {', '.join(KINDS)}")
        if not 0 < self.alpha < 1:
            raise ValueError("alpha must be in (0, 1)")
        if not 0 < self.alpha_critical <= self.alpha:
            raise ValueError("alpha_critical must be in (0, alpha]")
        if not 1 <= self.k <= self.m:
            raise ValueError("need 1 <= k <= m")
        if self.cooldown < 0 or self.retrain_cooldown < 0:
            raise ValueError("cooldowns must be >= 0")


@dataclass(frozen=True, slots=True)
class AlertDecision:
    result: ColumnResult
    severity: str  # warning | critical
    window_index: int
    change_point: bool = False  # the column's River detector saw a change in this window


@dataclass(frozen=True, slots=True)
class RetrainDecision:
    reason: str
    alerts: tuple[AlertDecision, ...]
    window_index: int


@dataclass
class AlertPolicy:
    """Turns each window's column results into alerts and retrain requests."""

    config: PolicyConfig = field(default_factory=PolicyConfig)
    window_index: int = 0
    history: dict[str, deque[bool]] = field(default_factory=dict)
    last_alert: dict[str, int] = field(default_factory=dict)
    critical_runs: dict[str, int] = field(default_factory=dict)
    last_retrain: int | None = None
    detectors: dict[str, SignalDetector] = field(default_factory=dict)

    def update(self, results: list[ColumnResult]) -> tuple[list[AlertDecision], RetrainDecision | None]:
        """Feed one closed window; return the alerts (and a retrain request) it raises."""
        cfg = self.config
        self.window_index += 1
        alerts: list[AlertDecision] = []
        for r in results:
            key = r.key
            # a disparity within its bound is no finding, however significant (a big window makes tiny ones so)
            flagged = r.p_value < cfg.alpha and (r.statistic not in BIAS_TESTS or r.value > r.threshold)
            hist = self.history.setdefault(key, deque(maxlen=cfg.m))
            hist.append(flagged)
            change = False
            if cfg.detector != "none" and r.statistic not in UNDETECTED:
                det = self.detectors.setdefault(key, SignalDetector(cfg.detector))
                change = det.update(signal(r.p_value))
            strong = r.p_value < cfg.alpha_critical and (r.statistic in COLUMN_SHARES | BIAS_TESTS
                                                    or r.psi >= cfg.psi_critical)
            # A River change point on a flagged column confirms a sustained shift: critical too.
            critical = strong or (change and flagged)
            self.critical_runs[key] = self.critical_runs.get(key, 0) + 1 if critical else 0
            if not flagged or sum(hist) < cfg.k:
                continue
            last = self.last_alert.get(key)
            if last is not None and self.window_index - last <= cfg.cooldown:
                continue
            self.last_alert[key] = self.window_index
            alerts.append(AlertDecision(r, "critical" if critical else "warning", self.window_index, change))
        return alerts, self._retrain(alerts)

    def _retrain(self, alerts: list[AlertDecision]) -> RetrainDecision | None:
        cfg = self.config
        if self.last_retrain is not None and self.window_index - self.last_retrain <= cfg.retrain_cooldown:
            return None
        sustained = [k for k, run in self.critical_runs.items()
                     if k.startswith("data_drift:") and run >= cfg.retrain_windows]
        prediction = [a for a in alerts if a.result.kind == "prediction_drift"]
        if len(sustained) >= cfg.retrain_features:
            reason = f"critical data drift on {len(sustained)} features for {cfg.retrain_windows}+ windows: " + \
                ", ".join(sorted(k.split(":", 1)[1] for k in sustained))
        elif prediction:
            reason = "prediction drift: the score distribution moved"
        else:
            return None
        self.last_retrain = self.window_index
        return RetrainDecision(reason, tuple(alerts), self.window_index)

    def snapshot(self) -> dict[str, Any]:
        return {"window_index": self.window_index, "history": {k: list(v) for k, v in self.history.items()},
                "last_alert": dict(self.last_alert), "critical_runs": dict(self.critical_runs),
                "last_retrain": self.last_retrain,
                "detectors": {k: d.snapshot() for k, d in self.detectors.items()}}

    @classmethod
    def restore(cls, state: dict[str, Any], config: PolicyConfig) -> AlertPolicy:
        p = cls(config)
        p.window_index = int(state["window_index"])
        p.history = {k: deque(v, maxlen=config.m) for k, v in state["history"].items()}
        p.last_alert = {k: int(v) for k, v in state["last_alert"].items()}
        p.critical_runs = {k: int(v) for k, v in state["critical_runs"].items()}
        p.last_retrain = state["last_retrain"]
        p.detectors = {k: SignalDetector.restore(v) for k, v in state.get("detectors", {}).items()}
        return p
