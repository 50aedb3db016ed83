"""Bayesian online change-point detection (Adams and MacKay, 2007) over one column's window signal.

The detector keeps the posterior over the current run length (windows since
the last change) and, per run length, a Normal-Gamma posterior of the
signal's mean and precision. Each window it scores the new value under
every run length's Student-t predictive, grows each run by one with
probability ``1 - hazard`` and starts a new one with probability
``hazard``. A change is declared when the run lengths up to ``lag`` hold
more than ``threshold`` of the posterior mass: enough windows since the
change agree with each other and not with what came before.

Why on the probit of the p-value: the window signal here is ``-log10 p``;
``z = Φ⁻¹(1 − p)`` is N(0, 1) while nothing drifts (p uniform, for
continuous tests), which is what the Gaussian model and its prior (mean 0,
variance 1) assume, so the detector's false-alarm rate hardly depends on
the column's kind or the window size. Drift moves z up; z is clipped below
at -2, since a discrete test's p of exactly 1 would otherwise be an
extreme low outlier and look like a change.

Cost is bounded: run lengths past ``max_run`` are folded into the last one
(a run that long is "no change for a long time" either way), so an update
is a few numpy operations over ``max_run`` values (~90 µs), once a window.

The interface is River's (``update``, ``drift_detected``), so
:class:`~driftline.detectors.river_signal.SignalDetector` wraps it like
ADWIN, and its state is restored by replaying the signal history (the
detector is deterministic).
"""

from __future__ import annotations

import math

import numpy as np

from driftline.detectors.stats import normal_isf

#: the signal cap of river_signal (-log10 p of 1e-50): z of 14.9 at most
_Z_CAP = 14.9
#: z below this is clipped: drift only moves z up, and discrete one-sided tests return p = 1 exactly (z = -inf),
#: which must not look like a change; clipping the calm side at -2 (2.3 % of N(0, 1)) costs nothing measurable
#: (bench/changepoints.py)
_Z_FLOOR = -2.0


def probit(signal: float) -> float:
    """``Φ⁻¹(1 − p)`` of the window whose signal is ``-log10 p`` (N(0, 1) while nothing drifts), in [-2, 14.9]."""
    p = 10.0 ** -max(signal, 0.0)
    if p >= 1.0:
        return _Z_FLOOR
    return max(_Z_FLOOR, min(_Z_CAP, normal_isf(p)))


class Bocpd:
    """One column's online change-point detector (constant hazard, Normal-Gamma model).

    >>> d = Bocpd()
    >>> def feed(values):
    ...     return [d.update(v) or d.drift_detected for v in values]
    >>> any(feed([0.3] * 30)), feed([6.0] * 4).index(True) <= 3
    (False, True)
    """

    def __init__(self, hazard: float = 0.01, lag: int = 5, threshold: float = 0.5, max_run: int = 300,
                 prior: tuple[float, float, float, float] = (0.0, 1.0, 3.0, 2.0), grace: int = 5) -> None:
        """``hazard``: the prior probability of a change at each window (1 / expected run length); ``prior``:
        the Normal-Gamma (mean, kappa, alpha, beta) of a new run: mean 0 and E[variance] = beta / (alpha - 1) = 1,
        the null distribution of the probit signal; ``grace``: windows seen before a change may be declared (at
        the start every run is short)."""
        if not 0.0 < hazard < 1.0 or lag < 1 or not 0.0 < threshold < 1.0 or max_run <= lag:
            raise ValueError("bocpd: need 0 < hazard < 1, lag >= 1, 0 < threshold < 1, max_run > lag")
        self.hazard, self.lag, self.threshold, self.max_run = hazard, lag, threshold, max_run
        self.seen, self.grace = 0, max(grace, lag + 1)
        self.prior = prior
        self._log_h, self._log_1h = math.log(hazard), math.log1p(-hazard)
        self.drift_detected = False
        self._quiet = 0  # windows left before another change may be declared (one per change, not one per window)
        self._log_r = np.zeros(1)  # log posterior of the run length; before any window, run length 0
        self._mu, self._kappa, self._alpha, self._beta = (np.array([v]) for v in prior)
        # the run of length r has seen r values: alpha = alpha0 + r / 2, so the predictive's gamma terms are a table
        alphas = prior[2] + 0.5 * np.arange(max_run + 1)
        self._log_gamma_ratio = np.array([math.lgamma(a + 0.5) - math.lgamma(a) for a in alphas.tolist()])

    def update(self, signal: float) -> None:
        """Feed one window's signal (``-log10 p``); sets :attr:`drift_detected` for this window."""
        x = probit(signal)
        self.seen += 1
        mu, kappa, alpha, beta = self._mu, self._kappa, self._alpha, self._beta
        # Student-t predictive of x under each run length
        scale2 = beta * (kappa + 1.0) / (alpha * kappa)
        nu = 2.0 * alpha
        log_pred = (self._log_gamma_ratio[:len(mu)] - 0.5 * np.log(nu * math.pi * scale2)
                    - (nu + 1.0) / 2.0 * np.log1p((x - mu) ** 2 / (nu * scale2)))
        joint = self._log_r + log_pred
        grown = joint + self._log_1h
        changed = np.logaddexp.reduce(joint) + self._log_h
        log_r = np.concatenate(([changed], grown))
        log_r -= np.logaddexp.reduce(log_r)
        # posteriors of each run, grown by x; a new run starts from the prior
        m0, k0, a0, b0 = self.prior
        new_mu = np.concatenate(([m0], (kappa * mu + x) / (kappa + 1.0)))
        new_kappa = np.concatenate(([k0], kappa + 1.0))
        new_alpha = np.concatenate(([a0], alpha + 0.5))
        new_beta = np.concatenate(([b0], beta + kappa * (x - mu) ** 2 / (2.0 * (kappa + 1.0))))
        if len(log_r) > self.max_run:  # fold the longest runs into one: bounded memory and time
            log_r[self.max_run - 1] = np.logaddexp.reduce(log_r[self.max_run - 1:])
            log_r = log_r[:self.max_run]
            new_mu, new_kappa = new_mu[:self.max_run], new_kappa[:self.max_run]
            new_alpha, new_beta = new_alpha[:self.max_run], new_beta[:self.max_run]
        self._log_r, self._mu, self._kappa, self._alpha, self._beta = log_r, new_mu, new_kappa, new_alpha, new_beta
        # run lengths 1..lag: the windows since a change that agree with each other (0 is the hazard itself)
        recent = float(np.exp(np.logaddexp.reduce(log_r[1:self.lag + 1]))) if len(log_r) > 1 else 0.0
        if self._quiet > 0:
            self._quiet -= 1
        self.drift_detected = recent > self.threshold and self._quiet == 0 and self.seen > self.grace
        if self.drift_detected:
            self._quiet = self.lag + 1

    def run_length(self) -> int:
        """The most probable run length now."""
        return int(np.argmax(self._log_r))
